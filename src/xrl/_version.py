"""xrl's version, on the ground floor: every module that records it in a file (cards, datasets,
checkpoints) imports it from here, not from the package face ``xrl/__init__.py``."""

__version__ = "0.1.0"
