"""Rebuilding the network of a MAPS and loading its weights safely (`torch.load(weights_only=True)`)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from ..errors import MapsInterpretError, first_line
from ..maps import Maps
from . import _params, random_arch, resnet, resnet3d, secnn, stride
from .conv import conv4_fc3, conv5_fc3


def _conv_builder(build: Callable[..., nn.Module]) -> Callable[[dict], nn.Module]:
    def builder(params: dict) -> nn.Module:
        return build(_params.input_size(params), output_size=_params.output_size(params),
                     dropout=_params.dropout(params))

    return builder


# Architecture name in maps.json -> builder(maps.json parameters); same state_dict keys as ClinicaDL 1.6.1.
ARCHITECTURES: dict[str, Callable[[dict], nn.Module]] = {
    "Conv5_FC3": _conv_builder(conv5_fc3),
    "Conv4_FC3": _conv_builder(conv4_fc3),
    **stride.BUILDERS, **resnet.BUILDERS, **resnet3d.BUILDERS, **secnn.BUILDERS, **random_arch.BUILDERS,
}


TORCHSCRIPT_FILE = "model.torchscript.pt"  # best-<metric>/ file of a custom architecture, used as is


def uses_torchscript(maps: Maps) -> bool:
    """Architectures we cannot rebuild are read from a TorchScript file the user saved beside the weights."""
    if maps.generation == 2:
        from .clinicadl2 import NETWORKS

        return maps.architecture not in NETWORKS
    return maps.architecture not in ARCHITECTURES


def weights_file(maps: Maps) -> str:
    return "model.pt" if maps.generation == 2 else "model.pth.tar"


def model_file(maps: Maps, split: int, metric: str) -> Path:
    folder = maps.model_dir(split, metric)
    return folder / TORCHSCRIPT_FILE if uses_torchscript(maps) else folder / weights_file(maps)


def build_model(maps: Maps) -> nn.Module:
    if maps.generation == 2:
        from .clinicadl2 import build_network

        return build_network(maps.network_config, str(maps.path / "model.json"))
    params = maps.params
    if params.get("multi_network"):
        raise MapsInterpretError(f"{maps.path}: multi_network MAPS are not supported (one model per element)")
    name = maps.architecture
    if name not in ARCHITECTURES:
        raise MapsInterpretError(
            f"{maps.path / 'maps.json'}: architecture {name!r} cannot be rebuilt (supported: "
            f"{', '.join(sorted(ARCHITECTURES))}); save the trained model as TorchScript in "
            f"best-<metric>/{TORCHSCRIPT_FILE} (torch.jit.script(model).save(path)) to interpret it")
    params = dict(params)
    if params.get("output_size") is None:
        params["output_size"] = _default_outputs(maps)
    try:
        return ARCHITECTURES[name](params)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, ZeroDivisionError, OverflowError) as error:
        detail = f"missing {error}" if isinstance(error, KeyError) else f"{type(error).__name__}: {error}"
        raise MapsInterpretError(f"{maps.path / 'maps.json'}: cannot build {name} ({detail})") from None


def _default_outputs(maps: Maps) -> int:
    """ClinicaDL's task managers: 1 output for regression, one per label code for classification."""
    if maps.params.get("network_task") == "regression":
        return 1
    codes = maps.params.get("label_code") or {}
    if not codes:
        raise MapsInterpretError(f"{maps.path / 'maps.json'}: output_size is missing and label_code is empty")
    return len(codes)


def read_state_dict(path: Path, mmap: bool = False, generation: int = 1) -> dict:
    """The state_dict of a ClinicaDL `model.pth.tar` ({"model": state_dict, "epoch", "name"}), or of a 2.0
    `model.pt` (the SupervisedModel's bare state_dict: the network's keys prefixed `network.`), read with
    `weights_only=True`: a file holding anything but tensors and plain values is refused, never run.
    `mmap` maps the file instead of reading it (checks touch only the headers)."""
    try:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError as error:
            if not mmap or "mmap" not in str(error):
                raise
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) file
    except FileNotFoundError:
        raise MapsInterpretError(f"{path} does not exist: the model of this split/selection metric is missing") from None
    except Exception as error:
        raise MapsInterpretError(f"cannot load {path}: it is truncated, corrupt, or holds more than plain "
                                 f"tensors (refused for safety; {first_line(error)[:200]})") from None
    if generation == 2:
        prefix = "network."
        if not isinstance(checkpoint, dict) or not any(str(k).startswith(prefix) for k in checkpoint):
            raise MapsInterpretError(f"{path} is not a ClinicaDL 2.0 model.pt: no {prefix}* weights inside")
        return {key[len(prefix):]: value for key, value in checkpoint.items() if key.startswith(prefix)}
    state = checkpoint.get("model") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise MapsInterpretError(f"{path} is not a ClinicaDL checkpoint: no 'model' state_dict inside")
    return state


def check_state_dict(model: nn.Module, state: dict, path: Path) -> None:
    """Same keys and shapes as `model` (which may live on the meta device)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shapes = [k for k in expected if k in state and getattr(state[k], "shape", None) != expected[k].shape]
    if missing or unexpected or wrong_shapes:
        parts = [f"{what} {', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''}"
                 for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shapes))
                 if keys]
        raise MapsInterpretError(f"{path} does not fit the architecture in {config_name(path)} ({'; '.join(parts)})")


def config_name(path: Path) -> str:
    return "model.json" if path.name == "model.pt" else "maps.json"


def output_count(maps: Maps) -> Optional[int]:
    """Output nodes of the rebuilt network; None for TorchScript models, which the engine checks when it runs.
    Every architecture rebuilt here ends with a Linear layer, the last one registered; a network without one
    is measured by a forward pass on the meta device (no memory, but ~1 s of imports: sympy, torch._dynamo)."""
    if uses_torchscript(maps):
        return None
    if maps.generation == 2:
        return int(maps.params["output_size"])
    with torch.device("meta"):
        model = build_model(maps).eval()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linears:
        return int(linears[-1].out_features)
    with torch.device("meta"):
        return int(model(torch.empty(1, *maps.input_size)).shape[1])


def check_weights(maps: Maps, path: Path, cam: bool = False) -> None:
    """Checks a checkpoint against the architecture without building real weights (meta device), or that a
    TorchScript model loads; `cam`: the model has the `convolutions` and `fc` parts Grad-CAM cuts."""
    if uses_torchscript(maps):
        model = load_model(maps, path)
    else:
        with torch.device("meta"):
            model = build_model(maps)
        check_state_dict(model, read_state_dict(path, mmap=True, generation=maps.generation), path)
    if cam and maps.generation == 2:
        from .clinicadl2 import cam_parts

        try:
            cam_parts(model, None)
        except MapsInterpretError as error:
            raise MapsInterpretError(f"{path}: {error}") from None
    elif cam and not (hasattr(model, "convolutions") and hasattr(model, "fc")):
        raise MapsInterpretError(f"{path}: grad-cam needs a CNN with `convolutions` and `fc` parts "
                                 f"({maps.architecture} has not); use the gradients method")


def load_model(maps: Maps, path: Path) -> nn.Module:
    """The network of the MAPS with the weights of `path`, in eval mode, on the CPU (a TorchScript model
    for architectures that cannot be rebuilt)."""
    if uses_torchscript(maps):
        from .export import load_torchscript

        if not path.is_file():
            raise MapsInterpretError(
                f"{path} does not exist: architecture {maps.architecture!r} cannot be rebuilt from "
                f"{weights_file(maps)}; "
                f"save the trained model there as TorchScript (torch.jit.script(model).save(path))")
        try:
            return load_torchscript(path)
        except Exception as error:
            raise MapsInterpretError(f"cannot load TorchScript model {path}: {first_line(error)[:200]}") from None
    # Built without initialising weights (meta), then given the checkpoint's tensors: no random initialisation
    # of ~40M weights, no second copy. Read, not memory-mapped: the model must not change (or fault) when the
    # file does while it is in use.
    with torch.device("meta"):
        model = build_model(maps)
    stored = read_state_dict(path, generation=maps.generation)
    state = {key: value.contiguous() for key, value in stored.items()}
    check_state_dict(model, state, path)
    model.load_state_dict(state, strict=True, assign=True)
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # a buffer the checkpoint does not hold (non-persistent): a builder bug, not a user error
        raise RuntimeError(f"{maps.architecture}: {', '.join(left)} not set from {path}")
    return model.float().eval()  # float32 as the network was built, whatever the checkpoint stored

