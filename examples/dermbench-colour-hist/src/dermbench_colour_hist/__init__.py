"""Example third-party dermbench plugin (see plugin.py)."""

__version__ = "0.1.0"
