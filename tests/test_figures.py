"""--save_figures: PNGs that decode and show the map's sign in its colour, one colour scale per statistic for the
whole run (checked against the maps' own values), an index page listing every figure, interpret.json updated."""

from __future__ import annotations

import csv
import io
import json
import re

import nibabel as nib
import numpy as np
import pytest
import torch
from matplotlib.image import imread

from maps_interpret.cli import main
from maps_interpret.output.figures import FIGURES_FILE, INDEX, Figure, colour_scales, draw
from maps_interpret.synthetic import PATTERN, build_demo


def pixels(png: bytes) -> np.ndarray:
    return imread(io.BytesIO(png), format="png")[..., :3]


def coloured(rgb: np.ndarray, channel: int) -> int:
    """Pixels strongly of one primary colour (red 0, blue 2): the map's extremes on the RdBu scale."""
    others = [c for c in range(3) if c != channel]
    return int(((rgb[..., channel] > 0.35) & (rgb[..., others].max(-1) < 0.2)).sum())


def test_sign_is_drawn_in_its_colour():
    background = torch.rand(1, 12, 14, 10)
    positive = torch.zeros(1, 12, 14, 10)
    positive[0, 4:8, 5:9, 3:7] = 1.0
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    red = pixels(draw(positive, background, affine, 1.0, "mean", "positive"))
    blue = pixels(draw(-positive, background, affine, 1.0, "mean", "negative"))
    assert red.std() > 0 and blue.std() > 0
    # The colour bar holds both colours: compare the counts, the blob is much larger than the bar's ends.
    assert coloured(red, 0) > coloured(red, 2) + 200
    assert coloured(blue, 2) > coloured(blue, 0) + 200


def test_magnitudes_are_drawn_on_a_sequential_scale():
    """absmean and std are >= 0: no blue (the signed scale's negative half, which they would never use); the
    signed scale keeps its blue half in the colour bar."""
    background = torch.rand(1, 12, 14, 10)
    magnitude = torch.zeros(1, 12, 14, 10)
    magnitude[0, 3:9, 4:10, 2:8] = torch.linspace(0.2, 1.0, 6 * 6 * 6).reshape(6, 6, 6)
    for statistic in ("absmean", "std"):
        rgb = pixels(draw(magnitude, background, np.eye(4), 1.0, statistic, statistic))
        assert coloured(rgb, 2) == 0 and coloured(rgb, 0) > 100, statistic
    assert coloured(pixels(draw(magnitude, background, np.eye(4), 1.0, "mean", "mean")), 2) > 0


def run_demo(tmp_path, monkeypatch, *extra, preprocessing=None, input_size=None, nifti=True):
    build_demo(tmp_path, shape=(16, 18, 14), n_train=4, n_test=3, trained=False, preprocessing=preprocessing,
               input_size=input_size, nifti=nifti)
    monkeypatch.chdir(tmp_path)
    assert main(["maps", "test", "fig", "--participants_tsv", "data/test.tsv", "--caps_directory", "data/caps",
                 "--no-gpu", "-np", "0", "--save_figures", *extra]) == 0
    return [tmp_path / "maps" / f"split-{k}" / "best-loss" / "test" / "interpret-fig" for k in (0, 1)]


def test_every_statistic_map_is_drawn_on_one_scale_per_run(tmp_path, monkeypatch):
    folders = run_demo(tmp_path, monkeypatch, "--statistics", "--group_by", "diagnosis")
    maps = {}
    for folder in folders:
        drawn = json.loads((folder / FIGURES_FILE).read_text())
        names = sorted(f["map"] for f in drawn["figures"])
        # mean, absmean and std of the whole group and of each diagnosis present (AD, CN).
        assert names == sorted(f"{s}_{g}image-0_map.pt" for s in ("mean", "absmean", "std")
                               for g in ("", "diagnosis-AD_", "diagnosis-CN_"))
        for entry in drawn["figures"]:
            rgb = imread(folder / entry["file"])
            assert rgb.shape[0] > 100 and rgb[..., :3].std() > 0.05, entry["file"]  # decodes, not blank
            maps.setdefault(entry["statistic"], []).append(torch.load(folder / entry["map"], weights_only=True))
        index = (folder / INDEX).read_text()
        pngs = [f["file"] for f in drawn["figures"]] + [f["glass_brain"] for f in drawn["figures"] if f["glass_brain"]]
        assert sorted(re.findall(r'<img src="([^"]+)"', index)) == sorted(pngs)
        outputs = json.loads((folder / "interpret.json").read_text())["outputs"]
        assert INDEX in outputs and all(png in outputs for png in pngs)
    scales = [json.loads((folder / FIGURES_FILE).read_text())["colour_scales"] for folder in folders]
    assert scales[0] == scales[1]  # the whole run, both splits
    for statistic, values in maps.items():  # within the range of every map of the statistic, not of one only
        v = scales[0][statistic][1]
        assert scales[0][statistic][0] == (-v if statistic == "mean" else 0) and 0 < v <= max(
            float(m.abs().max()) for m in values)
    assert scales[0]["mean"] != scales[0]["std"]


def test_colour_scale_ignores_zeros_and_a_few_outliers(tmp_path):
    """Maps that are 0 almost everywhere (a small region) with one extreme voxel: the scale is the region's
    values, not 0 (zeros counted) nor the outlier (the maximum)."""
    files = []
    for k, values in enumerate([(2.0, 2000.0), (-2.0, 5.0)]):  # the region's value, one outlier
        map_ = torch.zeros(1, 100, 100, 100)
        map_.view(-1)[:2000] = values[0]  # 0.2% of the voxels
        map_.view(-1)[5000] = values[1]
        path = tmp_path / f"mean_image-{k}_map.pt"
        torch.save(map_, path)
        files.append(Figure(path, "mean", "all"))
    assert colour_scales(files) == {"mean": pytest.approx(2.0)}


def test_patch_runs_draw_their_image_space_maps(tmp_path, monkeypatch):
    preprocessing = {"preprocessing": "t1-linear", "mode": "patch", "use_uncropped_image": False,
                     "patch_size": 8, "stride_size": 6, "prepare_dl": False,
                     "file_type": {"pattern": PATTERN, "description": "t1-linear", "needed_pipeline": "t1-linear"}}
    folders = run_demo(tmp_path, monkeypatch, preprocessing=preprocessing, input_size=(1, 8, 8, 8))
    drawn = json.loads((folders[0] / FIGURES_FILE).read_text())["figures"]
    assert [f["map"] for f in drawn] == ["mean_image-space_map.pt"]
    assert imread(folders[0] / drawn[0]["file"])[..., :3].std() > 0.05


def test_titles_say_each_subsets_own_n(tmp_path, monkeypatch):
    """A subset's figure gives the sessions of the subset (statistics.tsv's n_maps), not the whole group's."""
    folder = run_demo(tmp_path, monkeypatch, "--statistics", "--group_by", "diagnosis")[0]
    table = {(r["statistic"], r["subset"]): int(r["n_maps"]) for r in
             csv.DictReader(io.StringIO((folder / "statistics.tsv").read_text()), delimiter="\t")}
    drawn = json.loads((folder / FIGURES_FILE).read_text())["figures"]
    assert {(f["statistic"], f["subset"]): f["n"] for f in drawn} == table
    assert table[("mean", "diagnosis-AD")] != table[("mean", "all")]  # the demo's test group: AD 3, CN 1 of 4
    index = (folder / INDEX).read_text()
    assert f"(diagnosis-AD, n = {table[('mean', 'diagnosis-AD')]})" in index


def test_cuts_go_through_the_peak_in_mm_with_glass_brains(tmp_path, monkeypatch):
    """With source NIfTI images the cuts are at the peak's world coordinates (the NIfTI map's affine), each mean
    map has a glass brain, and each caption sits above its own images, inside their figure."""
    folder = run_demo(tmp_path, monkeypatch, "--save_nifti")[0]
    drawn = json.loads((folder / FIGURES_FILE).read_text())["figures"]
    for entry in drawn:
        nifti = nib.load(folder / entry["map"].replace(".pt", ".nii.gz"))
        values = np.asarray(nifti.dataobj)
        peak = np.unravel_index(np.argmax(np.abs(values)), values.shape)
        assert entry["peak_unit"] == "mm"
        assert np.allclose(entry["peak"], (nifti.affine @ [*peak, 1])[:3])
        assert not np.allclose(nifti.affine, np.eye(4))  # t1-linear's grid in MNI mm, not voxel indices
        assert (entry["glass_brain"] is not None) == (entry["statistic"] == "mean")
        if entry["glass_brain"]:
            assert imread(folder / entry["glass_brain"])[..., :3].std() > 0.05
    index = (folder / INDEX).read_text()
    figures = re.findall(r"<figure>(.*?)</figure>", index, re.S)
    assert len(figures) == len(drawn)
    for html, entry in zip(figures, drawn):
        assert html.startswith("<figcaption>") and html.index("</figcaption>") < html.index("<img")
        assert entry["map"] in html.split("</figcaption>")[0] and " mm" in html


def test_without_a_source_image_the_coordinates_say_voxels(tmp_path, monkeypatch):
    folder = run_demo(tmp_path, monkeypatch, nifti=False)[0]
    drawn = json.loads((folder / FIGURES_FILE).read_text())["figures"]
    assert {e["peak_unit"] for e in drawn} == {"voxel"} and all(e["glass_brain"] is None for e in drawn)
    assert "voxels (no source NIfTI" in (folder / INDEX).read_text()


def test_mosaic_display(tmp_path, monkeypatch):
    folder = run_demo(tmp_path, monkeypatch, "--figure_display", "mosaic")[0]
    record = json.loads((folder / FIGURES_FILE).read_text())
    assert record["display"] == "mosaic"
    mosaic = imread(folder / record["figures"][0]["file"])
    assert mosaic.shape[0] > 1.5 * mosaic.shape[1] * 3.6 / 11  # rows of cuts: far taller than the ortho strip
