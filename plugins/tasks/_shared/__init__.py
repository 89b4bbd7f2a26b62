"""Helpers shared by several first-party tasks (not a plugin entry module: it registers nothing)."""
