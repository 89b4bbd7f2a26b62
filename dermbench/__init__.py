"""dermbench: compare vision foundation models on dermatology, honestly."""

__version__ = "0.1.0"

from dermbench.hookspecs import hookimpl  # noqa: E402  (re-exported for plugin authors)

__all__ = ["hookimpl", "__version__"]
