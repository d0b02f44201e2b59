"""Reading the maps.json values that ClinicaDL passes to a network constructor.

ClinicaDL's `MapsManager._init_model` calls the architecture class with one keyword per name of its
`__init__` arguments, each taken from maps.json under that same name (`input_size`, `output_size`,
`dropout`, ...). A missing optional key falls back here on the constructor's own default value.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence, Tuple


def input_size(params: Mapping[str, Any], dims: Sequence[int] = (2, 3)) -> Tuple[int, ...]:
    """maps.json `input_size` as ints: (C, H, W) for 2D or (C, D, H, W) for 3D, as `dims` allows."""
    size = params["input_size"]
    if isinstance(size, (str, bytes)) or not isinstance(size, Sequence):
        raise TypeError(f"input_size must be a list of integers, got {size!r}")
    size = tuple(int(s) for s in size)
    if len(size) - 1 not in dims:
        allowed = " or ".join(f"{d}D" for d in dims)
        raise ValueError(f"input_size {list(size)} is not a {allowed} image (channels first)")
    if any(s < 1 for s in size):
        raise ValueError(f"input_size {list(size)} has a non-positive dimension")
    return size


def output_size(params: Mapping[str, Any], default: int = 2) -> int:
    value = params.get("output_size")
    value = default if value is None else int(value)
    if value < 1:
        raise ValueError(f"output_size must be positive, got {value}")
    return value


def dropout(params: Mapping[str, Any], default: float = 0.5) -> float:
    value = params.get("dropout")
    return default if value is None else float(value)
