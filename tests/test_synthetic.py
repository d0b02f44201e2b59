"""The demo data (`make demo`): ClinicaDL's layouts, made by our own code, and interpretable end to end."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from maps_interpret.anatomy import grid_affine
from maps_interpret.maps import open_maps
from maps_interpret.models import load_model
from maps_interpret.synthetic import DEMO_SHAPE, PLANTED_MASK
from maps_interpret.synthetic import main as synthetic_main

pytestmark = pytest.mark.slow


def test_demo_command_end_to_end(tmp_path):
    root = tmp_path / "demo"
    assert synthetic_main(["demo", str(root), "--epochs", "2"]) == 0
    maps = open_maps(root / "maps")
    assert maps.splits() == [0, 1] and maps.selection_metrics(0) == ["accuracy", "loss"]
    for split in (0, 1):
        load_model(maps, maps.model_path(split, "loss"))  # strict keys, weights_only
        for part in ("train", "validation"):
            table = (root / "maps" / "groups" / part / f"split-{split}" / "data.tsv").read_text()
            assert table.startswith("\tparticipant_id\tsession_id")  # pandas index column, as ClinicaDL writes it
            assert "\tAD\n" in table and "\tCN\n" in table  # both classes in every fold: a model can learn
    mask = nib.load(root / "data" / PLANTED_MASK)
    assert mask.shape == DEMO_SHAPE and np.allclose(mask.affine, grid_affine(DEMO_SHAPE))
    assert 0 < np.asarray(mask.dataobj).mean() < 0.03
    args = [sys.executable, "-m", "maps_interpret", "maps", "test", "demo", "--participants_tsv", "data/test.tsv",
            "--caps_directory", "data/caps", "--save_individual", "--save_nifti", "--save_figures", "--no-gpu",
            "-np", "1"]  # as `make demo`
    result = subprocess.run(args, cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    folder = root / "maps" / "split-1" / "best-loss" / "test" / "interpret-demo"
    assert result.stdout.splitlines()[-1] == "maps/split-1/best-loss/test/interpret-demo"
    names = sorted(p.name for p in folder.iterdir())
    assert len(names) == 2 * 11 + 7 and "mean_image-0_map.nii.gz" in names and "interpret.json" in names
    assert {"mean_image-0_map.png", "mean_image-0_map_glass.png", "index.html", "figures.json"} <= set(names)
    assert (root / "maps" / "reports" / "test" / "interpret-demo.html").is_file()
    mean = torch.load(folder / "mean_image-0_map.pt", weights_only=True)
    individual = [torch.load(p, weights_only=True) for p in sorted(folder.glob("sub-*.pt"))]
    assert torch.allclose(mean, torch.stack(individual).mean(0), rtol=1e-5, atol=1e-12)
    assert "done: 22 map(s) of 11 session(s)" in result.stderr

    # Run again: the demo folder is rebuilt, anything else is never replaced.
    assert synthetic_main(["demo", str(root), "--epochs", "1"]) == 0
    assert not folder.exists()
    other = tmp_path / "mine"
    other.mkdir()
    assert synthetic_main(["demo", str(other)]) == 1 and list(other.iterdir()) == []
