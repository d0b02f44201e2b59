"""The settings the plan resolves once from the options (plan/plan.py), one typed record per room that uses them:
the engine (how maps are computed), the data (how batches are made), the outputs (what is written), the run
(checkpoints, parts) and the sanity check. No room after the plan reads the command's options: each takes its
own record, and every value in it has been checked.

No torch here: records are plain values (they travel to every rank of a torchrun job).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from . import methods

TARGET_MODES = ("node", "given", "predicted")  # one node for all; each sample's own (labels); each argmax
GROUP_BY = ("none", "given", "predicted", "correct")  # subsets: none; each sample's own; predicted class; right/wrong
AMP = (None, "bfloat16", "float16")


@dataclass(frozen=True)
class EngineSettings:
    """How an engine computes maps (engine/engine.py, interpreter.py). Made valid or not at all: every value is
    checked when the record is made (ValueError), so neither the engine nor the C++ core checks it again."""

    method: str = methods.DEFAULT_METHOD
    # Values of every parameter the method reads (methods.reads) and of its general options, by name.
    parameters: tuple[tuple[str, Any], ...] = ()
    noise_tunnel: bool = False  # the method's maps averaged over noisy copies (besides smoothgrad's own)
    target: int = 0  # the output node, when target_mode is "node"
    target_mode: str = "node"
    abs: bool = False  # magnitudes are returned and accumulated
    amp: Optional[str] = None  # autocast dtype of the forward pass: None (float32), "bfloat16", "float16"
    deterministic: bool = False
    statistics: bool = False  # also |map| sums and Welford mean/M2 per element (and subset)
    group_by: str = "none"

    def __post_init__(self) -> None:
        row = methods.method(self.method, ValueError)
        methods.check_noise_tunnel(row, self.noise_tunnel, ValueError)
        values = self.values
        missing = [name for name in (*methods.reads(row, self.noise_tunnel), *row.options) if name not in values]
        if missing:
            raise ValueError(f"{row.name} needs {', '.join(missing)}: make the settings with engine_settings()")
        methods.check_parameters({k: v for k, v in values.items() if k in methods.PARAMETERS}, ValueError)
        if self.target_mode not in TARGET_MODES:
            raise ValueError(f"target mode {self.target_mode!r} is not one of {', '.join(TARGET_MODES)}")
        if self.group_by not in GROUP_BY:
            raise ValueError(f"group_by {self.group_by!r} is not one of {', '.join(GROUP_BY)}")
        if self.amp not in AMP:
            raise ValueError(f"amp {self.amp!r} is not one of None, bfloat16, float16")
        methods.check_amp(row, self.amp is not None, ValueError)
        if isinstance(self.target, bool) or not isinstance(self.target, int) or self.target < 0:
            raise ValueError(f"--target_node must be 0 or more, got {self.target!r}")

    @property
    def row(self) -> methods.Method:
        return methods.METHODS[self.method]

    @property
    def values(self) -> dict[str, Any]:
        return dict(self.parameters)

    @property
    def seeded(self) -> bool:
        """Whether each sample needs its own seed (its noise must not depend on its batch)."""
        return self.row.noise_tunnel or self.noise_tunnel

    @property
    def label(self) -> str:
        """The method as titles and logs name it."""
        return f"{self.method} (noise tunnel)" if self.noise_tunnel else self.method

    def maps_only(self) -> "EngineSettings":
        """The same maps, without the statistics and subsets (the sanity check's means)."""
        from dataclasses import replace

        return replace(self, statistics=False, group_by="none")


def engine_settings(method: str = methods.DEFAULT_METHOD, *, target: int = 0, target_mode: str = "node",
                    noise_tunnel: bool = False, abs: bool = False, amp: Optional[str] = None,
                    deterministic: bool = False, statistics: bool = False, group_by: str = "none",
                    compat: Optional[str] = None, **parameters: Any) -> EngineSettings:
    """EngineSettings from keyword values (checked by EngineSettings: ValueError); the method's parameters not
    given take the table's defaults, those of other methods are refused. The plan calls it with the command's
    options, the in-memory API with the caller's."""
    row = methods.method(method, ValueError)
    values = {name: parameters.get(name, methods.PARAMETERS[name].default)
              for name in methods.reads(row, noise_tunnel)}
    # The given values the method does not read are checked here (a typo, a value out of range: errors all the
    # same), the others by EngineSettings.
    methods.check_parameters({k: v for k, v in parameters.items() if k not in values}, ValueError)
    general = {"compat": compat}  # the general options a method may read (Method.options)
    values.update({name: general[name] for name in row.options})
    return EngineSettings(method=row.name, parameters=tuple(values.items()), noise_tunnel=noise_tunnel,
                          target=target, target_mode=target_mode, abs=abs, amp=amp, deterministic=deterministic,
                          statistics=statistics, group_by=group_by)


@dataclass(frozen=True)
class DataSettings:
    """How a pass's batches are made (data/)."""

    batch_size: int = 2
    n_proc: int = 2  # readers (0: the main thread)
    reader: str = "threads"  # threads | processes
    on_device: bool = False  # raw tensors to the device, preprocessed there (--preprocess_on, resolved)


@dataclass(frozen=True)
class OutputSettings:
    """What is written into each interpret-<NAME> folder (output/)."""

    data_group: str
    name: str
    method: str  # for titles and records
    save_individual: bool = False
    save_nifti: bool = False
    save_figures: bool = False
    figure_display: str = "ortho"  # --figure_display: ortho or mosaic
    statistics: bool = False
    group_by: Optional[str] = None  # the --group_by column (file names, subsets.tsv), None without
    clinicadl_means: bool = False  # --compat clinicadl: ClinicaDL's division of patch/slice/roi means
    overwrite_name: bool = False  # an existing interpret-<NAME> folder may be replaced


@dataclass(frozen=True)
class RunSettings:
    """Checkpoints, parts and the run's folder (runner/)."""

    data_group: str
    name: str
    resume: bool = False
    checkpoint_every: int = 100  # batches; 0: only when stopped by a signal
    num_parts: int = 1
    part_id: int = 0
    merge_parts: bool = False
    overwrite_name: bool = False

    def key(self, part_id: Optional[int] = None) -> str:
        """The run folder's name: one per data group and NAME (and part)."""
        part = self.part_id if part_id is None else part_id
        suffix = f"-part{part}of{self.num_parts}" if self.num_parts > 1 else ""
        return f"{self.data_group}-{self.name}{suffix}"


@dataclass(frozen=True)
class SanitySettings:
    """--sanity_check (analysis/sanity.py)."""

    enabled: bool = False
    sessions: int = 0  # the group's first N sessions (0: all)


@dataclass(frozen=True)
class EvaluationSettings:
    """--evaluate (analysis/evaluation.py)."""

    enabled: bool = False
    steps: int = 20
    orders: tuple = ("abs", "random")
    lerf: bool = False  # also least-relevant-first curves
    replacement: str = "blur"
    value: float = 0.0
    mask: Optional[Path] = None  # the region's NIfTI: --evaluation_mask, or --evaluation_roi's mask in the CAPS
    roi: Optional[str] = None  # --evaluation_roi's name

    @property
    def curves(self) -> list[tuple[str, str, str]]:
        """(kind, order, direction) of every curve, in the tables' order."""
        directions = ("morf", "lerf") if self.lerf else ("morf",)
        return [(kind, order, direction) for direction in directions for kind in ("deletion", "insertion")
                for order in self.orders if not (direction == "lerf" and order == "random")]  # random has no ends


def curve_name(kind: str, order: str, direction: str) -> str:
    return f"{kind}_{order}" + ("_lerf" if direction == "lerf" else "")


def step_counts(n: int, steps: int) -> list[int]:
    """Voxels removed at each of the steps + 1 steps: k n / K rounded half to even, mirrored (step K - k removes n
    minus step k's; but the middle step when n is odd and K even), so a deletion's step and the mirrored
    insertion's step remove the same voxels."""
    first = [round(k * n / steps) for k in range(steps + 1)]
    return [first[k] if 2 * k <= steps else n - first[steps - k] for k in range(steps + 1)]
