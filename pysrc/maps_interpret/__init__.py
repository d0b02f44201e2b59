"""maps-interpret: saliency maps for the models of a ClinicaDL MAPS.

Python API, file to file (what the command does)::

    from maps_interpret import InterpretConfig, run
    summary = run(InterpretConfig(input_maps_directory="maps", data_group="test", name="grads", gpu=False))

the agreement between the models of a MAPS (what `maps-interpret-compare` does)::

    from maps_interpret import CompareConfig, compare
    summary = compare(CompareConfig(input_maps_directory="maps", data_group="test", name="grads"))

and on tensors in memory::

    from maps_interpret import Interpreter
    interpreter = Interpreter.from_maps("maps", split=0, selection_metric="loss")
    maps = interpreter.attribute(batch, method="smoothgrad", target=1)

Importing the package is cheap; torch and the C++ core load with ``run`` or ``Interpreter``.
"""

from __future__ import annotations

from ._version import __version__
from .config import CompareConfig, InterpretConfig

__all__ = ["CompareConfig", "InterpretConfig", "Interpreter", "compare", "run", "__version__"]


def run(config: InterpretConfig):
    """Runs one interpretation command; see ``maps_interpret.runner.run.run``."""
    from .runner.run import run as _run

    return _run(config)


def compare(config: CompareConfig):
    """Runs one comparison command; see ``maps_interpret.analysis.compare.run``."""
    from .analysis.compare import run as _run

    return _run(config)


def __getattr__(name: str):
    if name == "Interpreter":  # loads torch and the C++ core: only when asked for
        from .interpreter import Interpreter

        return Interpreter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
