__version__ = "0.1.0"  # the package's version (pyproject.toml holds the same)
