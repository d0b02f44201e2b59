"""ClinicaDL's RandomArchitecture (the network of `clinicadl random-search`), 2D or 3D.

ClinicaDL facts mirrored here:
* maps.json holds the sampled description: `convolutions_dict` ({"conv0": {...}, "conv1": {...}, ...},
  each with `in_channels` (null for the first block: the image channels), `out_channels`, `n_conv`,
  `d_reduction` in {"MaxPooling", "stride"}), `n_fcblocks`, `network_normalization` in
  {"BatchNorm", "InstanceNorm", null}, plus `input_size`, `dropout`, `output_size`.
* `convolutions` = Sequential of the blocks named by the keys of `convolutions_dict`, in its order (so
  `len(convolutions)` is the number of blocks). A block is n_conv - 1 times [conv 3 (pad 1)
  in -> in, norm, LeakyReLU] then, for "MaxPooling", [conv in -> out, norm, LeakyReLU, PadMaxPool(2, 2)]
  or, for "stride", [conv in -> out with stride 2, norm, LeakyReLU]; the norm is absent for a null
  normalization; InstanceNorm has no affine weights and no running statistics (no state_dict entry).
* `fc` = Sequential("0": Flatten, "1": Dropout(dropout), "FC0", "FC1", ...): each "FC<i>" is a
  Sequential(Linear, LeakyReLU) except the last, a Sequential(Linear) alone. Widths follow ClinicaDL's
  float64 arithmetic: flattened = out_channels(conv<n-1>) * prod(ceil(size / 2**n_blocks)),
  ratio = (flattened / output_size) ** (1 / n_fcblocks), then for each block
  in = round(f), out = round(f / ratio), f <- f / ratio (round half to even, like numpy).
* forward(x) = fc(convolutions(x)).
maps.json keys read: input_size, convolutions_dict, n_fcblocks, network_normalization (default
"BatchNorm"), dropout (default 0.5), output_size (default 2).
"""

from __future__ import annotations

from collections import OrderedDict
from math import ceil
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from torch import nn

from . import _params
from .conv import ClinicaCNN, PadMaxPool2d, PadMaxPool3d

NORMALIZATIONS = ("BatchNorm", "InstanceNorm")


def _layers(dimension: int) -> Dict[str, Any]:
    if dimension == 3:
        return {"Conv": nn.Conv3d, "Pool": PadMaxPool3d, "BatchNorm": nn.BatchNorm3d,
                "InstanceNorm": nn.InstanceNorm3d}
    return {"Conv": nn.Conv2d, "Pool": PadMaxPool2d, "BatchNorm": nn.BatchNorm2d,
            "InstanceNorm": nn.InstanceNorm2d}


def _conv_block(block: Mapping[str, Any], first_in_channels: int, layers: Dict[str, Any],
                normalization: Optional[str]) -> nn.Sequential:
    in_channels = first_in_channels if block["in_channels"] is None else int(block["in_channels"])
    out_channels = int(block["out_channels"])
    reduction = block["d_reduction"]
    if reduction not in ("MaxPooling", "stride"):
        raise ValueError(f"d_reduction {reduction!r} is not supported: 'MaxPooling' or 'stride'")

    modules: List[nn.Module] = []

    def conv_norm_act(n_in: int, n_out: int, stride: int) -> None:
        modules.append(layers["Conv"](n_in, n_out, 3, stride=stride, padding=1))
        if normalization is not None:
            modules.append(layers[normalization](n_out))
        modules.append(nn.LeakyReLU())

    for _ in range(int(block["n_conv"]) - 1):
        conv_norm_act(in_channels, in_channels, 1)
    if reduction == "MaxPooling":
        conv_norm_act(in_channels, out_channels, 1)
        modules.append(layers["Pool"]())
    else:
        conv_norm_act(in_channels, out_channels, 2)
    return nn.Sequential(*modules)


def fc_widths(convolutions_dict: Mapping[str, Mapping[str, Any]], n_fcblocks: int,
              input_size: Sequence[int], output_size: int) -> List[Tuple[int, int]]:
    """(in_features, out_features) of each FC block, by ClinicaDL's float64 formula (see module doc)."""
    n_blocks = len(convolutions_dict)
    last = convolutions_dict[f"conv{n_blocks - 1}"]
    in_features = float(last["out_channels"])
    for s in input_size[1:]:
        in_features *= float(ceil(float(s) / float(2 ** n_blocks)))
    ratio = (in_features / output_size) ** (1 / n_fcblocks)
    widths = []
    for _ in range(n_fcblocks):
        out_features = in_features / ratio
        widths.append((int(round(in_features)), int(round(out_features))))
        in_features = out_features
    return widths


def random_architecture(params: Mapping[str, Any]) -> ClinicaCNN:
    """Builds RandomArchitecture from the maps.json dictionary."""
    size = _params.input_size(params)
    convolutions_dict = params["convolutions_dict"]
    if not isinstance(convolutions_dict, Mapping) or not convolutions_dict:
        raise TypeError("convolutions_dict must be a non-empty mapping of convolution blocks")
    n_fcblocks = int(params["n_fcblocks"])
    if n_fcblocks < 1:
        raise ValueError(f"n_fcblocks must be positive, got {n_fcblocks}")
    normalization = params.get("network_normalization", "BatchNorm")
    if normalization is not None and normalization not in NORMALIZATIONS:
        raise ValueError(f"network_normalization {normalization!r} must be 'BatchNorm', 'InstanceNorm' or null")
    output_size = _params.output_size(params)

    layers = _layers(len(size) - 1)
    convolutions = nn.Sequential(OrderedDict(
        (str(name), _conv_block(block, size[0], layers, normalization))
        for name, block in convolutions_dict.items()))

    fc: "OrderedDict[str, nn.Module]" = OrderedDict()
    fc["0"] = nn.Flatten()
    fc["1"] = nn.Dropout(p=_params.dropout(params))
    widths = fc_widths(convolutions_dict, n_fcblocks, size, output_size)
    for i, (n_in, n_out) in enumerate(widths):
        if i == len(widths) - 1:
            fc[f"FC{i}"] = nn.Sequential(nn.Linear(n_in, n_out))
        else:
            fc[f"FC{i}"] = nn.Sequential(nn.Linear(n_in, n_out), nn.LeakyReLU())
    return ClinicaCNN(convolutions, nn.Sequential(fc))


BUILDERS = {"RandomArchitecture": random_architecture}
