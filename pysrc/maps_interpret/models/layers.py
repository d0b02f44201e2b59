"""The layers of a network, as the sanity check randomises them (analysis/sanity.py): the modules that hold
parameters of their own (Conv, Linear, BatchNorm with affine weights...) or BatchNorm running statistics; a
container (Sequential, a ResNet block) is not a layer, its members are. Checked at plan time, before anything
is written, that every layer can be re-initialised by its own class."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import MapsInterpretError
from ..maps import Maps


def _is_layer(module: nn.Module) -> bool:
    own_parameters = next(module.parameters(recurse=False), None) is not None
    statistics = isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats
    return own_parameters or statistics


def layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The layers of `model` (named as in its state_dict), output first: the reverse of the order in which the
    network registers them, which for ClinicaDL's networks (`convolutions` then `fc`, Sequentials in forward
    order) is the reverse of the forward order."""
    found = [(name or type(model).__name__, module) for name, module in model.named_modules() if _is_layer(module)]
    return found[::-1]


def check_layers(model: nn.Module, where: str) -> None:
    """Every layer can be re-initialised by its own class; raises with `where` (a file) named."""
    found = layers(model)
    if not found:
        raise MapsInterpretError(f"{where}: --sanity_check needs a network with parameters; this one has none")
    odd = [name for name, module in found if not callable(getattr(module, "reset_parameters", None))]
    if odd:
        raise MapsInterpretError(f"{where}: --sanity_check cannot re-initialise {', '.join(odd[:4])} (no "
                                 "reset_parameters); remove --sanity_check")


def check_randomisable(maps: Maps) -> None:
    """The networks of this MAPS can be randomised layer by layer. A TorchScript model (custom architecture)
    holds compiled forward code only, not its layers' classes and their initialisation, so it is refused
    rather than re-initialised by guesswork."""
    from . import TORCHSCRIPT_FILE, build_model, uses_torchscript

    if uses_torchscript(maps):
        raise MapsInterpretError(
            f"--sanity_check re-initialises the layers of a network rebuilt from its weights; architecture "
            f"{maps.architecture!r} is read from TorchScript ({TORCHSCRIPT_FILE}), whose layers cannot be "
            "re-initialised: remove --sanity_check")
    with torch.device("meta"):  # the layers only: no memory, no initialisation
        config = "model.json" if maps.generation == 2 else "maps.json"
        check_layers(build_model(maps), str(maps.path / config))
