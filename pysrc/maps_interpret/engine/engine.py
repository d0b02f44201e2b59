"""`Engine`: one TorchScript model on one device in the C++ core, with per-element running sums. A typed wrapper:
the settings (settings.EngineSettings, checked once where they were made) become the core's options through the
method table (methods.core_options); the C++ errors arrive as `EngineError` exceptions."""

from __future__ import annotations

import os
from typing import Optional, Sequence, Union

import torch

from ..methods import core_options
from ..settings import EngineSettings
from .core import _core

EngineError = _core.EngineError  # what the C++ core raises (a RuntimeError), its message without a C++ stack
SUBSET_STRIDE = _core.SUBSET_STRIDE  # subset maps are summed under (subset + 1) * SUBSET_STRIDE + element id


class Engine:
    """Attribution maps of one TorchScript model on one device, with per-element running sums.

    `model` is a path to a TorchScript file or a `torch.jit.ScriptModule` (the engine works on its own copy); for
    a method that exports "cam" (grad-cam) it must have `trunk` and `head` submodules
    (`models.export.to_torchscript_cam`). `element_ids`, when known, are the element ids of every batch to come
    (their sums are then allocated once). `count_zeros` counts exactly-zero map values (None: under amp, where
    they reveal underflow). Calls release the GIL while computing. On CUDA, creating an engine sets the process's
    device policy (csrc/engine.cpp: cuDNN autotuning unless deterministic, IEEE float32 unless amp).
    """

    def __init__(self, model: Union[str, os.PathLike, torch.jit.ScriptModule], settings: EngineSettings, *,
                 device: str = "cpu", element_ids: Optional[Sequence[int]] = None,
                 count_zeros: Optional[bool] = None):
        method, parameters, noise_tunnel = core_options(settings.row, settings.values, settings.noise_tunnel)
        options = _core.EngineOptions()
        options.device, options.method, options.parameters = str(device), method, parameters
        options.noise_tunnel, options.target, options.target_mode = noise_tunnel, settings.target, settings.target_mode
        options.amp = settings.amp or "none"
        options.deterministic, options.abs = settings.deterministic, settings.abs
        options.count_zeros = settings.amp is not None if count_zeros is None else bool(count_zeros)
        options.statistics, options.group_by = settings.statistics, settings.group_by
        if isinstance(model, (str, os.PathLike)):
            self._core = _core.Engine.from_file(os.fspath(model), options)
        elif isinstance(model, torch.jit.ScriptModule):
            self._core = _core.Engine(model._c, options)
        else:
            raise TypeError(f"model must be a TorchScript path or torch.jit.ScriptModule, got {type(model).__name__}")
        if element_ids is not None:
            self._core.reserve([int(i) for i in element_ids])
        self.settings = settings

    @property
    def device(self) -> torch.device:
        return torch.device(self._core.device)

    def attribute(self, batch: torch.Tensor, targets: Optional[Sequence[int]] = None,
                  seeds: Optional[Sequence[int]] = None) -> torch.Tensor:
        """The maps of `batch` (B, C, *spatial): float32, same shape, on the engine's device; nothing is summed.
        `targets`: each sample's output node (target mode "given"); `seeds`: each sample's own seed (the noise
        tunnel: its noise then does not depend on its batch; default: its row)."""
        return self._core.attribute(batch, [int(t) for t in targets or ()], [int(s) for s in seeds or ()])

    def accumulate(self, batch: torch.Tensor, element_ids: Sequence[int], return_maps: bool = False,
                   targets: Optional[Sequence[int]] = None, seeds: Optional[Sequence[int]] = None,
                   subsets: Optional[Sequence[int]] = None,
                   labels: Optional[Sequence[int]] = None) -> Optional[torch.Tensor]:
        """The maps of `batch` added to the sums of their element ids; the maps come back only if `return_maps`.
        `subsets` (group_by "given") and `labels` (group_by "correct"): per sample."""
        return self._core.accumulate(batch, [int(i) for i in element_ids], bool(return_maps),
                                     [int(t) for t in targets or ()], [int(s) for s in seeds or ()],
                                     [int(s) for s in subsets or ()], [int(x) for x in labels or ()])

    def outputs(self, batch: torch.Tensor) -> torch.Tensor:
        """The model's outputs (B, n_outputs) for `batch`, forward only, float32, on the engine's device (its amp
        and device policy); nothing is summed. Its pure-PyTorch twin: `model(batch)` under `torch.no_grad()`."""
        return self._core.outputs(batch)

    def restore(self, state: dict) -> None:
        """Continues the running sums of an interrupted run: `state` holds ids, counts, sums (and, with statistics,
        abs_sums, mean64, m2), as `state()` gives them, element ids and subset keys together. The maps added next
        join those sums in the order they would have joined them had the run never stopped (same values, bit for
        bit). Only before the first batch."""
        if not state or not state.get("ids"):
            return
        keys = list(state["ids"])
        for subsets in (False, True):
            rows = [row for row, key in enumerate(keys) if (key >= SUBSET_STRIDE) == subsets]
            if not rows:
                continue
            index = torch.tensor(rows)
            pick = {name: state[name].index_select(0, index) for name in ("sums", "abs_sums", "mean64", "m2")
                    if state.get(name) is not None}
            self._core.restore(subsets, [keys[row] for row in rows], [state["counts"][row] for row in rows],
                               pick["sums"], pick.get("abs_sums"), pick.get("mean64"), pick.get("m2"))

    def state(self, subsets: bool = False) -> dict:
        """What has been accumulated, per element id (or per subset key): ids, counts, float32 sums and, with
        statistics, sums of |map|, float64 Welford means and M2; {} when nothing was."""
        ids = self._core.ids(subsets)
        if not ids:
            return {}
        out = {"ids": ids, "counts": self._core.counts(subsets), "sums": self._core.sums(subsets)}
        if self.settings.statistics:
            out.update(abs_sums=self._core.abs_sums(subsets), mean64=self._core.welford_means(subsets),
                       m2=self._core.m2(subsets))
        return out

    def means(self) -> dict[int, torch.Tensor]:
        """Each element's mean map (its float32 sum divided by its count)."""
        return dict(zip(self._core.ids(), self._core.means().unbind(0)))

    def last_subsets(self) -> list[int]:
        """group_by: the subset of each sample of the last batch."""
        return self._core.last_subsets()

    def zero_fraction(self) -> Optional[float]:
        """Fraction of exactly-zero map values so far, when counted (by default under amp)."""
        fraction = self._core.zero_fraction()
        return None if fraction < 0 else fraction
