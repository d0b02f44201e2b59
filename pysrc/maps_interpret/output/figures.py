"""--save_figures: every mean/statistic map drawn with nilearn over the group's mean input image, in the maps'
world space (MNI mm for t1-linear images with their NIfTI), and an index page per folder (the run's report,
report/, gathers them all).

Drawn once every folder of the run is written, so that each statistic (mean, absmean, std) has one colour
scale for the whole run: figures of different splits, selection metrics and subsets compare at a glance.
Signed maps (mean) use a diverging scale [-v, v]; magnitudes (absmean, std) a sequential one [0, v]; v is the
99.9th percentile of |value| over the non-zero voxels of every map of that statistic in the run (a few extreme
voxels would otherwise wash the others out; values beyond v saturate). Maps of patch, slice and roi runs are
drawn from their image-space maps (space.py): every element at its place in the image. Orthogonal cuts go
through the peak of |map|, at its world coordinates; `--figure_display mosaic` draws rows of cuts instead.

nilearn draws on pyplot figures: each is closed once saved, so nothing is left open (or shown) for a caller of
`maps_interpret.run` who uses pyplot; without a display matplotlib chooses its Agg backend itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import io
import json
import logging
import os
import re
import warnings
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
SIGNED = ("mean",)  # the statistics whose maps have a sign (the others are magnitudes)
DIVERGING, SEQUENTIAL = "RdBu_r", "hot"
GLASS_SUFFIX = "_glass"  # <map>_glass.png: the glass brain of a mean map
DPI = 90
TITLE_INCHES = 0.35  # above the cuts: the title never covers them
DISPLAYS = ("ortho", "mosaic")
MOSAIC_CUTS = 5  # per axis


@dataclass(frozen=True)
class Figure:
    map_file: Path  # the .pt drawn
    statistic: str  # mean, absmean, std
    subset: str  # "all", or <column>-<value> (--group_by)
    n: int = 0  # sessions behind the map (the subset's, once known)


@dataclass(frozen=True)
class Drawn:
    figure: Figure
    png: Path
    glass: Optional[Path]  # the glass brain (mean maps in a world space)
    peak_mm: tuple  # where the orthogonal cuts go
    world: bool  # coordinates in mm (a source NIfTI), else voxel indices


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
    """Per statistic, v of the scale ([-v, v] or [0, v]) shared by every figure of the run (1 for maps of zeros
    only)."""
    values: dict[str, list[torch.Tensor]] = {}
    for figure in figures:
        values.setdefault(figure.statistic, []).append(magnitudes(torch.load(figure.map_file, weights_only=True)))
    scales = {}
    for statistic, maps in values.items():
        sample = torch.cat(maps).numpy()
        scales[statistic] = float(np.percentile(sample, PERCENTILE)) if sample.size else 1.0
    return scales


def peak_mm(values: np.ndarray, affine: np.ndarray) -> tuple[float, float, float]:
    """World coordinates (mm) of the voxel of largest |value|: where the orthogonal cuts go."""
    peak = np.unravel_index(int(np.argmax(np.abs(values))), values.shape)
    return tuple(float(c) for c in (affine @ np.array([*peak, 1.0]))[:3])


def in_world(affine: np.ndarray) -> bool:
    """Whether the maps have a world space (a source NIfTI): without one the affine is the identity and the
    coordinates are voxel indices, which a glass brain (MNI space) cannot show."""
    return not np.allclose(affine, np.eye(4))


def _canvas(width: float, height: float):
    import matplotlib.pyplot as plt  # nilearn draws on pyplot figures only

    return plt.figure(figsize=(width, height))


@contextlib.contextmanager
def _quiet():
    """A map of zeros (a std over one session, a Grad-CAM map the ReLU zeroed: results.py says so) is drawn
    as the bare anatomy; nilearn's warning that it found nothing to draw says nothing more."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="empty mask", category=UserWarning)
        yield


def _png(figure, display) -> bytes:
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    finally:
        display.close()  # closed in pyplot: nothing left open for a caller who uses it
    return buffer.getvalue()


def _colours(statistic: str, scale: float) -> dict:
    """nilearn's arguments of a statistic's colour scale: signed maps diverge around 0 (blue negative, red
    positive), magnitudes (absmean, std) run from 0 on a sequential scale."""
    if statistic in SIGNED:
        return {"cmap": DIVERGING, "vmin": -scale, "vmax": scale, "symmetric_cbar": True}
    return {"cmap": SEQUENTIAL, "vmin": 0.0, "vmax": scale, "symmetric_cbar": False}


def draw(map_: torch.Tensor, background: torch.Tensor, affine: np.ndarray, scale: float, statistic: str,
         title: str, display_mode: str = "ortho") -> bytes:
    """A PNG: nilearn's stat map over the background (the group's mean input) in the maps' world space, cut
    through the peak of |map| (ortho) or in rows of cuts along each axis (mosaic), on the statistic's colour
    scale; values under TRANSPARENT_BELOW of the scale are not drawn."""
    import nibabel as nib
    from nilearn import plotting

    values = map_[0].numpy().astype(np.float32)
    mosaic = display_mode == "mosaic"
    height = 7.5 if mosaic else 3.6
    figure = _canvas(11, height)
    figure.suptitle(title, fontsize=11, x=0.01, y=0.99, ha="left", va="top")
    anatomy = nib.Nifti1Image(background.sum(0).numpy().astype(np.float32), affine)
    with _quiet():
        display = plotting.plot_stat_map(
            nib.Nifti1Image(values, affine), bg_img=anatomy, display_mode=display_mode, figure=figure,
            cut_coords=MOSAIC_CUTS if mosaic else peak_mm(values, affine),
            axes=(0, 0, 0.92 if mosaic else 1, 1 - TITLE_INCHES / height), colorbar=not mosaic,
            threshold=TRANSPARENT_BELOW * scale, black_bg=False, dim=0, annotate=True, draw_cross=not mosaic,
            resampling_interpolation="nearest", **_colours(statistic, scale))
    if mosaic:  # nilearn's bar would write its labels over the last column of cuts: a bar of our own beside them
        _colour_bar(figure, statistic, scale)
    return _png(figure, display)


def _colour_bar(figure, statistic: str, scale: float) -> None:
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    colours = _colours(statistic, scale)
    bar = figure.add_axes((0.935, 0.08, 0.015, 0.78))
    figure.colorbar(ScalarMappable(Normalize(colours["vmin"], colours["vmax"]), colours["cmap"]), cax=bar)


def draw_glass_brain(map_: torch.Tensor, affine: np.ndarray, scale: float, title: str) -> bytes:
    """A PNG: the signed map projected through a glass brain (left, right, sagittal, axial views), in MNI mm."""
    import nibabel as nib
    from nilearn import plotting

    figure = _canvas(11, 3.4)
    figure.suptitle(title, fontsize=11, x=0.01, y=0.99, ha="left", va="top")
    with _quiet():
        display = plotting.plot_glass_brain(
            nib.Nifti1Image(map_[0].numpy().astype(np.float32), affine), display_mode="lyrz", figure=figure,
            axes=(0, 0, 1, 1 - TITLE_INCHES / 3.4), threshold=TRANSPARENT_BELOW * scale, plot_abs=False,
            resampling_interpolation="nearest", **_colours("mean", scale))
    return _png(figure, display)


def title(plan, job, figure: Figure) -> str:
    subset = "" if figure.subset == "all" else f", {figure.subset}"
    return (f"{figure.statistic}{subset} (n = {figure.n}) - {plan.maps.split_name}-{job.split} best-{job.metric}, "
            f"{plan.output.method}")


def subset_sizes(folder: Path) -> dict[tuple[str, str], int]:
    """Sessions behind each (statistic, subset) map, from statistics.tsv (a subset's own count, not the group's);
    without the table there are no subsets: every map is the whole group's."""
    table = folder / "statistics.tsv"
    if not table.is_file():
        return {}
    import pandas as pd

    rows = pd.read_csv(table, sep="\t", dtype={"subset": str})
    # n_maps counts the maps of one element: each session gives one per element (patch/slice/roi alike)
    return {(r.statistic, r.subset): int(r.n_maps) for r in rows.itertuples()}


def map_affine(plan, data_pass) -> np.ndarray:
    """The voxel-to-world affine of a pass's drawn maps: their NIfTI files' (results.placement), the identity
    without a source NIfTI image."""
    from . import results

    element = 0 if plan.maps.mode == "image" else None
    where = results.placement(plan, data_pass, element, results.group_reference(data_pass))
    return np.eye(4) if where is None else where.affine


def draw_run(plan, folders: list[tuple]) -> None:
    """Every folder of the run, (data pass, job, folder) each (the folders still staged: figures are drawn before
    anything is published): a PNG beside each statistic map (a glass brain too for each mean map in a world
    space), figures.json, index.html; interpret.json's list of outputs brought up to date. A stop signal is
    honoured between figures (`check`)."""
    mode = plan.maps.mode
    figures = {folder: maps_to_draw(folder, mode) for _, _, folder in folders}
    scales = colour_scales([f for listing in figures.values() for f in listing])
    backgrounds = {}  # per pass: its jobs share the sessions, and so the background and the maps' space
    display_mode = plan.output.figure_display
    for data_pass, job, folder in folders:
        signals.check()
        if id(data_pass) not in backgrounds:
            backgrounds[id(data_pass)] = mean_input(data_pass, plan.maps.params, mode), map_affine(plan, data_pass)
        background, affine = backgrounds[id(data_pass)]
        world = in_world(affine)
        sizes = subset_sizes(folder)
        drawn = []
        for figure in figures[folder]:
            signals.check()  # each figure takes a while: a stop need not wait for the others
            figure = dataclasses.replace(figure, n=sizes.get((figure.statistic, figure.subset),
                                                             len(data_pass.sessions)))
            map_ = torch.load(figure.map_file, weights_only=True)
            if map_.dim() != 4 or tuple(map_.shape[1:]) != tuple(background.shape[1:]):
                log.warning("%s: shape %s differs from the images' %s; not drawn", figure.map_file,
                            tuple(map_.shape), tuple(background.shape))
                continue
            png = figure.map_file.with_suffix(".png")
            heading = title(plan, job, figure)
            writers.atomic_write_bytes(png, draw(map_, background, affine, scales[figure.statistic],
                                                 figure.statistic, heading, display_mode))
            glass = None
            if figure.statistic in SIGNED and world:
                glass = png.with_name(png.stem + GLASS_SUFFIX + ".png")
                writers.atomic_write_bytes(glass, draw_glass_brain(map_, affine, scales[figure.statistic], heading))
            drawn.append(Drawn(figure, png, glass, peak_mm(map_[0].numpy(), affine), world))
        _write_index(plan, data_pass, job, folder, drawn, scales)
        _refresh_outputs(folder)
    log.info("figures: %d drawn, colour scales %s", sum(len(f) for f in figures.values()),
             ", ".join(f"{k} +-{v:.3g}" for k, v in scales.items()))


def scale_range(statistic: str, scale: float) -> list[float]:
    colours = _colours(statistic, scale)
    return [colours["vmin"], colours["vmax"]]


def coordinates(drawn: Drawn) -> str:
    unit = "mm" if drawn.world else "voxels (no source NIfTI: not in mm)"
    return "cuts through the peak at " + ", ".join(f"{a}={v:.1f}" for a, v in zip("xyz", drawn.peak_mm)) + f" {unit}"


def _write_index(plan, data_pass, job, folder: Path, drawn: list[Drawn], scales: dict[str, float]) -> None:
    output = plan.output
    n_background = min(BACKGROUND_SESSIONS, len(data_pass.sessions))
    writers.write_json(folder / FIGURES_FILE, {
        "colour_scales": {k: scale_range(k, v) for k, v in scales.items()},
        "colour_maps": {k: _colours(k, v)["cmap"] for k, v in scales.items()},
        "percentile": PERCENTILE, "transparent_below": TRANSPARENT_BELOW, "display": output.figure_display,
        "background": f"mean input image of the first {n_background} session(s)",
        "figures": [{"file": d.png.name, "map": d.figure.map_file.name, "statistic": d.figure.statistic,
                     "subset": d.figure.subset, "n": d.figure.n, "glass_brain": d.glass.name if d.glass else None,
                     "peak": list(d.peak_mm), "peak_unit": "mm" if d.world else "voxel"} for d in drawn]})
    heading = (f"{output.name}: {output.method} maps of {output.data_group}, {plan.maps.split_name}-{job.split} "
               f"best-{job.metric}")
    # from where the folder will be (it is drawn in staging, published afterwards)
    report = Path(os.path.relpath(plan.maps.report_path(output.data_group, output.name), job.output_dir)).as_posix()
    cards = []
    for d in drawn:
        images = [d.png] + ([d.glass] if d.glass else [])
        cards.append(
            f"<figure><figcaption><b>{html.escape(d.figure.statistic)}</b> ({html.escape(d.figure.subset)}, "
            f"n = {d.figure.n}) <code>{html.escape(d.figure.map_file.name)}</code>; {html.escape(coordinates(d))}"
            "</figcaption>" + "".join(f'<img src="{html.escape(i.name)}" alt="{html.escape(i.name)}">'
                                      for i in images) + "</figure>\n")
    scale_text = ", ".join(f"{html.escape(k)} [{scale_range(k, v)[0]:.3g}, {v:.3g}]" for k, v in scales.items())
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(heading)}</title>
<style>body{{font-family:sans-serif;margin:1em 1.5em;max-width:1100px}} figure{{margin:0 0 1.2em 0}}
figcaption{{font-size:0.9em;margin-bottom:0.2em}} img{{max-width:100%;display:block}}
td,th{{text-align:left;padding:0 1em 0 0;vertical-align:top}}</style></head>
<body><h1>{html.escape(heading)}</h1>
<p>The whole run (every split and selection metric, sanity check, agreement): <a href="{html.escape(report)}">its
report</a>.</p>
<table>
<tr><th>MAPS</th><td>{html.escape(str(plan.maps.path))}</td></tr>
<tr><th>model</th><td>{html.escape(str(job.model_path))}</td></tr>
<tr><th>sessions</th><td>{len(data_pass.sessions)} ({plan.maps.mode} mode, {len(data_pass.element_ids)} element(s) each)</td></tr>
<tr><th>colour scales</th><td>{scale_text} (shared by every figure of the run; the {PERCENTILE}th percentile of |value|
over non-zero voxels; values under {TRANSPARENT_BELOW:.0%} of the scale transparent)</td></tr>
<tr><th>background</th><td>mean input image of the first {n_background} session(s), as the network sees them</td></tr>
<tr><th>provenance</th><td><a href="{provenance.FILE}">{provenance.FILE}</a></td></tr>
</table>
{"".join(cards) or "<p>No map to draw.</p>"}
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
