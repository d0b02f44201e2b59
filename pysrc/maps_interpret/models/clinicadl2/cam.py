"""Where Grad-CAM cuts each rebuilt 2.0 network: the trunk ends on the last spatial feature map before the
network pools it away (the layer pytorch-grad-cam's docs pick: a CNN's last convolution block, a ResNet's last
residual layer, a DenseNet's `features`), the head maps it to the outputs."""

from __future__ import annotations

from typing import Optional

from torch import nn

from ...errors import MapsInterpretError
from .cnn import CNN
from .densenet import DenseNet
from .resnet import ResNet
from .vit import ViT


def cam_parts(model: nn.Module, level: Optional[int]) -> tuple[nn.Module, nn.Module]:
    """(trunk, head) with head(trunk(x)) == model(x). `level` (CNN only) keeps the first `level` children of
    `convolutions` in the trunk, as the ClinicaDL 1.6.1 cut does (all of them when None or too large)."""
    if isinstance(model, CNN):
        # convolutions ends with the last convolution (and its pooling / output_act); mlp flattens it away.
        layers = list(model.convolutions.children())
        if level is not None and level < 1:
            raise MapsInterpretError(f"level_grad_cam must be at least 1, got {level}")
        cut = len(layers) if level is None or level >= len(layers) else level
        return nn.Sequential(*layers[:cut]), nn.Sequential(*layers[cut:], model.mlp)
    if isinstance(model, (ResNet, DenseNet)):
        # ResNet: conv0 .. layerN give the last residual layer's map, fc pools it. DenseNet: features ends with
        # norm5 (the last dense block's map, normalised); fc applies its activation, then pools.
        if level is not None:
            raise MapsInterpretError(f"level_grad_cam={level} cuts a CNN's `convolutions`; a "
                                     f"{'ResNet' if isinstance(model, ResNet) else 'DenseNet'} is cut before its "
                                     f"fc: leave --level_grad_cam unset")
        children = list(model.named_children())
        return (nn.Sequential(*(module for name, module in children if name != "fc")), model.fc)
    if isinstance(model, ViT):
        raise MapsInterpretError("grad-cam needs a spatial feature map, and a ViT has none (its encoder works on a "
                                 "sequence of patch tokens): use the gradients method")
    raise MapsInterpretError(f"grad-cam cannot cut a {type(model).__name__}: not a rebuilt ClinicaDL 2.0 network")
