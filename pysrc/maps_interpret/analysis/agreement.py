"""Agreement between the maps of several models, element by element: Pearson, Spearman and the Dice overlap of
the top-k% voxels for every pair (similarity.py), the mean and standard deviation across splits, and how they
are written (agreement.tsv, summary.tsv, across_splits_*_map.pt, agreement.png). compare.py finds the maps."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Source:
    """One interpret-<NAME> folder: the maps of one model."""

    split: int
    metric: str
    folder: Path
    split_name: str = "split"

    @property
    def label(self) -> str:
        return f"{self.split_name}-{self.split}/{self.metric}"



def dice_column(k: float) -> str:
    return f"dice_top{k:g}"


def agreement_columns(mode: str, top_k: list[float]) -> list[str]:
    return (["split_a", "selection_metric_a", "split_b", "selection_metric_b", f"{mode}_id", "pearson", "spearman"]
            + [dice_column(k) for k in top_k])


def _number(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.6f}"


def element_rows(sources: list[Source], maps_: list, element: int, mode: str, top_k: list[float]) -> list[dict]:
    """One row per pair of models for this element. Each map is ranked, and its top-k% voxels chosen, once rather
    than once per pair, by similarity.py's own functions: on a full-size image map a call to `spearman` or
    `top_dice` costs seconds (each sorts both maps), and n models make n(n-1)/2 pairs. Spearman is then Pearson's
    r of the ranks, as `spearman` computes it, and Dice the overlap of the masks, as `top_dice` does."""
    from .similarity import mask_dice, pearson, ranks, top_mask

    ranked = [ranks(map_.reshape(-1).double()) for map_ in maps_]
    tops = [{k: top_mask(map_, k / 100) for k in top_k} for map_ in maps_]
    rows = []
    for i in range(len(sources)):
        for j in range(i + 1, len(sources)):
            a, b = sources[i], sources[j]
            row = {"split_a": a.split, "selection_metric_a": a.metric, "split_b": b.split,
                   "selection_metric_b": b.metric, f"{mode}_id": element,
                   "pearson": pearson(maps_[i], maps_[j]), "spearman": pearson(ranked[i], ranked[j])}
            row.update({dice_column(k): mask_dice(tops[i][k], tops[j][k]) for k in top_k})
            rows.append(row)
    return rows


def across_splits(sources: list[Source], maps_: list) -> dict[str, tuple]:
    """Per selection metric: the element-wise mean over its splits and the sample standard deviation (n - 1;
    None with a single split, where it is undefined), computed in float64 and stored as float32 like the maps."""
    import torch

    out = {}
    for metric in dict.fromkeys(source.metric for source in sources):
        stack = torch.stack([m.double() for s, m in zip(sources, maps_) if s.metric == metric])
        std = stack.std(dim=0, correction=1).float() if len(stack) > 1 else None
        out[metric] = (stack.mean(dim=0).float(), std)
    return out


def summary_rows(sources: list[Source], rows: list[dict], top_k: list[float]) -> list[dict]:
    """Per selection metric, over the pairs of its splits and every element: how well the splits agree."""
    out = []
    for metric in dict.fromkeys(source.metric for source in sources):
        within = [row for row in rows if row["selection_metric_a"] == metric == row["selection_metric_b"]]
        if not within:
            continue
        spearmans = [row["spearman"] for row in within]
        entry = {"selection_metric": metric, "n_splits": sum(s.metric == metric for s in sources),
                 "n_rows": len(within), "mean_pearson": _mean([row["pearson"] for row in within]),
                 "mean_spearman": _mean(spearmans), "min_spearman": min(spearmans, key=_nan_last)}
        entry.update({f"mean_{dice_column(k)}": _mean([row[dice_column(k)] for row in within]) for k in top_k})
        out.append(entry)
    return out


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _nan_last(value: float) -> float:
    return math.inf if math.isnan(value) else value



def write_across_splits(folder: Path, metric: str, element: int, mode: str, mean, std) -> None:
    from ..output.writers import save_tensor

    for kind, value in (("mean", mean), ("std", std)):
        if value is not None:
            save_tensor(value, folder / f"across_splits_{kind}_{metric}_{mode}-{element}_map.pt")


def write_tables(folder: Path, mode: str, top_k: list[float], rows: list[dict], summary: list[dict]) -> None:
    from ..output.writers import write_tsv

    columns = agreement_columns(mode, top_k)
    write_tsv(folder / "agreement.tsv", columns, [_formatted(row) for row in rows])
    if summary:
        write_tsv(folder / "summary.tsv", list(summary[0]), [_formatted(row) for row in summary])


def _formatted(row: dict) -> dict[str, str]:
    return {key: _number(value) if isinstance(value, float) else str(value) for key, value in row.items()}


def agreement_matrix(sources: list[Source], rows: list[dict], element: int, mode: str, measure: str):
    """Square matrix of `measure` between the models for one element (1 on the diagonal)."""
    import numpy as np

    index = {(s.split, s.metric): i for i, s in enumerate(sources)}
    matrix = np.eye(len(sources))
    for row in rows:
        if row[f"{mode}_id"] == element:
            i = index[(row["split_a"], row["selection_metric_a"])]
            j = index[(row["split_b"], row["selection_metric_b"])]
            matrix[i, j] = matrix[j, i] = row[measure]
    return matrix


def draw_agreement(path: Path, labels: list[str], matrices: dict, title: str) -> None:
    from ..output.writers import atomic_write_bytes

    atomic_write_bytes(path, agreement_png(labels, matrices, title))


def agreement_png(labels: list[str], matrices: dict, title: str) -> bytes:
    """Heat-maps of the agreement matrices side by side, one shared colour bar over [-1, 1]. Drawn on a bare Agg
    canvas (no pyplot): no global backend is switched and no window can open, whoever calls run()."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(labels)
    size = 1.2 + 0.45 * n
    figure = Figure(figsize=(size * len(matrices) + 1.5, size + 1.0), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(matrices), squeeze=False)[0]
    image = None
    for ax, (measure, matrix) in zip(axes, matrices.items()):
        image = ax.imshow(matrix, cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_title(measure.capitalize())
        ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n), labels, fontsize=8)
        if n <= 12:  # values readable only on small matrices
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if abs(matrix[i, j]) > 0.6 else "black")
    figure.colorbar(image, ax=list(axes), shrink=0.8, label="correlation")
    figure.suptitle(title, fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()

