"""Reading a ClinicaDL 2.0 output folder (recognised by `model.json` beside `training/`): its network config,
splits, checkpoints, data groups (`dataset.json`) and where maps-interpret writes into it.

The plan shared with 1.6.1 MAPS reads a few 1.6.1 parameters (`params`); they are derived here once, from what
2.0 records: the task from the loss, the outputs from the network config, the extraction mode from the
training group's `dataset.json`. Nothing here writes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .errors import MapsInterpretError
from .tables import read_table

# 2.0's losses, by the task they train (the task only decides which --target_node/--group_by make sense).
LOSS_TASKS = {
    "BCEWithLogitsLoss": "classification", "BCELoss": "classification", "CrossEntropyLoss": "classification",
    "NLLLoss": "classification", "MultiLabelSoftMarginLoss": "classification",
    "MSELoss": "regression", "L1Loss": "regression", "SmoothL1Loss": "regression", "HuberLoss": "regression",
}
TRAINING_GROUPS = ("train", "validation")
FINAL = "final"  # the checkpoint at the end of training (models/final/), beside best-<metric>
MODEL_FILE = "model.pt"
TORCHSCRIPT_FILE = "model.torchscript.pt"  # a network 2.0 stored by class name only, traced by the user
RESULTS = "results"
MARKER = "maps_interpret.json"  # in a test group folder that maps-interpret wrote (so it may redefine it)
REPORTS = "reports"  # <output>/reports/<group>/interpret-<NAME>.html: the runs' reports (both generations)


def is_maps2(path: Path) -> bool:
    return (path / "model.json").is_file() and (path / "training").is_dir()


def read_json(path: Path, what: str) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MapsInterpretError(f"{path} does not exist: {what}") from None
    except OSError as error:
        raise MapsInterpretError(f"cannot read {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise MapsInterpretError(f"{path} is not valid JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(value, dict):
        raise MapsInterpretError(f"{path} must hold a JSON object, found {type(value).__name__}")
    return value


def plain(value: Any) -> str:
    """A dataset.json cell as the TSV text 1.6.1 rows hold: 1.0 -> "1" (labels, ages that are whole), None -> ""."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@dataclass(frozen=True)
class GroupRecord:
    """A data group as 2.0 stores it: its rows, its CAPS (`bids.path`, as recorded), its transforms."""

    folder: Path
    caps_directory: str
    columns: tuple[str, ...]
    rows: tuple[dict[str, str], ...]
    dataset: dict  # the whole dataset.json (transforms, file_type)


def read_group(folder: Path) -> GroupRecord:
    path = folder / "dataset.json"
    dataset = read_json(path, "the data group has no ClinicaDL 2.0 dataset description")
    data, bids = dataset.get("data"), dataset.get("bids")
    if not isinstance(data, dict) or "participant_id" not in data or "session_id" not in data:
        raise MapsInterpretError(f"{path}: 'data' must hold the rows (participant_id, session_id, ...), as "
                                 "ClinicaDL 2.0 writes it")
    if not isinstance(bids, dict) or not isinstance(bids.get("path"), str):
        raise MapsInterpretError(f"{path}: 'bids.path' (the CAPS folder) is missing")
    columns = tuple(c for c in data if c != "n_samples")
    try:
        keys = sorted(data["participant_id"], key=int)
        rows = tuple({c: plain(data[c].get(k)) for c in columns} for k in keys)
    except (AttributeError, TypeError, ValueError):
        raise MapsInterpretError(f"{path}: 'data' must map each column to its rows ({{\"0\": ..., \"1\": ...}})") from None
    return GroupRecord(folder, bids["path"], columns, rows, dataset)


@dataclass(frozen=True)
class Maps2:
    """A ClinicaDL 2.0 output folder. Paths and parameters only; nothing here writes."""

    path: Path
    model: dict  # model.json
    params: dict[str, Any]  # what the shared plan reads, derived from model.json and the training dataset.json
    split_name: str = "split"
    generation: int = 2

    @property
    def network_config(self) -> dict:
        return self.model["network"]

    @property
    def mode(self) -> str:
        return self.params["preprocessing_dict"]["mode"]

    @property
    def architecture(self) -> str:
        return str(self.network_config.get("name_"))

    @property
    def input_size(self) -> tuple[int, ...]:
        """(C, *spatial) of the network's input when model.json records it, else () (known from the images)."""
        return tuple(int(v) for v in self.params["input_size"] or ())

    def splits(self) -> list[int]:
        found = [int(m.group(1)) for entry in (self.path / "training").iterdir()
                 if entry.is_dir() and (m := re.fullmatch(r"split-(\d+)", entry.name))
                 and (entry / "models").is_dir()]
        return sorted(found)

    def split_dir(self, split: int) -> Path:
        return self.path / "training" / f"split-{split}"

    def model_dir(self, split: int, metric: str) -> Path:
        models = self.split_dir(split) / "models"
        return models / FINAL if metric == FINAL else models / "best_models" / f"best-{metric}"

    def checkpoint_name(self, metric: str) -> str:
        return FINAL if metric == FINAL else f"best-{metric}"

    def selection_metrics(self, split: int) -> list[str]:
        """Checkpoints with a model in this split: best-<metric> folders, and `final`."""
        best = self.split_dir(split) / "models" / "best_models"
        found = sorted(entry.name[len("best-"):] for entry in best.iterdir()
                       if entry.name.startswith("best-") and self._has_model(entry)) if best.is_dir() else []
        return found + ([FINAL] if self._has_model(self.model_dir(split, FINAL)) else [])

    @staticmethod
    def _has_model(folder: Path) -> bool:
        return (folder / MODEL_FILE).is_file() or (folder / TORCHSCRIPT_FILE).is_file()

    def model_path(self, split: int, metric: str) -> Path:
        return self.model_dir(split, metric) / MODEL_FILE

    # Data groups: train/validation are the split's training data, any other name a test group.
    def group_dir(self, name: str, split: Optional[int] = None) -> Path:
        if name in TRAINING_GROUPS:
            return self.path / "training" / "data" / name / f"split-{0 if split is None else split}"
        return self.path / "test" / f"group-{name}"

    def group_exists(self, name: str) -> bool:
        return (self.group_dir(name) / "dataset.json").is_file()

    def written_by_us(self, name: str) -> bool:
        return (self.group_dir(name) / MARKER).is_file()

    def results_root(self, group: str, split: int) -> Path:
        """Where the results of `group` for `split` go: beside 2.0's own test results for a test group
        (`test/group-<g>/results/split-<k>/`), in the split's data folder for train/validation."""
        if group in TRAINING_GROUPS:
            return self.group_dir(group, split) / RESULTS
        return self.group_dir(group) / RESULTS / f"split-{split}"

    def results_dir(self, split: int, metric: str, group: str, name: str) -> Path:
        return self.results_root(group, split) / self.checkpoint_name(metric) / f"interpret-{name}"

    def interpreted(self, split: int, group: str, name: str) -> dict[str, Path]:
        """The checkpoints of a split that hold interpret-<name> for the group, by selection metric."""
        root = self.results_root(group, split)
        found = {}
        if root.is_dir():
            for entry in sorted(root.iterdir()):
                metric = FINAL if entry.name == FINAL else entry.name[len("best-"):]
                if (entry.name == FINAL or entry.name.startswith("best-")) and (entry / f"interpret-{name}").is_dir():
                    found[metric] = entry / f"interpret-{name}"
        return found

    def interpretations(self, group: str) -> list[str]:
        names = {folder.name[len("interpret-"):] for split in self.splits()
                 for folder in self.results_root(group, split).glob("*/interpret-*") if folder.is_dir()}
        return sorted(names)

    def report_path(self, group: str, name: str) -> Path:
        """The report of a run over every split and selection metric of a data group (--save_figures)."""
        return self.path / REPORTS / group / f"interpret-{name}.html"

    def where(self, split: int, metric: str, group: str, name: str) -> str:
        """A job's folder as the logs name it (relative to the output folder)."""
        return str(self.results_dir(split, metric, group, name).relative_to(self.path))

    def training_table(self):
        """The sessions the models were trained and validated on (the data-leakage check reads them)."""
        return read_table(self.path / "training" / "data" / "data.tsv")


def _task(model: dict, path: Path) -> str:
    loss = model.get("loss")
    name = loss.get("name_") if isinstance(loss, dict) else None
    if name not in LOSS_TASKS:
        raise MapsInterpretError(f"{path}: loss {name!r} is not one of a classifier's or a regressor's "
                                 f"({', '.join(sorted(LOSS_TASKS))}): only such networks can be interpreted")
    return LOSS_TASKS[name]


def open_maps2(path: Path) -> Maps2:
    """A 2.0 output folder, checked: a supervised model of a known task with a network config."""
    model_json = path / "model.json"
    model = read_json(model_json, "not a ClinicaDL 2.0 output folder")
    if model.get("name_") != "SupervisedModel":
        raise MapsInterpretError(f"{model_json}: model {model.get('name_')!r} is not a SupervisedModel: only "
                                 "classifiers and regressors trained with ClinicaDL 2.0 can be interpreted")
    network = model.get("network")
    if not isinstance(network, dict) or not isinstance(network.get("name_"), str):
        raise MapsInterpretError(f"{model_json}: 'network' must be the network's config (with its 'name_')")
    task = _task(model, model_json)
    outputs = network.get("num_outputs")
    if not (isinstance(outputs, int) and outputs > 0):
        raise MapsInterpretError(f"{model_json}: network.num_outputs must be a positive integer, got {outputs!r}")
    shape = network.get("in_shape")  # CNN, ViT record it; ResNet, DenseNet take any size (from the images then)
    if shape is not None and not (isinstance(shape, list) and len(shape) in (3, 4)
                                  and all(isinstance(v, int) and v > 0 for v in shape)):
        raise MapsInterpretError(f"{model_json}: network.in_shape must be (C, H, W) or (C, D, H, W) positive "
                                 f"integers, got {shape!r:.80}")
    maps = Maps2(path=path, model=model, params={})
    train = maps.group_dir("train", next(iter(maps.splits()), 0))
    extraction = {"name_": "Image"}
    if (train / "dataset.json").is_file():
        extraction = read_group(train).dataset.get("transforms", {}).get("extraction") or extraction
    mode = {"Image": "image", "Patch": "patch", "Slice": "slice"}.get(extraction.get("name_"), "image")
    # label_code: only a network with several output nodes takes --target_node label (the label column holds
    # each session's node, as 2.0 leaves the encoding to the user); a single logit or value has node 0 only.
    label_code = ({str(k): k for k in range(outputs)} if task == "classification" and outputs > 1 else None)
    maps.params.update({
        "network_task": task, "output_size": outputs, "input_size": shape, "label": model.get("label_key")
        or "label", "label_code": label_code, "architecture": network["name_"], "multi_network": False,
        "normalize": False, "size_reduction": False, "diagnoses": [], "multi_cohort": False,
        "preprocessing_dict": {"mode": mode, "preprocessing": "clinicadl2", "extraction": extraction},
    })
    return maps
