"""--save_figures: PNGs that decode and show the map's sign in its colour, one colour scale per statistic for the
whole run (checked against the maps' own values), an index page listing every figure, interpret.json updated."""

from __future__ import annotations

import io
import json
import re

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
    red = pixels(draw(positive, background, 1.0, "positive"))
    blue = pixels(draw(-positive, background, 1.0, "negative"))
    assert red.std() > 0 and blue.std() > 0
    # The colour bar holds both colours: compare the counts, the blob is much larger than the bar's ends.
    assert coloured(red, 0) > coloured(red, 2) + 200
    assert coloured(blue, 2) > coloured(blue, 0) + 200


def run_demo(tmp_path, monkeypatch, *extra, preprocessing=None, input_size=None):
    build_demo(tmp_path, shape=(16, 18, 14), n_train=4, n_test=3, trained=False, preprocessing=preprocessing,
               input_size=input_size)
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
        assert sorted(re.findall(r'<img src="([^"]+)"', index)) == sorted(f["file"] for f in drawn["figures"])
        outputs = json.loads((folder / "interpret.json").read_text())["outputs"]
        assert INDEX in outputs and all(f["file"] in outputs for f in drawn["figures"])
    scales = [json.loads((folder / FIGURES_FILE).read_text())["colour_scales"] for folder in folders]
    assert scales[0] == scales[1]  # the whole run, both splits
    for statistic, values in maps.items():  # within the range of every map of the statistic, not of one only
        v = scales[0][statistic][1]
        assert scales[0][statistic][0] == -v and 0 < v <= max(float(m.abs().max()) for m in values)
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
