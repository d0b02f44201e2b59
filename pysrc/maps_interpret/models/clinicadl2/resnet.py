"""ClinicaDL 2.0's `ResNet` and `SEResNet` (its GeneralResNet) and their named variants: conv0, norm0, act0,
pool0, layer1..layerN (residual blocks), fc (pool, flatten, out, output_act). Built as an nn.Sequential with
2.0's module names: its forward is the same chain, and the state_dict keys are 2.0's."""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch
from torch import nn

from .fields import ConfigError, Fields, per_dim

# name -> (n_res_blocks, block_type, n_features), 2D images with 3 channels, as 2.0's fixed variants.
VARIANTS = {
    "ResNet18": ((2, 2, 2, 2), "basic", (64, 128, 256, 512)),
    "ResNet34": ((3, 4, 6, 3), "basic", (64, 128, 256, 512)),
    "ResNet50": ((3, 4, 6, 3), "bottleneck", (256, 512, 1024, 2048)),
    "ResNet101": ((3, 4, 23, 3), "bottleneck", (256, 512, 1024, 2048)),
    "ResNet152": ((3, 8, 36, 3), "bottleneck", (256, 512, 1024, 2048)),
    # 2.0.0's SEResNet50/101/152 subclass ResNet, not SEResNet: they have no squeeze-excitation layer at all.
    "SEResNet50": ((3, 4, 6, 3), "bottleneck", (256, 512, 1024, 2048)),
    "SEResNet101": ((3, 4, 23, 3), "bottleneck", (256, 512, 1024, 2048)),
    "SEResNet152": ((3, 8, 36, 3), "bottleneck", (256, 512, 1024, 2048)),
}
_RELU = ("relu", {"inplace": True})


class ResNet(nn.Sequential):
    """The trunk (conv0 .. layerN) then `fc`, as 2.0's GeneralResNet.forward chains them."""


class _ResidualBlock(nn.Module):
    """What both of 2.0's blocks end with, before their last activation (`se_layer` and `downsample` are set by
    each block, None when absent)."""

    def _add_shortcut(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The SE layer on the residual branch, then the (downsampled) input added in place, as 2.0 does."""
        residual = x
        if self.downsample is not None:
            residual = self.downsample(x)
        if self.se_layer is not None:
            out = self.se_layer(out)
        out += residual
        return out


class BasicBlock(_ResidualBlock):
    """2.0's ResNetBlock (SEResNetBlock with `se_reduction`): 3x3 (stride) and 3x3 convolutions with BatchNorm,
    the SE layer on the residual branch, the (downsampled) input added in place, then act2."""

    def __init__(self, dims: int, in_planes: int, planes: int, stride: int, downsample: Optional[nn.Module],
                 act, se_reduction: Optional[int]):
        super().__init__()
        from monai.networks.layers.utils import get_act_layer

        conv, norm = _conv(dims), _norm(dims)
        self.conv1 = conv(in_planes, planes, kernel_size=3, padding=1, stride=stride, bias=False)
        self.norm1 = norm(planes)
        self.act1 = get_act_layer(act)
        self.conv2 = conv(planes, planes, kernel_size=3, padding=1, bias=False)
        self.norm2 = norm(planes)
        self.se_layer = _se_layer(dims, planes, se_reduction)
        self.downsample = downsample
        self.act2 = get_act_layer(act)  # its own instance: a PReLU has its own weight here

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))
        return self.act2(self._add_shortcut(out, x))


class BottleneckBlock(_ResidualBlock):
    """2.0's ResNetBottleneck (SEResNetBottleneck with `se_reduction`): 1x1, 3x3 (stride), 1x1 convolutions
    with BatchNorm (planes -> planes * expansion), SE layer, in-place residual addition, then act3."""

    def __init__(self, dims: int, in_planes: int, planes: int, expansion: int, stride: int,
                 downsample: Optional[nn.Module], act, se_reduction: Optional[int]):
        super().__init__()
        from monai.networks.layers.utils import get_act_layer

        conv, norm = _conv(dims), _norm(dims)
        self.conv1 = conv(in_planes, planes, kernel_size=1, bias=False)
        self.norm1 = norm(planes)
        self.act1 = get_act_layer(act)
        self.conv2 = conv(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.norm2 = norm(planes)
        self.act2 = get_act_layer(act)
        self.conv3 = conv(planes, planes * expansion, kernel_size=1, bias=False)
        self.norm3 = norm(planes * expansion)
        self.se_layer = _se_layer(dims, planes * expansion, se_reduction)
        self.downsample = downsample
        self.act3 = get_act_layer(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act2(self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x))))))
        out = self.norm3(self.conv3(out))
        return self.act3(self._add_shortcut(out, x))


def _se_layer(dims: int, channels: int, reduction: Optional[int]) -> Optional[nn.Module]:
    if reduction is None:
        return None
    from monai.networks.blocks.squeeze_and_excitation import ChannelSELayer

    return ChannelSELayer(spatial_dims=dims, in_channels=channels, r=reduction, acti_type_1=_RELU,
                          acti_type_2="sigmoid")


def build_resnet(config: dict) -> ResNet:
    """`ResNet` (and `SEResNet`: the same fields plus se_reduction), with 2.0's defaults and checks."""
    fields = Fields(config)
    se = fields.config.get("name_") == "SEResNet"
    dims = fields.positive_int("spatial_dims")
    if dims > 3:
        raise ConfigError(f"spatial_dims must be 1, 2 or 3, got {dims}")
    options = dict(
        in_channels=fields.positive_int("in_channels"),
        num_outputs=fields.positive_int("num_outputs"),
        block_type=fields.get("block_type", "basic"),
        n_res_blocks=fields.positive_ints("n_res_blocks", [2, 2, 2, 2]),
        n_features=fields.positive_ints("n_features", [64, 128, 256, 512]),
        init_conv_size=per_dim(fields.get("init_conv_size", 7), dims, "init_conv_size"),
        init_conv_stride=per_dim(fields.get("init_conv_stride", 2), dims, "init_conv_stride"),
        bottleneck_reduction=fields.positive_int("bottleneck_reduction", 4),
        act=fields.activation("act", _RELU, optional=False),
        output_act=fields.activation("output_act", None),
        se_reduction=fields.positive_int("se_reduction", 16) if se else None,
    )
    fields.done()
    if options["block_type"] not in ("basic", "bottleneck"):
        raise ConfigError(f"block_type must be 'basic' or 'bottleneck', got {options['block_type']!r}")
    if len(options["n_features"]) != len(options["n_res_blocks"]) or not options["n_features"]:
        raise ConfigError(f"n_features {options['n_features']} and n_res_blocks {options['n_res_blocks']} must "
                          "have the same, non-zero length")
    reduction = options["bottleneck_reduction"]
    if options["block_type"] == "bottleneck" and any(n % reduction for n in options["n_features"]):
        raise ConfigError(f"every n_features must be divisible by bottleneck_reduction={reduction}, "
                          f"got {options['n_features']}")
    if se and any(n < options["se_reduction"] for n in options["n_features"]):
        raise ConfigError(f"every n_features must be >= se_reduction={options['se_reduction']}, "
                          f"got {options['n_features']}")
    return general_resnet(dims, **options)


def build_variant(config: dict) -> ResNet:
    """ResNet18..152 and SEResNet50..152: fixed 2D, 3-channel architectures; `pretrained` only chose the
    initial weights, which the trained model.pt replaces (nothing is downloaded)."""
    fields = Fields(config)
    name = fields.config.get("name_")
    blocks, block_type, features = VARIANTS[name]
    num_outputs = fields.positive_int("num_outputs")
    output_act = fields.activation("output_act", None)
    if not name.startswith("SE"):
        fields.get("pretrained", False)  # initial weights only: not the architecture
    fields.done()
    return general_resnet(2, in_channels=3, num_outputs=num_outputs, block_type=block_type, n_res_blocks=blocks,
                          n_features=features, init_conv_size=(7, 7), init_conv_stride=(2, 2),
                          bottleneck_reduction=4, act=_RELU, output_act=output_act, se_reduction=None)


def general_resnet(dims: int, in_channels: int, num_outputs: int, block_type: str, n_res_blocks, n_features,
                   init_conv_size, init_conv_stride, bottleneck_reduction: int, act, output_act,
                   se_reduction: Optional[int]) -> ResNet:
    from monai.networks.layers.utils import get_act_layer

    bottleneck = block_type == "bottleneck"
    expansion = bottleneck_reduction if bottleneck else 1
    planes = [n // bottleneck_reduction for n in n_features] if bottleneck else list(n_features)
    pool = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}[dims]
    network = ResNet(OrderedDict([
        ("conv0", _conv(dims)(in_channels, planes[0], kernel_size=init_conv_size, stride=init_conv_stride,
                              padding=tuple(k // 2 for k in init_conv_size), bias=False)),
        ("norm0", _norm(dims)(planes[0])),
        ("act0", get_act_layer(act)),
        ("pool0", pool(kernel_size=3, stride=2, padding=1)),
    ]))
    in_planes = planes[0]
    for i, (n_blocks, width) in enumerate(zip(n_res_blocks, planes), start=1):
        stride = 1 if i == 1 else 2
        layer = []
        for b in range(n_blocks):
            downsample = None
            if b == 0 and (stride != 1 or in_planes != width * expansion):
                downsample = nn.Sequential(
                    _conv(dims)(in_planes, width * expansion, kernel_size=1, stride=stride, bias=False),
                    _norm(dims)(width * expansion))
            block_stride = stride if b == 0 else 1
            if bottleneck:
                layer.append(BottleneckBlock(dims, in_planes, width, expansion, block_stride, downsample, act,
                                             se_reduction))
            else:
                layer.append(BasicBlock(dims, in_planes, width, block_stride, downsample, act, se_reduction))
            in_planes = width * expansion
        network.add_module(f"layer{i}", nn.Sequential(*layer))
    avgpool = {1: nn.AdaptiveAvgPool1d(1), 2: nn.AdaptiveAvgPool2d((1, 1)), 3: nn.AdaptiveAvgPool3d((1, 1, 1))}[dims]
    fc = nn.Sequential(OrderedDict([("pool", avgpool), ("flatten", nn.Flatten(1)),
                                    ("out", nn.Linear(n_features[-1], num_outputs))]))
    if output_act is not None:
        fc.add_module("output_act", get_act_layer(output_act))
    network.add_module("fc", fc)
    return network


def _conv(dims: int):
    return {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]


def _norm(dims: int):
    return {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]
