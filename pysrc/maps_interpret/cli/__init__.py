"""The command-line shells: `maps-interpret` (interpret.py) and `maps-interpret-compare` (compare.py), thin
layers over the importable API. Importing them is cheap: --help loads neither torch nor the C++ core."""

from .interpret import build_parser, entry, main

__all__ = ["build_parser", "entry", "main"]
