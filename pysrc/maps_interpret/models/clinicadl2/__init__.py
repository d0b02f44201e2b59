"""ClinicaDL 2.0.0's image classifiers and regressors, rebuilt from the `network` entry of a model.json with
2.0's module names, so that its model.pt (keys without the "network." prefix) loads strictly and the outputs
and gradients are 2.0's. Built from the same MONAI blocks 2.0 uses (imported when a network is built, not with
this package); our code only wires them as 2.0's config says.

    NETWORKS       network.name_ -> builder(config dict) -> nn.Module
    build_network  the network of a config, or a one-line MapsInterpretError
    output_count   its number of outputs
    cam_parts      its (trunk, head) cut for Grad-CAM
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ...errors import MapsInterpretError, first_line
from . import cnn, densenet, resnet, vit
from .cam import cam_parts
from .fields import ConfigError

TORCHSCRIPT_FILE = "model.torchscript.pt"  # beside model.pt: a network we cannot rebuild, taken as is

NETWORKS: dict[str, Callable[[dict], nn.Module]] = {
    "CNN": cnn.build_cnn,
    "ResNet": resnet.build_resnet,
    "SEResNet": resnet.build_resnet,
    **{name: resnet.build_variant for name in resnet.VARIANTS},
    "DenseNet": densenet.build_densenet,
    **{name: densenet.build_variant for name in densenet.VARIANTS},
    "ViT": vit.build_vit,
    **{name: vit.build_variant for name in vit.VARIANTS},
}

# 2.0's other networks: not image classifiers/regressors (their output is an image or a latent code).
NOT_CLASSIFIERS = ("MLP", "ConvEncoder", "ConvDecoder", "Generator", "AutoEncoder", "VAE", "UNet", "AttentionUNet")


def build_network(config: dict, where: str) -> nn.Module:
    """The float32 network of a model.json `network` dict (weights uninitialised: the caller loads model.pt).
    Works under `with torch.device("meta")`. `where` (e.g. the model.json path) starts every error message."""
    name = config.get("name_") if isinstance(config, dict) else None
    if name not in NETWORKS:
        what = (f"network {name!r} is not an image classifier or regressor" if name in NOT_CLASSIFIERS
                else f"network {name!r} cannot be rebuilt" if isinstance(name, str) else "network.name_ is missing")
        raise MapsInterpretError(
            f"{where}: {what} (supported: {', '.join(NETWORKS)}); to interpret it anyway, save it as TorchScript "
            f"in {TORCHSCRIPT_FILE} next to model.pt, which is then taken as is")
    try:
        return NETWORKS[name](config).to(torch.float32)
    except ConfigError as error:
        raise MapsInterpretError(f"{where}: network {name}: {error}; correct the \"network\" entry (ClinicaDL "
                                 f"2.0.0 refuses it too)") from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, ZeroDivisionError, OverflowError,
            RuntimeError) as error:
        raise MapsInterpretError(f"{where}: network {name} cannot be built from its config "
                                 f"({type(error).__name__}: {first_line(error)[:200]}); check its arguments "
                                 f"against ClinicaDL 2.0.0's") from None


def output_count(config: dict, where: str = "model.json") -> int:
    """The network's number of outputs (num_outputs; 2.0's networks without it return feature maps: refused)."""
    value = config.get("num_outputs") if isinstance(config, dict) else None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MapsInterpretError(f"{where}: network.num_outputs is {value!r}; a classifier or regressor has a "
                                 f"positive number of outputs (a network without is not interpretable here)")
    return value


__all__ = ["NETWORKS", "TORCHSCRIPT_FILE", "build_network", "cam_parts", "output_count"]
