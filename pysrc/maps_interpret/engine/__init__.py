"""The C++ engine seen from Python: loading the core and its checks (core.py), `Engine` (engine.py), and what an
engine accumulates and how accumulations combine (partials.py). Importing this package loads the core."""

from .engine import SUBSET_STRIDE, Engine, EngineError

__all__ = ["Engine", "EngineError", "SUBSET_STRIDE"]
