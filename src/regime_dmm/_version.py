"""The package version (also stamped into every checkpoint)."""

__all__ = ["__version__"]

__version__ = "0.7.0"
