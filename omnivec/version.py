"""The package version (one place: the model card and `omnivec.__version__` read it)."""

__version__ = "0.1.0"
