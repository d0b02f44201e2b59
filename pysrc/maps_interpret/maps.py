"""Reading a MAPS: maps.json (with ClinicaDL's defaults and old key names), splits, selection metrics,
and where each file of the MAPS lives."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import MapsInterpretError
from .maps2 import REPORTS, is_maps2, open_maps2
from .tables import read_table

# The keys interpret reads, with the values ClinicaDL 1.6.1 fills in when maps.json lacks them
# (its train_config.toml; task-dependent ones are handled in `read_parameters`).
DEFAULTS: dict[str, Any] = {
    "architecture": "default",
    "multi_network": False,
    "dropout": 0.0,
    "selection_metrics": ["loss"],
    "label_code": {},
    "gpu": True,
    "n_proc": 2,
    "batch_size": 8,
    "multi_cohort": False,
    "diagnoses": ["AD", "CN"],
    "normalize": True,
    "data_augmentation": False,
    "size_reduction": False,
    "size_reduction_factor": 2,
    "n_splits": 0,
}
TASK_LABEL = {"classification": "diagnosis", "regression": "age"}
SUPPORTED_TASKS = ("classification", "regression")
# Keys that ClinicaDL 1.6.1 itself writes as null, by task (its regression task manager returns no label code).
# Null anywhere else is refused: ClinicaDL could not have written it.
NULL_BY_TASK = {"regression": {"label_code"}}
# Old key names renamed by ClinicaDL's read_json.
RENAMED = {"model": "architecture", "multi": "multi_network", "minmaxnormalization": "normalize",
           "num_workers": "n_proc"}
# Old MAPS kept preprocessing options at the top level; they now live in preprocessing_dict.
# (ClinicaDL's list misses "prepare_dl" and "custom_suffix" through a missing comma; both are moved here.)
PREPROCESSING_KEYS = ("preprocessing", "use_uncropped_image", "prepare_dl", "custom_suffix", "tracer",
                      "suvr_reference_region", "patch_size", "stride_size", "slice_direction", "slice_mode",
                      "discarded_slices", "roi_list", "uncropped_roi", "roi_custom_suffix",
                      "roi_custom_template", "roi_custom_mask_pattern")


MODEL_FILES = ("model.pth.tar", "model.torchscript.pt")


def read_parameters(maps_json: Path) -> dict[str, Any]:
    """maps.json as ClinicaDL sees it: old names renamed, missing keys defaulted."""
    try:
        text = maps_json.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MapsInterpretError(f"{maps_json} does not exist: INPUT_MAPS_DIRECTORY must be a MAPS folder "
                                 "written by `clinicadl train` (ClinicaDL 1.x), or a ClinicaDL 2.0 output folder "
                                 "(model.json and training/)") from None
    except OSError as error:
        raise MapsInterpretError(f"cannot read {maps_json}: {error.strerror}") from None
    try:
        params = json.loads(text)
    except json.JSONDecodeError as error:
        raise MapsInterpretError(f"{maps_json} is not valid JSON ({error.msg} at line {error.lineno}, "
                                 f"column {error.colno})") from None
    if not isinstance(params, dict):
        raise MapsInterpretError(f"{maps_json} must hold a JSON object, found {type(params).__name__}")

    for old, new in RENAMED.items():
        if old in params:
            params[new] = params.pop(old)
    if "use_cpu" in params:
        params["gpu"] = not params.pop("use_cpu")
    task = params.get("network_task", "classification")
    if not isinstance(task, str):
        raise MapsInterpretError(f"{maps_json}: 'network_task' must be a string, got {task!r:.80}")
    params.setdefault("network_task", task)
    if task not in SUPPORTED_TASKS:  # before the type checks: a reconstruction MAPS has other types
        raise MapsInterpretError(f"{maps_json}: network_task {task!r:.80} is not supported: only classification "
                                 "and regression CNNs can be interpreted")
    for key, value in DEFAULTS.items():
        params.setdefault(key, value)
    if task in TASK_LABEL:
        params.setdefault("label", TASK_LABEL[task])
    if "mode" not in params and isinstance(params.get("preprocessing_dict"), dict):
        params["mode"] = params["preprocessing_dict"].get("mode")
    if "preprocessing_dict" not in params:
        if "mode" not in params:
            raise MapsInterpretError(f"{maps_json} has neither 'preprocessing_dict' nor 'mode': "
                                     "it does not describe a ClinicaDL training")
        prep = {"mode": params["mode"]}
        for key in PREPROCESSING_KEYS:
            if key in params:
                prep[key] = params.pop(key)
        params["preprocessing_dict"] = prep
    prep = params["preprocessing_dict"]
    if not isinstance(prep, dict):
        raise MapsInterpretError(f"{maps_json}: 'preprocessing_dict' must be a JSON object")
    prep.setdefault("mode", params.get("mode"))
    prep.setdefault("use_uncropped_image", False)
    if prep["mode"] != "image":
        prep.setdefault("prepare_dl", False)
    if prep["mode"] == "slice":
        prep.setdefault("slice_mode", "rgb")
    check_types(params, maps_json)
    return params


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_ints(value, lengths=None) -> bool:
    return (isinstance(value, list) and all(_is_int(v) and v > 0 for v in value)
            and (lengths is None or len(value) in lengths))


# What interpret reads, and the type each value must have (a wrong type is a one-line error naming the key).
TOP_LEVEL_TYPES = {
    "architecture": ("a string", lambda v: isinstance(v, str)),
    "multi_network": ("true or false", lambda v: isinstance(v, bool)),
    "input_size": ("a list of 3 or 4 positive integers", lambda v: _positive_ints(v, (3, 4))),
    "output_size": ("a positive integer or null", lambda v: v is None or (_is_int(v) and v > 0)),
    "dropout": ("a number", lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))),
    "label_code": ("an object (null only in a regression MAPS)",
                   lambda v: isinstance(v, dict) and all(isinstance(c, str) and _is_int(n) for c, n in v.items())),
    "label": ("a string or null", lambda v: v is None or isinstance(v, str)),
    "normalize": ("true or false", lambda v: isinstance(v, bool)),
    "size_reduction": ("true or false", lambda v: isinstance(v, bool)),
    "size_reduction_factor": ("an integer", _is_int),
    "diagnoses": ("a list of strings", lambda v: isinstance(v, list) and all(isinstance(d, str) for d in v)),
}
PREPROCESSING_TYPES = {
    "mode": ("one of image, patch, slice, roi", lambda v: v in ("image", "patch", "slice", "roi")),
    "preprocessing": ("a string", lambda v: isinstance(v, str)),
    "file_type": ("an object with a string 'pattern'",
                  lambda v: isinstance(v, dict) and isinstance(v.get("pattern"), str)),
    "prepare_dl": ("true or false", lambda v: isinstance(v, bool)),
    "use_uncropped_image": ("true or false", lambda v: isinstance(v, bool)),
    "patch_size": ("a positive integer", lambda v: _is_int(v) and v > 0),
    "stride_size": ("a positive integer", lambda v: _is_int(v) and v > 0),
    "slice_direction": ("0, 1 or 2", lambda v: _is_int(v) and v in (0, 1, 2)),
    "slice_mode": ("rgb or single", lambda v: v in ("rgb", "single")),
    "discarded_slices": ("an integer or a list of 1 or 2 integers",
                         lambda v: (_is_int(v) and v >= 0) or (isinstance(v, list) and 1 <= len(v) <= 2
                                                               and all(_is_int(x) and x >= 0 for x in v))),
    "num_slices": ("a positive integer or null", lambda v: v is None or (_is_int(v) and v > 0)),
    "roi_list": ("a list of names", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)),
    "uncropped_roi": ("true or false", lambda v: isinstance(v, bool)),
    "roi_custom_template": ("a string or null", lambda v: v is None or isinstance(v, str)),
    "roi_custom_mask_pattern": ("a string or null", lambda v: v is None or isinstance(v, str)),
}


def check_types(params: dict, maps_json: Path) -> None:
    nullable = NULL_BY_TASK.get(params["network_task"], set())
    for table, values, prefix in ((TOP_LEVEL_TYPES, params, ""),
                                  (PREPROCESSING_TYPES, params["preprocessing_dict"], "preprocessing_dict.")):
        for key, (expected, valid) in table.items():
            if key in values and not (values[key] is None and prefix + key in nullable) and not valid(values[key]):
                raise MapsInterpretError(f"{maps_json}: {prefix}{key} must be {expected}, got {values[key]!r:.80}")


@dataclass(frozen=True)
class Maps:
    """A MAPS folder and its parameters. Paths only; nothing here writes."""

    path: Path
    params: dict[str, Any]
    split_name: str  # "split", or "fold" in MAPS written before ClinicaDL 1.2

    @property
    def mode(self) -> str:
        return self.params["preprocessing_dict"]["mode"]

    @property
    def architecture(self) -> str:
        return self.params["architecture"]

    @property
    def input_size(self) -> tuple[int, ...]:
        return tuple(int(v) for v in self.params["input_size"])

    def splits(self) -> list[int]:
        """Every trained split (a `<split_name>-<k>` folder), in numeric order."""
        pattern = re.compile(rf"{self.split_name}-(\d+)")
        found = [int(m.group(1)) for entry in self.path.iterdir()
                 if entry.is_dir() and (m := pattern.fullmatch(entry.name))]
        return sorted(found)

    def split_dir(self, split: int) -> Path:
        return self.path / f"{self.split_name}-{split}"

    def selection_metrics(self, split: int) -> list[str]:
        """Metrics with a model in this split (`best-<metric>/model.pth.tar`, or a TorchScript model)."""
        return sorted(entry.name[len("best-"):] for entry in self.split_dir(split).iterdir()
                      if entry.name.startswith("best-") and any((entry / f).is_file() for f in MODEL_FILES))

    generation = 1  # ClinicaDL 1.x (maps2.Maps2: 2.0)

    def model_dir(self, split: int, metric: str) -> Path:
        return self.split_dir(split) / f"best-{metric}"

    def checkpoint_name(self, metric: str) -> str:
        return f"best-{metric}"

    def model_path(self, split: int, metric: str) -> Path:
        return self.model_dir(split, metric) / "model.pth.tar"

    def results_dir(self, split: int, metric: str, group: str, name: str) -> Path:
        return self.model_dir(split, metric) / group / f"interpret-{name}"

    def interpreted(self, split: int, group: str, name: str) -> dict[str, Path]:
        """The selection metrics of a split that hold interpret-<name> for the group, with that folder."""
        found = {}
        for entry in sorted(self.split_dir(split).iterdir()):
            folder = entry / group / f"interpret-{name}"
            if entry.name.startswith("best-") and folder.is_dir():
                found[entry.name[len("best-"):]] = folder
        return found

    def interpretations(self, group: str) -> list[str]:
        return sorted({folder.name[len("interpret-"):] for folder
                       in self.path.glob(f"{self.split_name}-*/best-*/{group}/interpret-*") if folder.is_dir()})

    def report_path(self, group: str, name: str) -> Path:
        """The report of a run over every split and selection metric of a data group (--save_figures)."""
        return self.path / REPORTS / group / f"interpret-{name}.html"

    def where(self, split: int, metric: str, group: str, name: str) -> str:
        """A job's folder as the logs name it (relative to the MAPS)."""
        return f"{self.split_name}-{split}/best-{metric}/{group}/interpret-{name}"

    @property
    def groups_dir(self) -> Path:
        return self.path / "groups"

    def training_table(self):
        """The sessions the models were trained and validated on (the data-leakage check reads them)."""
        return read_table(self.groups_dir / "train+validation.tsv")


def open_maps(path: Path):
    """A MAPS of ClinicaDL 1.x (maps.json), or a ClinicaDL 2.0 output folder (model.json + training/)."""
    path = Path(path)
    if not path.is_dir():
        raise MapsInterpretError(f"INPUT_MAPS_DIRECTORY {path} is not a folder")
    if not (path / "maps.json").is_file() and is_maps2(path):
        return open_maps2(path)
    params = read_parameters(path / "maps.json")
    split_name = "fold" if any(path.glob("fold-*")) else "split"
    return Maps(path=path, params=params, split_name=split_name)


def sha256(path: Path) -> str:
    """A file's sha256 (a model file's: checkpoints and interpret.json name the model by it)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
