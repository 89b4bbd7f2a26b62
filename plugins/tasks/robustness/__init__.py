"""Robustness to dermatology-specific image corruptions (placeholder until the task lands)."""
