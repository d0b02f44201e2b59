"""The report of a run: every split x selection metric x statistic x subset side by side, the glass brains, the
sanity check, the evaluation (--evaluate), the agreement between the folders' mean maps (the compare command's
measures), provenance.

Read from the published folders only (their figures.json, PNGs, sanity_check.json, interpret.json and mean
maps), so it is the same whether the run went in one go, was resumed, or merged from parts; written at
`Maps.report_path` (reports/<group>/interpret-<NAME>.html in the MAPS or ClinicaDL 2.0 output folder).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .._version import __version__
from ..analysis.agreement import Source, agreement_matrix, agreement_png, dice_column, element_rows
from ..config import DEFAULT_TOP_K
from ..output import figures, provenance, writers
from ..output.figures import STATISTICS
from . import page

log = logging.getLogger("maps_interpret")
MEASURES = ("pearson", "spearman")  # drawn as matrices; the table also has the Dice overlaps


@dataclass
class Folder:
    """One published interpret-<NAME> folder and what the report shows of it."""

    split: int
    metric: str
    path: Path
    label: str
    figures: list[dict] = field(default_factory=list)
    record: dict = field(default_factory=dict)  # interpret.json
    sanity: Optional[dict] = None  # sanity_check.json
    evaluation: Optional[dict] = None  # evaluation.json (--evaluate)

    def read(self) -> "Folder":
        self.figures = _json(self.path / figures.FIGURES_FILE, {}).get("figures", [])
        self.record = _json(self.path / provenance.FILE, {})
        self.sanity = _json(self.path / "sanity_check.json", None)
        self.evaluation = _json(self.path / "evaluation.json", None)
        return self


def _json(path: Path, default):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def folders(plan) -> list[Folder]:
    return [Folder(job.split, job.metric, job.output_dir, f"{plan.maps.split_name}-{job.split} best-{job.metric}").read()
            for data_pass in plan.passes for job in data_pass.jobs if job.output_dir.is_dir()]


def _caption(folder: Folder, entry: dict) -> str:
    where = ", ".join(f"{a}={v:.1f}" for a, v in zip("xyz", entry.get("peak", ())))
    unit = "mm" if entry.get("peak_unit") == "mm" else "voxel indices"
    return (f"<b>{page.escape(folder.label)}</b>: {page.escape(entry['statistic'])}, {page.escape(entry['subset'])}"
            f" (n = {entry.get('n', '?')}); peak at {page.escape(where)} ({unit})")


def maps_section(found: list[Folder]) -> str:
    """Per statistic and subset, one row of figures: every split and selection metric side by side."""
    subsets = list(dict.fromkeys(e["subset"] for f in found for e in f.figures))
    blocks = []
    for statistic in STATISTICS:
        for subset in subsets:
            cells = [page.figure((f.path / e["file"]).read_bytes(), _caption(f, e), e["file"])
                     for f in found for e in f.figures
                     if e["statistic"] == statistic and e["subset"] == subset and (f.path / e["file"]).is_file()]
            if cells:
                blocks.append(f"<h3>{page.escape(statistic)} map, {page.escape(subset)}</h3>" + page.grid(cells))
    return "".join(blocks) or "<p>No map was drawn.</p>"


def glass_section(found: list[Folder]) -> str:
    cells = [page.figure((f.path / e["glass_brain"]).read_bytes(), _caption(f, e), e["glass_brain"])
             for f in found for e in f.figures if e.get("glass_brain") and (f.path / e["glass_brain"]).is_file()]
    if not cells:
        return ("<p>No glass brain: the maps have no world space (no source NIfTI image beside the CAPS tensors), "
                "and a glass brain shows MNI space.</p>")
    return page.grid(cells)


def sanity_section(found: list[Folder]) -> Optional[str]:
    checked = [f for f in found if f.sanity is not None]
    if not checked:
        return None
    rows, cells = [], []
    for f in checked:
        verdict = f.sanity.get("verdict", "?")
        css = "pass" if verdict == "passes" else "fail" if verdict == "fails" else ""
        rows.append([page.escape(f.label), f'<span class="{css}">{page.escape(verdict)}</span>',
                     page.escape(f.sanity.get("layers", "?")), page.escape(f.sanity.get("n_sessions", "?"))])
        png = f.path / "sanity_check.png"
        if png.is_file():
            cells.append(page.figure(png.read_bytes(), f"<b>{page.escape(f.label)}</b>: {page.escape(verdict)}",
                                     "sanity_check.png"))
    threshold = checked[0].sanity.get("threshold", "?")
    return (f'<p class="note">Cascading randomisation (Adebayo et al. 2018): the model\'s layers re-initialised from '
            f"the output down; a map that still ranks the voxels as the trained model's (Spearman of |map| above "
            f"{page.escape(threshold)} once every layer is random) does not depend on what was learned.</p>"
            + page.table(["folder", "verdict", "layers randomised", "sessions"], rows) + page.grid(cells))


def evaluation_section(found: list[Folder]) -> Optional[str]:
    """--evaluate: each folder's mean curves, and every measure's mean ± standard deviation over the maps, the
    folders side by side."""
    evaluated = [f for f in found if f.evaluation is not None]
    if not evaluated:
        return None
    measures = list(dict.fromkeys(m for f in evaluated for m in f.evaluation.get("summary", {})))

    def cell(entry: Optional[dict]) -> str:
        if not entry or entry.get("mean") is None:
            return "n/a"
        std = entry.get("std")
        return f"{entry['mean']:.3f}" + ("" if std is None else f" ± {std:.3f}") + f" (n = {entry['n']})"

    rows = [[page.escape(m), *(page.escape(cell(f.evaluation["summary"].get(m))) for f in evaluated)]
            for m in measures]
    column = evaluated[0].evaluation.get("group_by")  # --group_by: each subset's rows after the group's
    for subset in dict.fromkeys(name for f in evaluated for name in f.evaluation.get("subsets") or {}):
        rows += [[page.escape(f"{m} ({column} {subset})"),
                  *(page.escape(cell((f.evaluation.get("subsets") or {}).get(subset, {}).get(m))) for f in evaluated)]
                 for m in measures]
    first = evaluated[0].evaluation
    cells = [page.figure((f.path / "evaluation.png").read_bytes(), f"<b>{page.escape(f.label)}</b>",
                         "evaluation.png") for f in evaluated if (f.path / "evaluation.png").is_file()]
    mask = "" if not first.get("mask") else f"; mask <code>{page.escape(first['mask'])}</code>"
    return (f'<p class="note">Deletion: the voxels ranked first by the map are removed ({page.escape(first.get("replacement"))}'
            f"), {page.escape(first.get('steps'))} steps; the area under the target's probability is lower for a "
            f"more faithful map, the random order is the baseline. Insertion: put back first, higher is better"
            f"{mask}.</p>" + page.grid(cells)
            + page.table(["measure", *(f.label for f in evaluated)], rows))


def agreement_section(plan, found: list[Folder]) -> Optional[str]:
    """Pearson, Spearman and the Dice overlap of the top-k% voxels between every pair of folders' mean maps
    (the whole group's), as `maps-interpret-compare` computes them."""
    import torch

    pairs = []
    for f in found:
        entry = next((e for e in f.figures if e["statistic"] == "mean" and e["subset"] == "all"), None)
        if entry is not None:
            pairs.append((Source(f.split, f.metric, f.path, plan.maps.split_name),
                          torch.load(f.path / entry["map"], map_location="cpu", weights_only=True)))
    if len(pairs) < 2:
        return None
    sources, maps_ = [s for s, _ in pairs], [m for _, m in pairs]
    rows = element_rows(sources, maps_, 0, plan.maps.mode, list(DEFAULT_TOP_K))
    matrices = {m: agreement_matrix(sources, rows, 0, plan.maps.mode, m) for m in MEASURES}
    png = agreement_png([s.label for s in sources], matrices, "Agreement of the mean maps")
    dice = [dice_column(k) for k in DEFAULT_TOP_K]
    table = page.table(["a", "b", *MEASURES, *dice], [
        [f"{plan.maps.split_name}-{r['split_a']}/{r['selection_metric_a']}",
         f"{plan.maps.split_name}-{r['split_b']}/{r['selection_metric_b']}",
         *(f"{r[m]:.3f}" for m in (*MEASURES, *dice))] for r in rows])
    return (page.figure(png, "Pearson's r and Spearman's rank correlation between the mean maps", "agreement",
                        natural=True)
            + table + '<p class="note">dice_topK: overlap of the K% voxels of largest |value|. For every element '
            "and subset, and across splits, run <code>maps-interpret-compare</code>.</p>")


def provenance_section(plan, found: list[Folder], report: Path) -> str:
    first = found[0].record if found else {}
    method = first.get("method", {})
    rows = [("MAPS", page.escape(plan.maps.path)), ("ClinicaDL generation", page.escape(plan.maps.generation)),
            ("data group", page.escape(plan.output.data_group)), ("method", page.escape(json.dumps(method))),
            ("mode", page.escape(first.get("mode", plan.maps.mode))),
            ("sessions", page.escape(first.get("n_sessions", "?"))),
            ("maps-interpret", page.escape(first.get("tool", {}).get("version", __version__))),
            ("torch", page.escape(first.get("torch", "?"))), ("device", page.escape(json.dumps(first.get("device"))))]
    table = page.table(None, rows)
    links = page.table(["folder", "model", "written", "files"], [
        [page.escape(f.label), page.escape(f.record.get("model", {}).get("file", "?")),
         page.escape(f.record.get("written", "?")),
         " ".join(f'<a href="{page.escape(_relative(f.path / name, report))}">{name}</a>'
                  for name in (figures.INDEX, provenance.FILE) if (f.path / name).is_file())] for f in found])
    return table + "<h3>Folders</h3>" + links


def _relative(path: Path, report: Path) -> str:
    return Path(os.path.relpath(path, report.parent)).as_posix()


def write_report(plan) -> Path:
    """The run's report at its place (replaced if there): returns its path."""
    report = plan.maps.report_path(plan.output.data_group, plan.output.name)
    found = folders(plan)
    output = plan.output
    sections = [("maps", "Maps", maps_section(found)), ("glass", "Glass brains", glass_section(found))]  # always
    for anchor, heading, content in (("sanity", "Sanity check", sanity_section(found)),
                                     ("evaluation", "Evaluation", evaluation_section(found)),
                                     ("agreement", "Agreement", agreement_section(plan, found))):
        if content is not None:
            sections.append((anchor, heading, content))
    sections.append(("provenance", "Provenance", provenance_section(plan, found, report)))
    first = found[0].record if found else {}
    subtitle = page.escape(f"{output.method} maps of data group {output.data_group} ({first.get('n_sessions', '?')} "
                           f"sessions), {len(found)} model(s); {plan.maps.path}")
    report.parent.mkdir(parents=True, exist_ok=True)
    writers.atomic_write_text(report, page.document(f"{output.name}: {output.method}, {output.data_group}",
                                                    subtitle, sections))
    log.info("report: %s", report)
    return report
