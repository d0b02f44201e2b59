"""--evaluate's files in each interpret-<NAME> folder, from the rows the run kept (analysis/evaluation.py):

- `evaluation.tsv`: one row per map (session and element): the target node, each curve's area under the
  probability (`<curve>_auc`) and under the raw output (`<curve>_auc_output`), and with a mask the localisation
  measures and the mask's share of the element (`mask_fraction`: what relevance_mass is by chance);
- `evaluation_summary.tsv`: per measure, the number of maps, mean and sample standard deviation;
- `evaluation_curves.tsv`: per curve and step, the share of voxels removed (or put back) and the mean and standard
  deviation of the probability over the maps (of the output for a regression, which has no probability);
- with --group_by, evaluation.tsv names each map's subset (a column named like the option's) and the summary and
  the curves come for the whole group (`subset` "all") and for each subset;
- `evaluation.png`: those mean curves (deletion left, insertion right) with a band of one standard deviation;
- `evaluation.json`: the settings (steps, orders, replacement, mask, its sha256 and --evaluation_roi's name) and
  the summaries.

Curves are named `<deletion|insertion>_<order>[_lerf]`. Rows are sorted by session (the group's order) and
element: the same files whatever the ranks, parts or interruptions that made them.
"""

from __future__ import annotations

import hashlib
import io
import math
from pathlib import Path
from typing import Optional

import torch

from ..settings import EvaluationSettings, curve_name, step_counts
from . import writers

MEASURES = ("relevance_mass", "rank_accuracy", "auroc", "pointing_game", "mask_fraction")
TSV, SUMMARY, CURVES, PNG, JSON = ("evaluation.tsv", "evaluation_summary.tsv", "evaluation_curves.tsv",
                                   "evaluation.png", "evaluation.json")


def has_probability(maps) -> bool:
    """Whether the network's target output has a probability (a classifier's); a regression's curves are its
    outputs only."""
    return maps.params.get("network_task") != "regression"


def auc(values: list[float], fractions: torch.Tensor) -> float:
    return float(torch.trapezoid(torch.tensor(values, dtype=torch.float64), fractions))


def fractions_of(settings: EvaluationSettings, n_voxels: Optional[int] = None) -> torch.Tensor:
    """The share of voxels at each step: whole voxels (the curves' own), or k/K for the table's header."""
    if n_voxels is None:
        return torch.arange(settings.steps + 1, dtype=torch.float64) / settings.steps
    return torch.tensor(step_counts(n_voxels, settings.steps), dtype=torch.float64) / n_voxels  # the curves'


def _stats(values: list[float]) -> tuple[int, float, float]:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return 0, math.nan, math.nan
    mean = sum(finite) / len(finite)
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1)) if len(finite) > 1 else math.nan
    return len(finite), mean, std


def _number(value) -> str:
    return "nan" if isinstance(value, float) and math.isnan(value) else (f"{value:.6f}" if isinstance(value, float)
                                                                       else str(value))


def sorted_rows(rows: list[dict], sessions: list) -> list[dict]:
    order = {(s.participant_id, s.session_id): i for i, s in enumerate(sessions)}
    return sorted(rows, key=lambda r: (order.get((r["participant_id"], r["session_id"]), len(order)), r["element"]))


def write_evaluation(plan, data_pass, folder: Path, rows: list[dict], n_voxels: int) -> dict:
    """The files above for one model's rows; `n_voxels`: the voxels of one map (the curves' fractions).
    Returns the summary of all the maps (measure -> n, mean, std)."""
    from .results import subset_name

    settings: EvaluationSettings = plan.evaluation
    mode, column = plan.maps.mode, plan.output.group_by
    rows = sorted_rows(rows, data_pass.sessions)
    names = [curve_name(*c) for c in settings.curves]
    measures = [m for m in MEASURES if rows and m in rows[0]]
    table, columns = [], ["participant_id", "session_id", f"{mode}_id", "target"] + ([column] if column else [])
    firsts = len(columns)
    columns += [f"{n}_auc" for n in names] + [f"{n}_auc_output" for n in names] + measures
    fractions = fractions_of(settings, n_voxels)
    for row in rows:
        entry = {"participant_id": row["participant_id"], "session_id": row["session_id"],
                 f"{mode}_id": row["element"], "target": row["target"]}
        if column:
            entry[column] = subset_name(data_pass, row["subset"])
        for name in names:
            entry[f"{name}_auc"] = auc(row["probabilities"][name], fractions)
            entry[f"{name}_auc_output"] = auc(row["outputs"][name], fractions)
        entry.update({m: row[m] for m in measures})
        table.append(entry)
    writers.write_tsv(folder / TSV, columns, [{k: _number(v) for k, v in e.items()} for e in table])
    # the whole group, then (--group_by) each subset in the subsets' order
    groups = {"all": list(range(len(rows)))}
    if column:
        for index in sorted({row["subset"] for row in rows}):
            groups[subset_name(data_pass, index)] = [i for i, row in enumerate(rows) if row["subset"] == index]
    lead = {"subset": None} if column else {}
    summaries = {group: {c: _stats([table[i][c] for i in members]) for c in columns[firsts:]}
                 for group, members in groups.items()}
    writers.write_tsv(folder / SUMMARY, [*lead, "measure", "n", "mean", "std"], [
        {**({"subset": group} if column else {}), "measure": k, "n": str(n), "mean": _number(m), "std": _number(s)}
        for group, summary in summaries.items() for k, (n, m, s) in summary.items()])
    kind = "probability" if has_probability(plan.maps) else "output"
    curves = {group: _mean_curves(rows, members, names, kind) for group, members in groups.items()}
    header = fractions_of(settings)
    writers.write_tsv(folder / CURVES, [*lead, "curve", "step", "fraction", f"mean_{kind}", f"std_{kind}"], [
        {**({"subset": group} if column else {}), "curve": name, "step": str(k),
         "fraction": f"{float(header[k]):.6f}", f"mean_{kind}": _number(float(m[k])),
         f"std_{kind}": _number(float(s[k]))}
        for group, by_name in curves.items() for name, (m, s) in by_name.items() for k in range(len(header))])
    writers.atomic_write_bytes(folder / PNG, draw(header, curves["all"], f"{plan.output.method}, {len(rows)} map(s)",
                                                  kind))
    writers.write_json(folder / JSON, {
        "steps": settings.steps, "orders": list(settings.orders), "least_relevant_first": settings.lerf,
        "replacement": settings.replacement, "value": settings.value if settings.replacement == "constant" else None,
        "mask": None if settings.mask is None else str(settings.mask), "roi": settings.roi,
        "mask_sha256": None if settings.mask is None else hashlib.sha256(settings.mask.read_bytes()).hexdigest(),
        "relevance": "abs", "n_maps": len(rows), "summary": _json(summaries["all"]), "group_by": column,
        "subsets": {group: _json(summary) for group, summary in summaries.items() if group != "all"}})
    return summaries["all"]


def _mean_curves(rows: list[dict], members: list[int], names: list[str], kind: str) -> dict:
    """Each curve's mean and sample standard deviation over the maps `members` (NaN for one map)."""
    out = {}
    for name in names:
        stack = torch.tensor([rows[i]["probabilities" if kind == "probability" else "outputs"][name]
                              for i in members], dtype=torch.float64)
        out[name] = (stack.mean(0), stack.std(0, correction=1) if len(members) > 1
                     else torch.full_like(stack[0], math.nan))
    return out


def _json(summary: dict) -> dict:
    return {k: {"n": n, "mean": None if math.isnan(m) else m, "std": None if math.isnan(s) else s}
            for k, (n, m, s) in summary.items()}


def draw(fractions: torch.Tensor, curves: dict, title: str, kind: str = "probability") -> bytes:
    """Mean probability (a regression's output) against the share of voxels removed (deletion) or put back (insertion), a band of one
    standard deviation; drawn on a bare Agg canvas (no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 3.8), layout="constrained")
    FigureCanvasAgg(figure)
    axes = dict(zip(("deletion", "insertion"), figure.subplots(1, 2, sharey=True)))
    x = fractions.numpy()
    for name, (mean, std) in curves.items():
        ax = axes[name.split("_")[0]]
        label = name.split("_", 1)[1].replace("_lerf", " (least relevant first)")
        line = ax.plot(x, mean.numpy(), label=label)[0]
        if not bool(torch.isnan(std).all()):
            ax.fill_between(x, (mean - std).numpy(), (mean + std).numpy(), color=line.get_color(), alpha=0.15)
    for kind, ax in axes.items():
        ax.set_title(f"{kind}: voxels {'removed' if kind == 'deletion' else 'put back'}, ranked by the map")
        ax.set_xlabel(f"share of voxels {'removed' if kind == 'deletion' else 'put back'}")
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes["deletion"].set_ylabel(f"target {kind} (mean over maps)")
    figure.suptitle(title, fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()
