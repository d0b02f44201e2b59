"""Loading the C++ core (`maps_interpret._core`): the only module that imports it.

Importing this module checks that the core was compiled against the torch that is installed (LibTorch has no ABI
promise across versions, so a mismatch is refused with the command that rebuilds it), that its C++ streams
format numbers (a core linked with its own static libstdc++ crashed on a GPU image while formatting an error),
and that a C++ error reaches Python as an EngineError.
Loading the core also registers its ops (torch.ops.maps_interpret.*).
"""

from __future__ import annotations

import torch  # must be imported before _core (it loads libtorch and registers the tensor types)

REBUILD = "pip install --no-build-isolation --force-reinstall --no-deps maps-interpret (or `make setup`)"


def _public(version: str) -> str:
    return version.split("+")[0]


def _check_torch(built: str, installed: str) -> None:
    """Before the core is loaded: against another torch it would fail on an undefined symbol, or worse."""
    if _public(built) != _public(installed):
        raise ImportError(f"maps-interpret was compiled against torch {_public(built)} but torch {installed} is "
                          f"installed: pip install torch=={_public(built)} (the build for your CUDA version), or "
                          f"rebuild maps-interpret against this torch: {REBUILD}")


try:
    from .._build_info import TORCH_VERSION
except ImportError:  # a source tree that was never built
    TORCH_VERSION = None
if TORCH_VERSION is not None:
    _check_torch(TORCH_VERSION, torch.__version__)

try:
    from .. import _core
except ImportError as error:  # not built, or built for another Python
    raise ImportError(f"maps_interpret's C++ core cannot be loaded ({error}); rebuild it: {REBUILD}") from None


def _check_build(core=_core) -> None:
    built = core.built_against()
    if _public(built) != _public(torch.__version__):
        raise ImportError(f"maps_interpret's C++ core was compiled against torch {built} but torch "
                          f"{torch.__version__} is installed; rebuild it: {REBUILD}")
    # A core linked with its own static libstdc++ formats numbers wrongly (or crashes) in every error message.
    formatted = core.format_check(12345)
    if formatted != "n=12345 x=0.5":
        raise ImportError(f"maps_interpret's C++ core cannot format numbers (got {formatted!r} for 12345): it was "
                          "linked against a second, static copy of libstdc++; remove -static-libstdc++ from "
                          f"LDFLAGS/CXXFLAGS and rebuild it: {REBUILD}")
    # Errors are C++ exceptions translated at the boundary (csrc/bindings.cpp): one must arrive whole.
    try:
        core.raise_check(12345)
        raised = None
    except core.EngineError as error:
        raised = str(error)
    except Exception as error:  # noqa: BLE001  (any other type is the defect reported below)
        raised = f"{type(error).__name__}: {error}"
    if raised != "n=12345 x=0.5":
        raise ImportError(f"maps_interpret's C++ core does not raise its errors as EngineError (got {raised!r}); "
                          f"rebuild it: {REBUILD}")


_check_build()
