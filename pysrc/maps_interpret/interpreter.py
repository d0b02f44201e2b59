"""`Interpreter`: a trained network ready to explain tensors in memory, as nnU-Net's predictor is for
segmentation. Load a MAPS model once, then call `attribute(batch, method=..., target=...)` as often as needed,
on the CPU or a GPU; every method of the table (methods.py) is there, computed by the C++ engine.

    from maps_interpret import Interpreter
    interpreter = Interpreter.from_maps("demo/maps", split=0, selection_metric="loss")
    maps = interpreter.attribute(batch, method="integrated-gradients", target=1, n_steps=32)

The command uses the same object: each model of a run is an Interpreter whose `engine(settings)` sums the maps
of every batch (runner/passes.py), and the sanity check makes one of each randomised network
(analysis/sanity.py).
"""

from __future__ import annotations

import operator
import zlib
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from . import methods
from .data.transforms import Preprocess
from .engine import Engine
from .errors import MapsInterpretError
from .maps import Maps, open_maps
from .settings import EngineSettings, engine_settings

Target = Union[int, str, Sequence[int]]
ENGINES_KEPT = 4  # attribute()'s engines kept for the next call (each holds the model on the device)


def export_model(model: Union[nn.Module, torch.jit.ScriptModule], settings: EngineSettings) -> torch.jit.ScriptModule:
    """`model` as the engine of `settings`' method takes it (models/export.py is the only TorchScript code)."""
    from .models.deterministic import deterministic_twin
    from .models.export import to_torchscript, to_torchscript_cam
    from .models.fast import fuse_blocks

    if settings.deterministic and not isinstance(model, torch.jit.ScriptModule):
        model = deterministic_twin(model)  # torch has no deterministic CUDA backward for a global average pool
    if settings.row.export == "cam":  # the cut counts the original modules: no rewriting
        return to_torchscript_cam(model, settings.values.get("level_grad_cam"))
    if settings.row.export == "lrp":  # a network whose input gradient is the relevance
        from .models.lrp import lrp_network

        return to_torchscript(lrp_network(model, settings.values["lrp_composite"]))
    if settings.row.export == "staged":
        from .models.staged import staged_network  # occlusion recomputes the first stages on crops

        staged = staged_network(model)  # None for a TorchScript model or a network without stages
        if staged is not None:
            return to_torchscript(staged)
    return model if isinstance(model, torch.jit.ScriptModule) else to_torchscript(fuse_blocks(model))


class Interpreter:
    """A network (an `nn.Module` in eval mode, or a TorchScript module) and a device. `label_code` (class name ->
    output node) and `preprocess` (ClinicaDL's evaluation transforms) come from a MAPS with `from_maps`."""

    def __init__(self, model: Union[nn.Module, torch.jit.ScriptModule], device: Union[str, torch.device] = "cpu", *,
                 label_code: Optional[dict] = None, preprocess: Optional[Preprocess] = None,
                 source: Optional[Path] = None):
        self.model = model.eval()
        self.device = str(torch.device(device))
        self.label_code = dict(label_code or {})
        self.preprocess_ = preprocess
        self.source = source  # the model file, named in errors
        self._exports: dict[tuple, torch.jit.ScriptModule] = {}
        self._engines: dict[EngineSettings, Engine] = {}  # attribute()'s, least recently used first

    @classmethod
    def from_maps(cls, maps: Union[str, Path, Maps], split: int = 0, selection_metric: str = "loss",
                  device: Union[str, torch.device] = "cpu") -> "Interpreter":
        """The model of `<split>/best-<selection_metric>/` of a MAPS (of ClinicaDL 1.x; or of a ClinicaDL 2.0
        output folder, where `selection_metric` may also be "final"), rebuilt and loaded safely (weights only)."""
        from .models import load_model, model_file

        maps = open_maps(Path(maps)) if isinstance(maps, (str, Path)) else maps
        path = model_file(maps, split, selection_metric)
        if not path.is_file():
            raise MapsInterpretError(f"{path} does not exist: the MAPS has no model for {maps.split_name}-{split} "
                                     f"{maps.checkpoint_name(selection_metric)}")
        return cls(load_model(maps, path), device, label_code=maps.params.get("label_code"),
                   preprocess=Preprocess.from_params(maps.params), source=path)

    def export(self, settings: EngineSettings) -> torch.jit.ScriptModule:
        """The network as `settings`' method hands it to C++ (made once per kind of export)."""
        key = (settings.row.export, settings.values.get("level_grad_cam"), settings.values.get("lrp_composite"),
               settings.deterministic)
        if key not in self._exports:
            self._exports[key] = export_model(self.model, settings)
        return self._exports[key]

    def engine(self, settings: EngineSettings, element_ids: Optional[Sequence[int]] = None) -> Engine:
        """A new engine of this network: its own running sums (a run makes one per model and pass)."""
        return Engine(self.export(settings), settings, device=self.device, element_ids=element_ids)

    def attribute(self, batch: torch.Tensor, method: str = methods.DEFAULT_METHOD, target: Target = 0, *,
                  abs: bool = False, noise_tunnel: bool = False, amp: Optional[str] = None,
                  compat: Optional[str] = None, deterministic: bool = False, seeds: Optional[Sequence[int]] = None,
                  **parameters: Any) -> torch.Tensor:
        """The maps of `batch` (B, C, *spatial), already preprocessed as the network expects it (`preprocess`):
        float32, the batch's shape, on this interpreter's device.

        `method`: one of methods.METHODS, with its parameters as keywords (n_samples, noise_level, seed,
        n_steps, baseline, chunk_size, level_grad_cam). `target`: an output node for every sample, a sequence
        of one node per sample, or "predicted" (each sample's argmax). `abs`: magnitudes; `noise_tunnel`: the
        method's maps averaged over noisy copies; `amp`: "bfloat16"/"float16" autocast (GPU); `compat`:
        "clinicadl" for ClinicaDL 1.6.1's Grad-CAM; `deterministic`: deterministic cuDNN algorithms (GPU);
        `seeds`: each sample's noise seed (default: its row). On a GPU, the engine's policy (IEEE float32 unless
        amp, cuDNN autotuning unless deterministic) holds during the call only. Bad values raise ValueError
        naming them."""
        unknown = sorted(set(parameters) - set(methods.PARAMETERS))
        if unknown:
            raise ValueError(f"unknown method parameter {unknown[0]!r}: the parameters are "
                             f"{', '.join(methods.PARAMETERS)}")
        if isinstance(target, str):
            if target != "predicted":
                raise ValueError(f"target must be an output node, a node per sample or 'predicted', got {target!r}")
            mode, node, targets = "predicted", 0, None
        else:
            try:  # one node (an int, a numpy integer, a 0-d tensor) or one per sample (a sequence, a 1-d tensor)
                mode, node, targets = "node", operator.index(target), None
            except TypeError:
                mode, node, targets = "given", 0, [operator.index(t) for t in target]
        settings = engine_settings(method, target=node, target_mode=mode, noise_tunnel=noise_tunnel, abs=abs,
                                   amp=amp, compat=compat, deterministic=deterministic, **parameters)
        if deterministic:
            deterministic_cublas()
        engine = self._engines.pop(settings, None) or self.engine(settings)
        self._engines[settings] = engine  # the most recently used last
        while len(self._engines) > ENGINES_KEPT:  # each holds a copy of the model on the device
            self._engines.pop(next(iter(self._engines)))
        return engine.attribute(batch, targets=targets, seeds=seeds)

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """An image tensor (C, D, H, W) of the CAPS as the network of an image-mode MAPS sees it (NaN removal,
        min-max normalisation, size reduction: ClinicaDL's evaluation transforms); add the batch axis with
        `unsqueeze(0)` or stack several."""
        if self.preprocess_ is None:
            raise ValueError("this Interpreter was not made from a MAPS: it knows no preprocessing "
                             "(use Interpreter.from_maps)")
        return self.preprocess_(image.float())


def sample_inputs(settings: EngineSettings, label_code: Optional[dict], owners: Sequence,
                  element_ids: Sequence[int]) -> tuple[Optional[list], Optional[list]]:
    """Per sample of a batch of sessions (`owners`): its target node (target mode "given": its label through
    `label_code`) and its noise seed (`sample_seed`), else None."""
    targets = [label_code[s.label] for s in owners] if settings.target_mode == "given" else None
    seeds = [sample_seed(s, e) for s, e in zip(owners, element_ids)] if settings.seeded else None
    return targets, seeds


def sample_seed(session, element: int) -> int:
    """A sample's own seed (the noise tunnel's): from its names only, so that its map does not depend on its
    batch, rank, part or on a resumed run."""
    return zlib.crc32(f"{session.participant_id}/{session.session_id}/{element}".encode())


def deterministic_cublas() -> None:
    """cuBLAS is deterministic only with a fixed workspace, read when CUDA starts: --deterministic sets it (unless
    the user did) before anything touches the GPU."""
    import os

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
