"""`maps-interpret-compare`: how much the models of a MAPS agree on one interpretation.

The maps of `interpret-<NAME>` written for every (split, selection metric) of a data group are compared two by
two, element by element: Pearson, Spearman and the Dice overlap of the top-k% voxels by magnitude
(agreement.py). Per selection metric, the element-wise mean and standard deviation over the splits are written
as maps. Everything goes to a temporary sibling of the output folder, moved into place only when complete.
The options are config.CompareConfig.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..config import CompareConfig, record, validate_compare
from ..errors import MapsInterpretError, first_line
from ..maps import open_maps as _open_maps
from .agreement import (Source, across_splits, agreement_matrix, draw_agreement, element_rows, summary_rows,
                        write_across_splits, write_tables)

log = logging.getLogger(__name__)
COMPARE_DIRNAME = "compare"
FILE = "compare.json"


@dataclass
class CompareSummary:
    output: Path
    sources: list[str]
    element_ids: list[int]
    n_pairs: int
    rows: list[dict]  # as in agreement.tsv, with numbers unformatted


# -- finding the maps ---------------------------------------------------------------------------------------------

def open_maps(path: Path):
    if not Path(path).is_dir():
        raise MapsInterpretError(f"INPUT_MAPS_DIRECTORY {path} is not a folder: give the MAPS folder that holds "
                                 "maps.json and the split-<k>/ folders (ClinicaDL 1.x) or model.json and "
                                 "training/ (2.0)")
    return _open_maps(path)


def find_sources(maps, config: CompareConfig) -> list[Source]:
    """The folders to compare, ordered by selection metric then split (the figure shows one block per metric)."""
    # A model file is not required: comparing needs only the maps.
    available = {split: maps.interpreted(split, config.data_group, config.name) for split in maps.splits()}
    available = {split: metrics for split, metrics in available.items() if metrics}
    where = f"{maps.path}/{maps.where('*', '*', config.data_group, config.name)}/"
    if not available:
        raise MapsInterpretError(
            f"no interpretation named {config.name!r} of data group {config.data_group!r} in {maps.path} (looked for "
            f"{where}){_known_names(maps, config.data_group)}; run maps-interpret {maps.path} {config.data_group} "
            f"{config.name} first")
    for split in config.splits:
        if split not in available:
            raise MapsInterpretError(
                f"--splits {split}: no {maps.where(split, '*', config.data_group, config.name)}/ in {maps.path} "
                f"(splits that do: {', '.join(map(str, sorted(available)))}); remove --splits {split}")
    every_metric = sorted({metric for metrics in available.values() for metric in metrics})
    for metric in config.selection_metrics:
        if metric not in every_metric:
            raise MapsInterpretError(
                f"--selection_metrics {metric}: no best-{metric}/{config.data_group}/interpret-{config.name}/ in any "
                f"split of {maps.path} (metrics that have it: {', '.join(every_metric)}); remove --selection_metrics "
                f"{metric} or interpret that model first")
    splits = config.splits or sorted(available)
    metrics = config.selection_metrics or every_metric
    return [Source(split, metric, available[split][metric], maps.split_name)
            for metric in metrics for split in sorted(splits) if metric in available.get(split, {})]


def _known_names(maps, group: str) -> str:
    names = maps.interpretations(group)
    return f" (interpretations of {group}: {', '.join(names)})" if names else f" (data group {group!r} has none)"


def element_files(source: Source, statistic: str, mode: str) -> dict[int, Path]:
    """`<statistic>_<mode>-<id>_map.pt` of a folder by element id. The anchored pattern leaves out subset files
    (`mean_<COLUMN>-<value>_<mode>-<id>_map.pt`) and individual maps."""
    pattern = re.compile(rf"{re.escape(statistic)}_{mode}-(\d+)_map\.pt")
    files = {int(m.group(1)): path for path in source.folder.iterdir() if (m := pattern.fullmatch(path.name))}
    if not files:
        hint = (" (absmean and std maps are written by maps-interpret --statistics)" if statistic != "mean"
                else " (is the MAPS mode right? maps.json says " + mode + ")")
        raise MapsInterpretError(f"{source.folder} holds no {statistic}_{mode}-<id>_map.pt{hint}")
    return dict(sorted(files.items()))


def common_elements(sources: list[Source], files: list[dict[int, Path]], statistic: str, mode: str) -> list[int]:
    """The element ids, which every folder must hold alike: a model without some element cannot be compared."""
    reference = files[0]
    for source, own in zip(sources[1:], files[1:]):
        missing = sorted(set(reference) - set(own))
        extra = sorted(set(own) - set(reference))
        if missing or extra:
            lacking, holder, element = ((source, sources[0], missing[0]) if missing else (sources[0], source, extra[0]))
            raise MapsInterpretError(
                f"{lacking.folder} has no {statistic}_{mode}-{element}_map.pt but {holder.folder} has one: the "
                "folders hold different elements; interpret both models with the same options (or choose the "
                "folders with --splits/--selection_metrics)")
    return list(reference)


def load_map(path: Path):
    """A map written by maps-interpret (or ClinicaDL): a tensor, read without running code from the file."""
    import torch

    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch reports unpickling and truncation in many exception types
        raise MapsInterpretError(f"cannot read {path}: {first_line(error)}; write it again (maps-interpret ... "
                                 "--overwrite_name)") from None
    if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.numel() < 2:
        raise MapsInterpretError(f"{path} does not hold a map (a floating-point tensor of at least 2 voxels); "
                                 "write it again (maps-interpret ... --overwrite_name)")
    return value


def load_element(files: list[dict[int, Path]], element: int) -> list:
    """The maps of one element, one per folder, all of one shape."""
    maps_ = [load_map(own[element]) for own in files]
    for own, map_ in zip(files[1:], maps_[1:]):
        if map_.shape != maps_[0].shape:
            raise MapsInterpretError(
                f"{own[element]} has shape {tuple(map_.shape)} but {files[0][element]} has {tuple(maps_[0].shape)}: "
                "maps of different shapes cannot be compared; were both made from the same MAPS and method?")
    return maps_



def default_output(maps, config: CompareConfig) -> Path:
    """One folder per statistic, so that comparing mean and std maps of the same NAME keeps both results."""
    return maps.path / COMPARE_DIRNAME / config.data_group / f"interpret-{config.name}" / config.statistic



def read_provenance(source: Source) -> Optional[dict]:
    """What interpret.json says about a folder's maps (None for folders that ClinicaDL wrote)."""
    try:
        record = json.loads((source.folder / "interpret.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    return {key: record.get(key) for key in ("method", "model", "tool", "n_sessions") if key in record}


def describe(config: CompareConfig, maps, sources: list[Source], element_ids: list[int], folder: Path,
             without_std: list[str]) -> dict:
    import torch

    from .._version import __version__

    return {
        "tool": {"name": "maps-interpret-compare", "version": __version__},
        "torch": torch.__version__,
        "options": record(config),
        "maps": str(maps.path), "data_group": config.data_group, "name": config.name,
        "statistic": config.statistic, "mode": maps.mode, "top_k_percent": config.top_k,
        "compared": [{"split": s.split, "selection_metric": s.metric, "folder": str(s.folder),
                      "interpret": read_provenance(s)} for s in sources],
        "element_ids": element_ids,
        # A metric with one split has a mean (its own map) but no standard deviation across splits.
        "across_splits_std_not_written": without_std,
        "outputs": sorted(p.name for p in folder.iterdir()),
        "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def check_provenance(sources: list[Source]) -> None:
    """Warnings that change how the numbers read: folders made by different methods, and folders of the same
    model file (a checkpoint best for two metrics), whose agreement is 1 by construction."""
    methods, models = {}, {}
    for source in sources:
        record = read_provenance(source) or {}
        method = (record.get("method") or {}).get("name")
        if method is not None:
            methods.setdefault(method, source.label)
        digest = (record.get("model") or {}).get("sha256")
        if digest is not None:
            models.setdefault(digest, []).append(source.label)
    if len(methods) > 1:
        log.warning("the folders were made by different methods (%s): their agreement mixes methods and models",
                    ", ".join(f"{m} in {label}" for m, label in methods.items()))
    for labels in models.values():
        if len(labels) > 1:
            log.info("%s hold maps of the same model file (same sha256): they agree by construction",
                     " and ".join(labels))


# -- the command ----------------------------------------------------------------------------------------------------

def plan_output(maps, config: CompareConfig, sources: list[Source]) -> Path:
    output = config.output or default_output(maps, config)
    # -o replaces the output folder whole: it must never be, hold or lie inside the maps being compared.
    resolved = output.resolve()
    for source in sources:
        folder = source.folder.resolve()
        if resolved == folder or resolved in folder.parents or folder in resolved.parents:
            raise MapsInterpretError(f"--output {output} would overlap the compared folder {source.folder}: choose "
                                     "a folder outside the split-<k>/best-<metric>/ trees")
    if output.exists() and not config.overwrite:
        raise MapsInterpretError(f"{output} exists: add -o/--overwrite to replace it, or choose another --output")
    if output.exists() and not output.is_dir():
        raise MapsInterpretError(f"{output} exists and is not a folder: choose another --output")
    return output


def run(config: CompareConfig) -> CompareSummary:
    """Compares the maps of interpret-<NAME> between the models; returns what was written where. Folders, element
    ids and the output are checked before anything is written; maps are read one element at a time (memory), so
    one that cannot be read or differs in shape stops the run later, with nothing published."""
    validate_compare(config)
    maps = open_maps(config.input_maps_directory)
    sources = find_sources(maps, config)
    if len(sources) < 2:
        raise MapsInterpretError(
            f"only one folder to compare ({sources[0].folder}): agreement needs at least 2 models; interpret "
            "another split or selection metric of the MAPS, or widen --splits/--selection_metrics")
    mode = maps.mode
    files = [element_files(source, config.statistic, mode) for source in sources]
    element_ids = common_elements(sources, files, config.statistic, mode)
    figure_element = element_ids[0] if config.figure_element is None else config.figure_element
    if figure_element not in element_ids:
        raise MapsInterpretError(f"--figure_element {figure_element}: the maps have {mode}_id "
                                 f"{', '.join(map(str, element_ids))}; choose one of them")
    output = plan_output(maps, config, sources)
    check_provenance(sources)
    log.info("comparing %d folders (%s), %d element(s) each", len(sources), ", ".join(s.label for s in sources),
             len(element_ids))
    output.parent.mkdir(parents=True, exist_ok=True)
    # A hidden sibling (same file system: the final rename is atomic), made with mkdir so that it gets the
    # umask's permissions, not mkdtemp's 0700.
    staged = output.with_name(f".{output.name}.compare-{os.getpid()}-{time.monotonic_ns()}")
    staged.mkdir()
    try:
        rows, without_std = _compute(staged, sources, files, element_ids, mode, config.top_k)
        _finish(staged, config, maps, sources, element_ids, rows, without_std, figure_element)
        from ..output.staging import Staging

        Staging.publish(staged, output, replace=config.overwrite)
    except FileExistsError as error:
        raise MapsInterpretError(f"{output} appeared during the run and was left untouched; rerun with "
                                 "-o/--overwrite to replace it") from error
    finally:
        shutil.rmtree(staged, ignore_errors=True)  # gone already once published
    log.info("agreement of %d pairs x %d element(s) written to %s", len(sources) * (len(sources) - 1) // 2,
             len(element_ids), output)
    return CompareSummary(output=output, sources=[s.label for s in sources], element_ids=element_ids,
                          n_pairs=len(sources) * (len(sources) - 1) // 2, rows=rows)


def _compute(folder: Path, sources, files, element_ids, mode: str, top_k) -> tuple[list[dict], list[str]]:
    """Element by element (only one element's maps in memory at a time): the pairwise rows and the maps across
    splits. Returns the rows, ordered by pair then element, and the metrics with a single split."""
    rows = []
    for element in element_ids:
        maps_ = load_element(files, element)
        rows.extend(element_rows(sources, maps_, element, mode, top_k))
        for metric, (mean, std) in across_splits(sources, maps_).items():
            write_across_splits(folder, metric, element, mode, mean, std)
    order = {(s.split, s.metric): i for i, s in enumerate(sources)}
    rows.sort(key=lambda r: (order[(r["split_a"], r["selection_metric_a"])],
                             order[(r["split_b"], r["selection_metric_b"])], r[f"{mode}_id"]))
    counts = {metric: sum(s.metric == metric for s in sources) for metric in dict.fromkeys(s.metric for s in sources)}
    without_std = [metric for metric, n in counts.items() if n == 1]
    for metric in without_std:
        log.warning("best-%s was compared in one split only: its across-splits mean is that split's map, and no "
                    "standard deviation is written", metric)
    return rows, without_std


def _finish(folder: Path, config: CompareConfig, maps, sources, element_ids, rows, without_std,
            figure_element: int) -> None:
    mode = maps.mode
    write_tables(folder, mode, config.top_k, rows, summary_rows(sources, rows, config.top_k))
    matrices = {m: agreement_matrix(sources, rows, figure_element, mode, m) for m in ("spearman", "pearson")}
    title = (f"Agreement between models: interpret-{config.name} on {config.data_group} "
             f"({config.statistic} maps, {mode}-{figure_element})")
    draw_agreement(folder / "agreement.png", [s.label for s in sources], matrices, title)
    from ..output.writers import write_json

    write_json(folder / FILE, describe(config, maps, sources, element_ids, folder, without_std))

