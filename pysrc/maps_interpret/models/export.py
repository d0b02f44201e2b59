"""The one place that knows TorchScript: a model in eval mode with frozen weights, ready for the C++
engine. Moving to torch.export later means changing this file only."""

from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import nn

# torch >= 2.13 flags the TorchScript Python API as deprecated (FutureWarning from 2.14). TorchScript
# is this project's decided format, so these exact warnings are muted here, around our own calls only.
_JIT_DEPRECATION = r"`torch\.jit\.\w+` is deprecated"


def to_torchscript(model: nn.Module) -> torch.jit.ScriptModule:
    """`model` scripted, in eval mode. The scripted module shares the caller's parameters, so their
    `requires_grad` and the caller's mode are left alone: the C++ engine freezes its own copy."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_JIT_DEPRECATION, category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=_JIT_DEPRECATION, category=FutureWarning)
        scripted = torch.jit.script(model)
    return scripted.eval()


class CamModel(nn.Module):
    """A network cut for Grad-CAM: `trunk` gives the feature map, `head` the outputs from it."""

    def __init__(self, trunk: nn.Module, head: nn.Module):
        super().__init__()
        self.trunk = trunk
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


def split_for_cam(model: nn.Module, level: Optional[int]) -> CamModel:
    """ClinicaDL's cut: the first `level` modules of `model.convolutions` (all of them when `level` is None
    or too large) make the trunk; the remaining ones then `model.fc` make the head. A ClinicaDL 2.0 network
    is cut where clinicadl2.cam_parts says (its last convolutional feature map)."""
    if not hasattr(model, "convolutions") or not hasattr(model, "fc"):
        from ..errors import MapsInterpretError
        from .clinicadl2 import cam_parts

        try:
            return CamModel(*cam_parts(model, level))
        except MapsInterpretError as error:
            raise ValueError(f"Grad-CAM needs a CNN with `convolutions` and `fc` parts, or a ClinicaDL 2.0 "
                             f"network ({error})") from None
    layers = list(model.convolutions.children())
    cut = len(layers) if level is None or level >= len(layers) else level
    return CamModel(nn.Sequential(*layers[:cut]), nn.Sequential(*layers[cut:], model.fc))


def to_torchscript_cam(model: nn.Module, level: Optional[int]) -> torch.jit.ScriptModule:
    return to_torchscript(split_for_cam(model, level))


def load_torchscript(path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_JIT_DEPRECATION, category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=_JIT_DEPRECATION, category=FutureWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()
