"""scikit-build-core metadata provider: the wheel asks for exactly the torch its C++ core was compiled against.

LibTorch has no ABI promise across releases, so a wheel that said `torch>=2.13` would let a resolver upgrade
torch under a core that then refuses to load. The public version (2.13.0, without +cpu/+cu130) is pinned: every
build of one release shares its C++ ABI, so a CUDA image's torch satisfies a wheel built against the CPU one.
"""

from __future__ import annotations


def dynamic_metadata(field: str, settings: dict) -> list[str]:
    if field != "dependencies":
        raise RuntimeError(f"torch_requirement provides 'dependencies', not {field!r}")
    try:
        import torch
    except ImportError:
        raise RuntimeError("maps-interpret is compiled against the installed torch: install torch first, then "
                           "build with pip install --no-build-isolation") from None
    public = torch.__version__.split("+")[0]
    return [f"torch=={public}", *settings.get("requires", [])]
