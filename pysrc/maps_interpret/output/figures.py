"""--save_figures: every mean/statistic map drawn over the group's mean input image, and an index page.

Drawn once every folder of the run is written, so that each statistic (mean, absmean, std) has one colour
scale for the whole run: figures of different splits, selection metrics and subsets compare at a glance.
The scale is symmetric, [-v, v], v the 99.9th percentile of |value| over the non-zero voxels of every map of
that statistic in the run (a few extreme voxels would otherwise wash the others out; values beyond v saturate). Maps of patch, slice
and roi runs are drawn from their image-space maps (space.py): every element at its place in the image.

matplotlib draws on its Agg canvas without pyplot: no display, and no global backend switched for a caller
of `maps_interpret.run` who uses pyplot.
"""

from __future__ import annotations

import html
import io
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .. import signals
from ..data.caps import load_tensor
from ..data.transforms import Preprocess
from . import provenance, space, writers

log = logging.getLogger("maps_interpret")
BACKGROUND_SESSIONS = 16  # sessions averaged into the background image (their mean input)
PERCENTILE = 99.9
SCALE_SAMPLE = 1_000_000  # non-zero values per map that the percentile is taken over, at most
TRANSPARENT_BELOW = 0.1  # |value| under this fraction of the scale is not drawn: the anatomy shows through
INDEX = "index.html"
FIGURES_FILE = "figures.json"
STATISTICS = ("mean", "absmean", "std")


@dataclass(frozen=True)
class Figure:
    map_file: Path  # the .pt drawn
    statistic: str  # mean, absmean, std
    subset: str  # "all", or <column>-<value> (--group_by)


def maps_to_draw(folder: Path, mode: str) -> list[Figure]:
    """The statistic maps of a folder, as one image each: image mode's maps, else the image-space maps."""
    element = r"image-0" if mode == "image" else re.escape(space.IMAGE_SPACE)
    pattern = re.compile(rf"({'|'.join(STATISTICS)})_(?:(.+)_)?{element}_map\.pt")
    out = []
    for path in sorted(folder.iterdir()):
        match = pattern.fullmatch(path.name)
        if match:
            out.append(Figure(path, match.group(1), match.group(2) or "all"))
    return sorted(out, key=lambda f: (STATISTICS.index(f.statistic), f.subset != "all", f.subset))


def mean_input(data_pass, params: dict, mode: str) -> torch.Tensor:
    """The mean of the first BACKGROUND_SESSIONS images as the network sees them (NaN removal, min-max, size
    reduction in image mode; patch/slice/roi maps are drawn on the whole image grid, before it is cut)."""
    preprocess = Preprocess.from_params(params)
    if mode != "image":
        preprocess = Preprocess(normalize=preprocess.normalize, size_reduction_factor=None)
    total = None
    sessions = data_pass.sessions[:BACKGROUND_SESSIONS]
    for session in sessions:
        read = data_pass.pipeline.image if data_pass.pipeline is not None else load_tensor  # ClinicaDL 2.0: NIfTI
        image = preprocess(read(session.tensor_path)).double()
        total = image if total is None else total + image
    return (total / len(sessions)).float()


def magnitudes(map_: torch.Tensor) -> torch.Tensor:
    """The |values| of a map's non-zero voxels, every k-th of them beyond SCALE_SAMPLE (a percentile needs no
    more, and a run may hold dozens of full-size maps). Zeros are the voxels no element covers (outside the
    regions, discarded slices, patch borders): counted, they would pull the percentile down to saturate the map."""
    values = map_.abs().reshape(-1)
    values = values[values > 0]
    return values[::max(1, values.numel() // SCALE_SAMPLE)].double()


def colour_scales(figures: list[Figure]) -> dict[str, float]:
    """Per statistic, v of the [-v, v] scale shared by every figure of the run (1 for maps of zeros only)."""
    values: dict[str, list[torch.Tensor]] = {}
    for figure in figures:
        values.setdefault(figure.statistic, []).append(magnitudes(torch.load(figure.map_file, weights_only=True)))
    scales = {}
    for statistic, maps in values.items():
        sample = torch.cat(maps).numpy()
        scales[statistic] = float(np.percentile(sample, PERCENTILE)) if sample.size else 1.0
    return scales


def _planes(map_: np.ndarray) -> list[tuple[str, tuple]]:
    """Orthogonal planes through the voxel of largest |value| (all of a 2D map)."""
    if map_.ndim == 2:
        return [("", (slice(None), slice(None)))]
    peak = np.unravel_index(int(np.argmax(np.abs(map_))), map_.shape)
    names = ("axis 0", "axis 1", "axis 2")
    return [(f"{names[axis]} = {peak[axis]}",
             tuple(peak[axis] if a == axis else slice(None) for a in range(3))) for axis in range(3)]


def draw(map_: torch.Tensor, background: torch.Tensor, scale: float, title: str) -> bytes:
    """A PNG: the map's orthogonal planes through its peak, over the background in grey, on the colour scale
    [-scale, scale] (red positive, blue negative) with a colour bar."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    values = map_[0].numpy().astype(np.float64)
    anatomy = background.sum(0).numpy().astype(np.float64)
    planes = _planes(values)
    figure = MplFigure(figsize=(4 * len(planes) + 1, 4.6))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(planes), squeeze=False)[0]
    image = None
    for ax, (name, index) in zip(axes, planes):
        ax.imshow(anatomy[index].T, cmap="gray", origin="lower", interpolation="nearest")
        plane = values[index].T
        shown = np.ma.masked_where(np.abs(plane) < TRANSPARENT_BELOW * scale, plane)
        image = ax.imshow(shown, cmap="RdBu_r", vmin=-scale, vmax=scale, origin="lower", interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    figure.colorbar(image, ax=list(axes), shrink=0.85, label="attribution")
    figure.suptitle(title, fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def title(plan, data_pass, job, figure: Figure) -> str:
    output = plan.output
    subset = "" if figure.subset == "all" else f", {figure.subset}"
    return (f"{figure.statistic} map{subset} - {plan.maps.split_name}-{job.split} best-{job.metric}, group "
            f"{output.data_group}, {output.method}, n = {len(data_pass.sessions)}")


def draw_run(plan, folders: list[tuple]) -> None:
    """Every folder of the run, (data pass, job, folder) each (the folders still staged: figures are drawn before
    anything is published): a PNG beside each statistic map, figures.json, index.html; interpret.json's list of
    outputs brought up to date. A stop signal is honoured between figures (`check`)."""
    mode = plan.maps.mode
    figures = {folder: maps_to_draw(folder, mode) for _, _, folder in folders}
    scales = colour_scales([f for listing in figures.values() for f in listing])
    backgrounds = {}  # per pass: its jobs share the sessions
    for data_pass, job, folder in folders:
        signals.check()
        if id(data_pass) not in backgrounds:
            backgrounds[id(data_pass)] = mean_input(data_pass, plan.maps.params, mode)
        background = backgrounds[id(data_pass)]
        drawn = []
        for figure in figures[folder]:
            signals.check()  # each figure takes a while: a stop need not wait for the others
            png = figure.map_file.with_suffix(".png")
            map_ = torch.load(figure.map_file, weights_only=True)
            if tuple(map_.shape[1:]) != tuple(background.shape[1:]):
                log.warning("%s: shape %s differs from the images' %s; not drawn", figure.map_file,
                            tuple(map_.shape), tuple(background.shape))
                continue
            writers.atomic_write_bytes(png, draw(map_, background, scales[figure.statistic],
                                                 title(plan, data_pass, job, figure)))
            drawn.append((figure, png))
        _write_index(plan, data_pass, job, folder, drawn, scales)
        _refresh_outputs(folder)
    log.info("figures: %d drawn, colour scales %s", sum(len(f) for f in figures.values()),
             ", ".join(f"{k} +-{v:.3g}" for k, v in scales.items()))


def _write_index(plan, data_pass, job, folder: Path, drawn: list, scales: dict[str, float]) -> None:
    output = plan.output
    n_background = min(BACKGROUND_SESSIONS, len(data_pass.sessions))
    writers.write_json(folder / FIGURES_FILE, {
        "colour_scales": {k: [-v, v] for k, v in scales.items()},
        "percentile": PERCENTILE, "transparent_below": TRANSPARENT_BELOW,
        "background": f"mean input image of the first {n_background} session(s)",
        "figures": [{"file": png.name, "map": figure.map_file.name, "statistic": figure.statistic,
                     "subset": figure.subset} for figure, png in drawn]})
    heading = (f"{output.name}: {output.method} maps of {output.data_group}, {plan.maps.split_name}-{job.split} "
               f"best-{job.metric}")
    rows = "".join(
        f'<figure><img src="{html.escape(png.name)}" alt="{html.escape(figure.map_file.name)}">'
        f"<figcaption>{html.escape(figure.statistic)} ({html.escape(figure.subset)}): "
        f"<code>{html.escape(figure.map_file.name)}</code></figcaption></figure>\n" for figure, png in drawn)
    scale_text = ", ".join(f"{html.escape(k)} [-{v:.3g}, {v:.3g}]" for k, v in scales.items())
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(heading)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} figure{{margin:1em 0}} img{{max-width:100%}}
td,th{{text-align:left;padding:0 1em 0 0}}</style></head>
<body><h1>{html.escape(heading)}</h1>
<table>
<tr><th>MAPS</th><td>{html.escape(str(plan.maps.path))}</td></tr>
<tr><th>model</th><td>{html.escape(str(job.model_path))}</td></tr>
<tr><th>sessions</th><td>{len(data_pass.sessions)} ({plan.maps.mode} mode, {len(data_pass.element_ids)} element(s) each)</td></tr>
<tr><th>colour scales</th><td>{scale_text} (shared by every figure of the run; the {PERCENTILE}th percentile of |value|
over non-zero voxels;
values under {TRANSPARENT_BELOW:.0%} of the scale transparent)</td></tr>
<tr><th>background</th><td>mean input image of the first {n_background} session(s), as the network sees them</td></tr>
<tr><th>provenance</th><td><a href="{provenance.FILE}">{provenance.FILE}</a></td></tr>
</table>
{rows or "<p>No map to draw.</p>"}
</body></html>
"""
    writers.atomic_write_text(folder / INDEX, page)


def _refresh_outputs(folder: Path) -> None:
    """interpret.json lists the folder's files: the figures are new ones."""
    path = folder / provenance.FILE
    if not path.is_file():
        return
    record: Optional[dict] = json.loads(path.read_text())
    record["outputs"] = writers.outputs(folder, but=provenance.FILE)
    writers.write_json(path, record)
