"""The commands' options: one dataclass each (`InterpretConfig`, `CompareConfig`), shared by the CLI and the
Python API (``maps_interpret.run``, ``analysis.compare.run``), and their checks that need no file.

Spellings follow ClinicaDL 1.6.1's ``clinicadl interpret`` so existing command lines work by swapping the
program name. ``field(metadata=...)`` holds what argparse-dataclass turns into options; ``action`` is an
addition of cli/common.py (repeatable options and ``--x/--no-x`` pairs). The methods and their parameters come
from the method table (methods.py): one field and option per parameter. The plan (plan/plan.py) turns an
InterpretConfig into typed settings (settings.py); nothing after it reads the config. No ``from __future__
import annotations`` here: argparse-dataclass reads the field types as objects.
"""


import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from . import methods
from .errors import UsageError
from .names import check_name

TARGETS = ("label", "predicted")
COMPAT = ("clinicadl",)
PREPROCESS_ON = ("auto", "loader", "device")
READERS = ("threads", "processes")
DEFAULT_SELECTION_METRICS = ("loss",)
EVALUATION_ORDERS = ("abs", "map", "random")  # --evaluate: how voxels are ranked (analysis/faithfulness.py)
DEFAULT_EVALUATION_ORDERS = ("abs", "random")
EVALUATION_REPLACEMENTS = ("constant", "blur", "road")


def target_node(text: str):
    """--target_node: an output node (int), or `label` / `predicted` (each session's own)."""
    if text in TARGETS:
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an output node (0, 1, ...), label or predicted; got {text!r}")


def _opt(*args: str, help: str, **extra) -> dict:
    return {"args": list(args), "help": help, **extra}


def _with_method_parameters(cls):
    """One field (and option) per parameter of the method table, after `noise_tunnel`: a method with a new
    parameter needs no change here."""
    annotations = {}
    for key, value in cls.__annotations__.items():
        annotations[key] = value
        if key == "noise_tunnel":
            for parameter in methods.PARAMETERS.values():
                annotations[parameter.name] = Optional[parameter.type] if parameter.optional else parameter.type
                setattr(cls, parameter.name, field(default=parameter.default, metadata=_opt(
                    f"--{parameter.name}", type=parameter.type, metavar=parameter.metavar, help=parameter.help,
                    **({"choices": parameter.choices} if parameter.choices else {}))))
    cls.__annotations__ = annotations
    return cls


@dataclass
@_with_method_parameters
class InterpretConfig:
    input_maps_directory: Path = field(metadata=_opt(
        "input_maps_directory", metavar="INPUT_MAPS_DIRECTORY", type=Path,
        help="MAPS folder written by `clinicadl train` (ClinicaDL 1.x), or a ClinicaDL 2.0 training output "
             "(the folder with model.json and training/)."))
    data_group: str = field(metadata=_opt(
        "data_group", metavar="DATA_GROUP",
        help="Data group to interpret: train, validation, an existing group, or a new one "
             "(then give --participants_tsv and --caps_directory)."))
    name: str = field(metadata=_opt(
        "name", metavar="NAME", help="Name of the interpretation: maps go to <split>/best-<metric>/"
                                     "<DATA_GROUP>/interpret-<NAME>/."))
    method: str = field(default=methods.DEFAULT_METHOD, metadata=_opt(
        "method", metavar="METHOD", nargs="?", type=str, choices=list(methods.METHODS), help=methods.help_text()))
    selection_metrics: list[str] = field(default_factory=lambda: list(DEFAULT_SELECTION_METRICS), metadata=_opt(
        "--selection_metrics", action="append", metavar="METRIC",
        help="Load the model of best-<METRIC>; repeat for several (default: loss)."))
    participants_tsv: Optional[Path] = field(default=None, metadata=_opt(
        "--participants_tsv", type=Path, metavar="TSV",
        help="TSV of participant_id/session_id/diagnosis defining a new data group."))
    caps_directory: Optional[Path] = field(default=None, metadata=_opt(
        "--caps_directory", type=Path, metavar="DIR", help="CAPS folder of a new data group."))
    multi_cohort: bool = field(default=False, metadata=_opt(
        "--multi_cohort", help="The TSV and CAPS given are multi-cohort TSVs."))
    diagnoses: list[str] = field(default_factory=list, metadata=_opt(
        "-d", "--diagnoses", action="append", metavar="DIAGNOSIS",
        help="Keep only these diagnoses of --participants_tsv; repeatable (default: the MAPS' diagnoses)."))
    target_node: Union[int, str] = field(default=0, metadata=_opt(
        "--target_node", type=target_node, metavar="NODE",
        help="Output node whose attribution is mapped: an integer (default: 0; the only form for regression), "
             "`label` (each session's true class, from the group's TSV through label_code) or `predicted` "
             "(each session's argmax)."))
    noise_tunnel: bool = field(default=False, metadata=_opt(
        "--noise_tunnel", help="Average the method's maps over --n_samples noisy copies of each image (SmoothGrad's "
                               "noise, as Captum's NoiseTunnel wraps any method); smoothgrad is gradients with it."))
    abs: bool = field(default=False, metadata=_opt(
        "--abs", help="Take each map's magnitude before it is written and accumulated (signs no longer cancel)."))
    statistics: bool = field(default=False, metadata=_opt(
        "--statistics", help="Also write, per element, the mean of |map| (absmean_...) and the standard deviation "
                             "(std_..., n - 1) over the group, accumulated in one pass (Welford, float64)."))
    group_by: Optional[str] = field(default=None, metadata=_opt(
        "--group_by", type=str, metavar="COLUMN",
        help="Also write the mean (and with --statistics the other statistics) of each subset of the group: "
             "`predicted` (each session's predicted class), `correct` (prediction == label) or any column of "
             "the group's TSV (e.g. diagnosis); files named mean_<COLUMN>-<value>_<mode>-<k>_map.pt."))
    save_individual: bool = field(default=False, metadata=_opt(
        "--save_individual", help="Also write one map per participant/session."))
    n_proc: int = field(default=2, metadata=_opt(
        "-np", "--n_proc", type=int, metavar="INT", help="Sessions read at once, by threads or processes (--reader; default: 2; 0: in the main thread)."))
    gpu: bool = field(default=True, metadata=_opt(
        "--gpu", action=argparse.BooleanOptionalAction,
        help="Compute on the GPU (default); --no-gpu computes on the CPU."))
    amp: bool = field(default=False, metadata=_opt(
        "--amp", action=argparse.BooleanOptionalAction,
        help="Mixed precision on the GPU (bfloat16 where supported, else float16); not with occlusion."))
    batch_size: int = field(default=2, metadata=_opt(
        "--batch_size", type=int, metavar="INT", help="Images per batch (default: 2)."))
    overwrite: bool = field(default=False, metadata=_opt(
        "-o", "--overwrite", help="Redefine an existing data group from the TSV/CAPS given and erase its "
                                  "results in every split and selection metric."))
    overwrite_name: bool = field(default=False, metadata=_opt(
        "-on", "--overwrite_name", help="Replace an existing interpret-<NAME> folder."))
    save_nifti: bool = field(default=False, metadata=_opt(
        "--save_nifti", help="Also write each map as a float32 NIfTI file (.nii.gz)."))
    save_figures: bool = field(default=False, metadata=_opt(
        "--save_figures", help="Also draw every mean/statistic map with nilearn over the group's mean input image "
                               "(PNG, cuts in mm through the peak, one colour scale per statistic and run, a glass "
                               "brain of each mean map), an index.html per folder and one report of the run "
                               "(reports/<group>/interpret-<NAME>.html: every split, metric and subset, the sanity "
                               "check, the agreement between the maps, provenance)."))
    figure_display: str = field(default="ortho", metadata=_opt(
        "--figure_display", type=str, choices=("ortho", "mosaic"),
        help="--save_figures: three orthogonal cuts through the peak of each map (ortho, default) or rows of cuts "
             "along each axis (mosaic)."))
    sanity_check: bool = field(default=False, metadata=_opt(
        "--sanity_check", help="Also run Adebayo et al.'s cascading randomisation: re-initialise the model's layers "
                               "from the output down, one more at a time, recompute the mean map each time and "
                               "report its similarity to the trained model's (sanity_check.tsv and .png)."))
    sanity_sessions: int = field(default=0, metadata=_opt(
        "--sanity_sessions", type=int, metavar="N",
        help="--sanity_check: the mean maps of the randomised models are computed over the group's first N "
             "sessions (default: 0, every session; each randomised layer costs one pass over them)."))
    evaluate: bool = field(default=False, metadata=_opt(
        "--evaluate", help="Also measure each session's map: deletion and insertion curves (the model's target "
                           "probability as the voxels the map ranks first are removed, or put back first) and their "
                           "areas; with --evaluation_mask, how much of the map lies in a region (evaluation.tsv, "
                           "evaluation_summary.tsv, evaluation_curves.tsv, evaluation.png, evaluation.json)."))
    evaluation_steps: int = field(default=20, metadata=_opt(
        "--evaluation_steps", type=int, metavar="K",
        help="--evaluate: steps of each curve, 1/K of the voxels each (default: 20; K + 1 forward passes)."))
    evaluation_orders: list[str] = field(default_factory=list, metadata=_opt(
        "--evaluation_orders", action="append", type=str, choices=EVALUATION_ORDERS,
        help="--evaluate: how the voxels are ranked: abs (|map|), map (the signed map: evidence for the target "
             "first), random (the baseline); repeat for several (default: abs and random)."))
    evaluation_lerf: bool = field(default=False, metadata=_opt(
        "--evaluation_lerf", help="--evaluate: also the least-relevant-first curves (what the map ranks last goes "
                                  "first)."))
    evaluation_replacement: str = field(default="blur", metadata=_opt(
        "--evaluation_replacement", type=str, choices=EVALUATION_REPLACEMENTS,
        help="--evaluate: what removed voxels become: the image blurred (blur, default), ROAD's noisy linear "
             "imputation from their neighbours (road; slower), or a constant (--evaluation_value; on T1 images 0 "
             "looks like fluid, i.e. atrophy, and can raise an AD output)."))
    evaluation_value: float = field(default=0.0, metadata=_opt(
        "--evaluation_value", type=float, metavar="V",
        help="--evaluate --evaluation_replacement constant: the value (default: 0, the background of min-max "
             "normalised images)."))
    evaluation_mask: Optional[Path] = field(default=None, metadata=_opt(
        "--evaluation_mask", type=Path, metavar="NIFTI",
        help="--evaluate: a binary mask on the images' voxel grid (e.g. a region the disease affects): each map's "
             "relevance mass inside it, rank accuracy, AUROC and pointing game."))
    evaluation_roi: Optional[str] = field(default=None, metadata=_opt(
        "--evaluation_roi", type=str, metavar="NAME",
        help="--evaluate: the mask of a region of the data group's CAPS instead of --evaluation_mask: "
             "<caps>/masks/tpl-<template>/*_desc-Crop_*_roi-NAME_mask.nii* (where ClinicaDL's roi mode finds "
             "its masks)."))
    deterministic: bool = field(default=False, metadata=_opt(
        "--deterministic", help="GPU: the same maps every run: deterministic cuDNN and torch algorithms, no "
                                "autotuning, copies summed without atomic additions (slower; rounded otherwise)."))
    compat: Optional[str] = field(default=None, metadata=_opt(
        "--compat", type=str, choices=COMPAT, metavar="clinicadl",
        help="Reproduce ClinicaDL 1.6.1's numbers where they differ: its mean of patch/slice/roi maps "
             "(divided again by the elements per image) and its Grad-CAM variant."))
    reader: str = field(default="threads", metadata=_opt(
        "--reader", type=str, choices=READERS,
        help="How the -np readers run: threads of this process (default; reading and preprocessing release the "
             "GIL) or DataLoader worker processes that hand sessions over in shared memory."))
    preprocess_on: str = field(default="auto", metadata=_opt(
        "--preprocess_on", type=str, choices=PREPROCESS_ON,
        help="Where images are cut, checked and normalised: by the loader workers (on CPU cores), or on the "
             "compute device after one copy per batch (default auto: on the GPU, else the loader; same values)."))
    resume: bool = field(default=False, metadata=_opt(
        "--continue",
        help="Resume an interrupted run of this data group and NAME from its checkpoint (sessions done and "
             "individual maps written are skipped); with no checkpoint, start from the beginning. Refused if the "
             "options, models or sessions differ from the interrupted run's."))
    checkpoint_every: int = field(default=100, metadata=_opt(
        "--checkpoint_every", type=int, metavar="N",
        help="Checkpoint the partial sums every N batches (default: 100; 0: only when stopped by SIGTERM, "
             "SIGUSR1 or Ctrl-C), so that --continue loses at most N batches after a SIGKILL."))
    num_parts: int = field(default=1, metadata=_opt(
        "--num_parts", type=int, metavar="K",
        help="Split the sessions into K parts computed by separate jobs (with --part_id), then combined by "
             "--merge_parts (default: 1, no parts)."))
    part_id: Optional[int] = field(default=None, metadata=_opt(
        "--part_id", type=int, metavar="I",
        help="Which part this job computes, 0..K-1 (with --num_parts K; required then, but with --merge_parts)."))
    merge_parts: bool = field(default=False, metadata=_opt(
        "--merge_parts", help="Combine the K finished parts (--num_parts K) into the final maps and data group."))
    verbose: bool = field(default=False, metadata=_opt(
        "-v", "--verbose", help="Debug logging, and a traceback on errors."))

    def __post_init__(self) -> None:
        # An append option that was never given arrives as None (cli/common.py): use the documented default.
        # Repeats are dropped, first occurrence kept (each metric is interpreted once).
        self.selection_metrics = list(dict.fromkeys(self.selection_metrics or DEFAULT_SELECTION_METRICS))
        self.diagnoses = list(dict.fromkeys(self.diagnoses or ()))
        self.evaluation_orders = list(dict.fromkeys(self.evaluation_orders or DEFAULT_EVALUATION_ORDERS))
        self.input_maps_directory = Path(self.input_maps_directory)
        if self.participants_tsv is not None:
            self.participants_tsv = Path(self.participants_tsv)
        if self.caps_directory is not None:
            self.caps_directory = Path(self.caps_directory)


def _check_names(config) -> None:
    """DATA_GROUP, NAME and each selection metric: names that become folder names (both commands)."""
    check_name(config.data_group, "DATA_GROUP", UsageError)
    check_name(config.name, "NAME", UsageError)
    for metric in config.selection_metrics:
        check_name(metric, "--selection_metrics", UsageError)


def validate(config: InterpretConfig) -> None:
    """Checks the options that need no file, but the method's (settings.engine_settings checks those): raises
    UsageError (exit status 2) on the first problem."""
    _check_names(config)
    if config.batch_size < 1:
        raise UsageError(f"--batch_size must be at least 1, got {config.batch_size}")
    if config.n_proc < 0:
        raise UsageError(f"-np/--n_proc must be 0 (load in the main process) or more, got {config.n_proc}")
    if config.checkpoint_every < 0:
        raise UsageError(f"--checkpoint_every must be 0 (only on signals) or more, got {config.checkpoint_every}")
    if config.num_parts < 1:
        raise UsageError(f"--num_parts must be at least 1, got {config.num_parts}")
    if config.part_id is None and config.num_parts > 1 and not config.merge_parts:
        raise UsageError(f"--num_parts {config.num_parts} needs --part_id I (0..{config.num_parts - 1}): which part "
                         "this job computes; or --merge_parts to combine the finished parts")
    if config.part_id is not None and not 0 <= config.part_id < config.num_parts:
        raise UsageError(f"--part_id must be in 0..{config.num_parts - 1} (--num_parts {config.num_parts}), "
                         f"got {config.part_id}")
    if config.part_id is not None and config.merge_parts:
        raise UsageError("--merge_parts combines every part: remove --part_id")
    if config.merge_parts and config.num_parts < 2:
        raise UsageError("--merge_parts needs --num_parts K (K >= 2): the number of parts to combine")
    if config.resume and config.overwrite:
        raise UsageError("--continue resumes a run as it was defined; --overwrite would redefine the data group: "
                         "remove one of them")
    if config.resume and config.merge_parts:
        raise UsageError("--merge_parts computes nothing and cannot be continued: remove --continue")
    if config.evaluation_steps < 1:
        raise UsageError(f"--evaluation_steps must be 1 or more, got {config.evaluation_steps}")
    evaluation = {"--evaluation_mask": config.evaluation_mask is not None, "--evaluation_lerf": config.evaluation_lerf,
                  "--evaluation_roi": config.evaluation_roi is not None}
    if config.evaluation_mask is not None and config.evaluation_roi is not None:
        raise UsageError("--evaluation_mask and --evaluation_roi both name the region: keep one")
    given = [name for name, used in evaluation.items() if used]
    if given and not config.evaluate:
        raise UsageError(f"{given[0]} is an option of --evaluate: add --evaluate")
    if config.sanity_sessions < 0:
        raise UsageError(f"--sanity_sessions must be 0 (every session) or more, got {config.sanity_sessions}")
    if config.method in methods.METHODS:
        methods.check_amp(methods.METHODS[config.method], config.amp)
    if config.amp and not config.gpu:
        raise UsageError("--amp needs the GPU: remove --amp or --no-gpu")
    # The command line's choices, checked for the Python API too.
    if isinstance(config.target_node, str) and config.target_node not in TARGETS:
        raise UsageError(f"--target_node must be an output node (0, 1, ...), label or predicted; got "
                         f"{config.target_node!r}")
    for option, value, allowed in (("--compat", config.compat, (None, *COMPAT)), ("--reader", config.reader, READERS),
                                   ("--preprocess_on", config.preprocess_on, PREPROCESS_ON)):
        if value not in allowed:
            raise UsageError(f"{option} {value!r} is not one of {', '.join(str(a) for a in allowed if a)}")


def plain(value):
    """An option's value as JSON holds it."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def record(config) -> dict:
    """Every option of a command's config, as JSON holds it (interpret.json, compare.json)."""
    from dataclasses import fields

    return {f.name: plain(getattr(config, f.name)) for f in fields(config)}


def method_parameters(config: InterpretConfig) -> dict:
    """The values of every method parameter of the table, as given."""
    return {name: getattr(config, name) for name in methods.PARAMETERS}


# Options that change the maps (or which files exist), as the user spells them: a checkpoint records their values
# (runner/checkpoints.py) and --continue refuses a run that changes one. Not: -np, --reader, --preprocess_on (same
# values bit for bit), --verbose, --overwrite/--overwrite_name, --continue, --checkpoint_every, --part_id.
RESULT_OPTIONS = {
    "method": "METHOD", "selection_metrics": "--selection_metrics", "target_node": "--target_node",
    "save_individual": "--save_individual", "save_nifti": "--save_nifti", "compat": "--compat", "amp": "--amp",
    "deterministic": "--deterministic", "batch_size": "--batch_size", "gpu": "--gpu/--no-gpu",
    "num_parts": "--num_parts", "abs": "--abs", "statistics": "--statistics", "group_by": "--group_by",
    "noise_tunnel": "--noise_tunnel", "save_figures": "--save_figures", "sanity_check": "--sanity_check",
    "sanity_sessions": "--sanity_sessions", **{name: f"--{name}" for name in methods.PARAMETERS},
    **{name: f"--{name}" for name in ("evaluate", "evaluation_steps", "evaluation_orders", "evaluation_lerf",
                                      "evaluation_replacement", "evaluation_value", "evaluation_mask",
                                      "evaluation_roi")},
}


# -- maps-interpret-compare ------------------------------------------------------------------------------------------

COMPARE_STATISTICS = ("mean", "absmean", "std")
DEFAULT_TOP_K = (1.0, 5.0, 10.0)


@dataclass
class CompareConfig:
    input_maps_directory: Path = field(metadata=_opt(
        "input_maps_directory", metavar="INPUT_MAPS_DIRECTORY", type=Path,
        help="MAPS folder (or ClinicaDL 2.0 training output) whose models were interpreted by maps-interpret."))
    data_group: str = field(metadata=_opt(
        "data_group", metavar="DATA_GROUP", help="Data group that was interpreted."))
    name: str = field(metadata=_opt(
        "name", metavar="NAME", help="Name of the interpretation: the maps of <split>/best-<metric>/<DATA_GROUP>/"
                                     "interpret-<NAME>/ are compared."))
    splits: list[int] = field(default_factory=list, metadata=_opt(
        "--splits", action="append", type=int, metavar="K",
        help="Compare the models of split K; repeat for several (default: every split holding the interpretation)."))
    selection_metrics: list[str] = field(default_factory=list, metadata=_opt(
        "--selection_metrics", action="append", metavar="METRIC",
        help="Compare the models of best-<METRIC>; repeat for several (default: every metric holding the "
             "interpretation)."))
    statistic: str = field(default="mean", metadata=_opt(
        "--statistic", type=str, choices=COMPARE_STATISTICS,
        help="Which maps to compare: mean (default), or absmean / std (written by maps-interpret --statistics)."))
    top_k: list[float] = field(default_factory=list, metadata=_opt(
        "--top_k", action="append", type=float, metavar="PERCENT",
        help="Dice overlap of the top PERCENT%% voxels by magnitude; repeat for several (default: 1, 5, 10)."))
    figure_element: Optional[int] = field(default=None, metadata=_opt(
        "--figure_element", type=int, metavar="ID",
        help="Element (<mode>_id) drawn in agreement.png (default: the first)."))
    output: Optional[Path] = field(default=None, metadata=_opt(
        "--output", type=Path, metavar="DIR",
        help="Output folder (default: <MAPS>/compare/<DATA_GROUP>/interpret-<NAME>/<STATISTIC>/)."))
    overwrite: bool = field(default=False, metadata=_opt(
        "-o", "--overwrite", help="Replace an existing output folder (only once its successor is complete)."))
    verbose: bool = field(default=False, metadata=_opt(
        "-v", "--verbose", help="Debug logging, and a traceback on errors."))

    def __post_init__(self) -> None:
        # An append option never given arrives as None (cli/common.py); repeats are dropped, order kept.
        self.input_maps_directory = Path(self.input_maps_directory)
        self.splits = list(dict.fromkeys(self.splits or ()))
        self.selection_metrics = list(dict.fromkeys(self.selection_metrics or ()))
        self.top_k = list(dict.fromkeys(float(k) for k in (self.top_k or DEFAULT_TOP_K)))
        if self.output is not None:
            self.output = Path(self.output)


def validate_compare(config: CompareConfig) -> None:
    """Option checks that need no file (UsageError, exit status 2)."""
    _check_names(config)
    if config.statistic not in COMPARE_STATISTICS:
        raise UsageError(f"--statistic {config.statistic!r} is not one of {', '.join(COMPARE_STATISTICS)}")
    for split in config.splits:
        if split < 0:
            raise UsageError(f"--splits must be 0 or more, got {split}")
    for k in config.top_k:
        if not 0 < k <= 100:
            raise UsageError(f"--top_k must be a percentage in (0, 100], got {k:g}")
