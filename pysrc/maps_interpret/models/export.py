"""The one place that knows TorchScript: a model in eval mode with frozen weights, ready for the C++
engine. Moving to torch.export later means changing this file only."""

from __future__ import annotations

import warnings

import torch
from torch import nn

# torch >= 2.13 flags the TorchScript Python API as deprecated (FutureWarning from 2.14). TorchScript
# is this project's decided format, so these exact warnings are muted here, around our own calls only.
_JIT_DEPRECATION = r"`torch\.jit\.\w+` is deprecated"


def to_torchscript(model: nn.Module) -> torch.jit.ScriptModule:
    model = model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_JIT_DEPRECATION, category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=_JIT_DEPRECATION, category=FutureWarning)
        scripted = torch.jit.script(model)
    return scripted.eval()


def load_torchscript(path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_JIT_DEPRECATION, category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=_JIT_DEPRECATION, category=FutureWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()
