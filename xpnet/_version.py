"""The version of xpnet (its own module, so that modules can read it without importing
the package that imports them)."""

__version__ = "0.1.0"
