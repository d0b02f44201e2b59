"""maps-interpret: saliency maps for the models of a ClinicaDL MAPS.

Python API::

    from maps_interpret import InterpretConfig, run
    summary = run(InterpretConfig(input_maps_directory="maps", data_group="test", name="grads", gpu=False))

Importing the package is cheap; torch and the C++ core load with ``run`` or ``maps_interpret.engine``.
"""

from __future__ import annotations

from .config import InterpretConfig

__version__ = "0.1.0"
__all__ = ["InterpretConfig", "run", "__version__"]


def run(config: InterpretConfig):
    """Runs one interpretation command; see ``maps_interpret.api.run``."""
    from .api import run as _run

    return _run(config)
