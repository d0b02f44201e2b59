"""Typed wrapper over the C++ core (`maps_interpret._core`), the only module that imports it.

Importing this module checks that the core was compiled against the torch that is installed: LibTorch
has no ABI promise across versions, so a mismatch is refused with the command that rebuilds it.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence, Union

import torch  # must be imported before _core (it loads libtorch and registers the tensor types)

from .errors import first_line

REBUILD = "pip install --no-build-isolation --force-reinstall --no-deps maps-interpret (or `make setup`)"


def _public(version: str) -> str:
    return version.split("+")[0]


def _check_torch(built: str, installed: str) -> None:
    """Before the core is loaded: against another torch it would fail on an undefined symbol, or worse."""
    if _public(built) != _public(installed):
        raise ImportError(f"maps-interpret was compiled against torch {_public(built)} but torch {installed} is "
                          f"installed: pip install torch=={_public(built)} (the build for your CUDA version), or "
                          f"rebuild maps-interpret against this torch: {REBUILD}")


try:
    from ._build_info import TORCH_VERSION
except ImportError:  # a source tree that was never built
    TORCH_VERSION = None
if TORCH_VERSION is not None:
    _check_torch(TORCH_VERSION, torch.__version__)

try:
    from . import _core
except ImportError as error:  # not built, or built for another Python
    raise ImportError(f"maps_interpret's C++ core cannot be loaded ({error}); rebuild it: {REBUILD}") from None


def _check_build(core=_core) -> None:
    built = core.built_against()
    if _public(built) != _public(torch.__version__):
        raise ImportError(f"maps_interpret's C++ core was compiled against torch {built} but torch "
                          f"{torch.__version__} is installed; rebuild it: {REBUILD}")
    # A core linked with its own static libstdc++ formats numbers wrongly (or crashes) in every error message.
    formatted = core.format_check(12345)
    if formatted != "n=12345 x=0.5":
        raise ImportError(f"maps_interpret's C++ core cannot format numbers (got {formatted!r} for 12345): it was "
                          "linked against a second, static copy of libstdc++; remove -static-libstdc++ from "
                          f"LDFLAGS/CXXFLAGS and rebuild it: {REBUILD}")


_check_build()

AMP_DTYPES = {None: "none", torch.bfloat16: "bfloat16", torch.float16: "float16"}
METHODS = ("gradients", "grad-cam", "input-x-gradient", "smoothgrad", "integrated-gradients")
TARGET_MODES = ("node", "given", "predicted")
GROUP_BY = ("none", "given", "predicted", "correct")
SUBSET_STRIDE = _core.SUBSET_STRIDE


class EngineError(RuntimeError):
    """An error raised by the C++ core, reduced to its message (no C++ stack)."""


def _core_call(function, *args):
    """The core returns its errors as exception objects (csrc/bindings.cpp); raise them as EngineError."""
    result = function(*args)
    if isinstance(result, BaseException):
        raise EngineError(first_line(result))
    return result


class Engine:
    """Attribution maps of one TorchScript model on one device, with per-element running sums.

    `model` is a path to a TorchScript file or a `torch.jit.ScriptModule` (the engine works on its own
    copy); for `method="grad-cam"` it must have `trunk` and `head` submodules (`models.export.to_torchscript_cam`).
    `target` is the output node whose gradient is mapped; `amp` the autocast dtype of the forward pass
    (None: float32); `cam_variant` "published" (default) or "clinicadl" (ClinicaDL 1.6.1's Grad-CAM);
    `deterministic` (CUDA) deterministic cuDNN algorithms instead of autotuning; `element_ids`, when known,
    the element ids of every batch to come (their sums are then allocated once); `count_zeros` counts
    exactly-zero map values (None: with `amp`, where they reveal underflow). `target_mode`: "node" (`target`
    for every sample), "given" (each batch's `targets`) or "predicted" (each sample's argmax). smoothgrad:
    `n_samples` noisy copies, noise std `noise_level` x each sample's value range, `seed`; integrated-gradients:
    `n_steps`, constant `baseline`; both: `chunk` rows per forward pass (0: the batch size). `abs`: the maps'
    magnitudes are returned and accumulated. `statistics`: also sums of |map| and Welford's mean and M2 (float64)
    per element; `group_by` ("none", "given", "predicted", "correct"): the same per (subset, element) too,
    under key subset * SUBSET_STRIDE + element id. Calls release the GIL while computing.
    On CUDA, creating an engine sets the process's device policy (csrc/engine.cpp: cuDNN autotuning unless
    `deterministic`, IEEE float32 convolutions and matmuls unless `amp`).
    """

    def __init__(self, model: Union[str, os.PathLike, torch.jit.ScriptModule], *, device: str = "cpu",
                 method: str = "gradients", target: int = 0, amp: Optional[torch.dtype] = None,
                 cam_variant: str = "published", deterministic: bool = False,
                 element_ids: Optional[Sequence[int]] = None, count_zeros: Optional[bool] = None,
                 target_mode: str = "node", n_samples: int = 16, noise_level: float = 0.1, n_steps: int = 50,
                 baseline: float = 0.0, chunk: int = 0, seed: int = 0, abs: bool = False,
                 statistics: bool = False, group_by: str = "none"):
        if amp not in AMP_DTYPES:
            raise ValueError(f"amp must be one of None, torch.bfloat16, torch.float16; got {amp}")
        if method not in METHODS:
            raise EngineError(f"unknown attribution method '{method}': use {', '.join(METHODS)}")
        if group_by not in GROUP_BY:
            raise EngineError(f"unknown group_by '{group_by}': use {', '.join(GROUP_BY)}")
        if target_mode not in TARGET_MODES:
            raise EngineError(f"unknown target mode '{target_mode}': use {', '.join(TARGET_MODES)}")
        if torch.device(device).type not in ("cpu", "cuda"):
            raise EngineError(f"unsupported device '{device}': use cpu, cuda or cuda:N")
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            raise EngineError(f"device '{device}' was requested but no CUDA GPU is visible")
        options = _core.EngineOptions()
        options.device, options.method, options.target, options.amp = str(device), method, int(target), AMP_DTYPES[amp]
        options.cam_variant = cam_variant
        options.deterministic = bool(deterministic)
        options.count_zeros = amp is not None if count_zeros is None else bool(count_zeros)
        options.target_mode, options.n_samples, options.noise_level = target_mode, int(n_samples), float(noise_level)
        options.n_steps, options.baseline, options.chunk = int(n_steps), float(baseline), int(chunk)
        options.seed, options.abs = int(seed), bool(abs)
        options.statistics, options.group_by = bool(statistics), group_by
        if isinstance(model, (str, os.PathLike)):
            self._core = _core_call(_core.Engine.from_file, os.fspath(model), options)
        elif isinstance(model, torch.jit.ScriptModule):
            self._core = _core_call(_core.Engine.create, model._c, options)
        else:
            raise TypeError(f"model must be a TorchScript path or torch.jit.ScriptModule, got {type(model).__name__}")
        if element_ids is not None:
            _core_call(self._core.reserve, [int(i) for i in element_ids])
        self.statistics, self.group_by = bool(statistics), group_by

    @property
    def device(self) -> torch.device:
        return torch.device(self._core.device)

    def accumulate(self, batch: torch.Tensor, element_ids: Sequence[int], return_maps: bool = False,
                   targets: Optional[Sequence[int]] = None, seeds: Optional[Sequence[int]] = None,
                   subsets: Optional[Sequence[int]] = None,
                   labels: Optional[Sequence[int]] = None) -> Optional[torch.Tensor]:
        """Maps of `batch` (B, C, *spatial) added to the sums of their element ids; the (B, C, *spatial)
        float32 maps, on the engine's device, come back only if `return_maps`. `targets`: each sample's
        output node (target_mode "given"); `seeds`: each sample's own seed (smoothgrad: its noise then does
        not depend on its batch); `subsets` (group_by "given") and `labels` (group_by "correct") per sample."""
        ids = [int(i) for i in element_ids]
        # Checked here too, so that bad input never depends on an error leaving C++.
        if not isinstance(batch, torch.Tensor) or batch.dim() < 3:
            raise EngineError(f"a batch must be (B, C, *spatial); got shape {list(getattr(batch, 'shape', []))}")
        if batch.shape[0] != len(ids):
            raise EngineError(f"got {len(ids)} element ids for a batch of {batch.shape[0]}")
        if not batch.is_floating_point():
            raise EngineError(f"a batch must hold floating-point values, got {batch.dtype}")
        return _core_call(self._core.accumulate, batch, ids, bool(return_maps),
                          [int(t) for t in targets or ()], [int(x) for x in seeds or ()],
                          [int(x) for x in subsets or ()], [int(x) for x in labels or ()])

    def _ids(self) -> list[int]:
        return _core_call(self._core.ids)

    def sums(self) -> dict[int, torch.Tensor]:
        return dict(zip(self._ids(), _core_call(self._core.sums).unbind(0)))

    def counts(self) -> dict[int, int]:
        return dict(zip(self._ids(), _core_call(self._core.counts)))

    def state(self, subsets: bool = False) -> dict:
        """What has been accumulated, per element id (or per subset key): ids, counts, float32 sums and, with
        statistics, sums of |map|, float64 Welford means and M2; {} when nothing was."""
        ids = _core_call(self._core.ids, subsets)
        if not ids:
            return {}
        out = {"ids": ids, "counts": _core_call(self._core.counts, subsets), "sums": _core_call(self._core.sums, subsets)}
        if self.statistics:
            out.update(abs_sums=_core_call(self._core.abs_sums, subsets),
                       mean64=_core_call(self._core.welford_means, subsets), m2=_core_call(self._core.m2, subsets))
        return out

    def means(self) -> dict[int, torch.Tensor]:
        return dict(zip(self._ids(), _core_call(self._core.means).unbind(0)))

    def last_subsets(self) -> list[int]:
        """group_by: the subset of each sample of the last batch."""
        return _core_call(self._core.last_subsets)

    def zero_fraction(self) -> Optional[float]:
        """Fraction of exactly-zero map values so far, when counted (by default with `amp`)."""
        fraction = _core_call(self._core.zero_fraction)
        return None if fraction < 0 else fraction


def frozen_batch_norm(x: torch.Tensor, norm: torch.nn.Module, alpha: torch.Tensor) -> torch.Tensor:
    """Eval-mode `norm(x)` (torch's values) whose input gradient is grad * alpha; see models/fast.py.
    The op (`torch.ops.maps_interpret.frozen_batch_norm`) is registered by the core; TorchScript calls it."""
    return torch.ops.maps_interpret.frozen_batch_norm(x, norm.weight, norm.bias, norm.running_mean,
                                                      norm.running_var, float(norm.eps), alpha)
