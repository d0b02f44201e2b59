"""interpret.json: where a folder of maps came from, read back."""

from __future__ import annotations

import hashlib
import json
import os

import torch

from maps_interpret import __version__
from maps_interpret.cli import main
from maps_interpret.synthetic import build_demo


def test_every_interpret_folder_says_where_its_maps_came_from(tmp_path, monkeypatch):
    root = tmp_path / "demo"
    build_demo(root, shape=(12, 14, 12), n_train=4, n_test=3, trained=False)
    monkeypatch.chdir(root)
    assert main(["maps", "test", "x", "smoothgrad", "--n_samples", "3", "--participants_tsv", "data/test.tsv",
                 "--caps_directory", "data/caps", "--no-gpu", "-np", "0", "--save_individual", "--seed", "4"]) == 0
    sessions = len((root / "data" / "test.tsv").read_text().splitlines()) - 1
    for split in (0, 1):
        folder = root / "maps" / f"split-{split}" / "best-loss" / "test" / "interpret-x"
        record = json.loads((folder / "interpret.json").read_text())
        assert record["tool"] == {"name": "maps-interpret", "version": __version__}
        assert record["torch"] == torch.__version__ and record["device"]["type"] == "cpu"
        assert record["options"]["method"] == "smoothgrad" and record["options"]["data_group"] == "test"
        assert record["method"] == {"name": "smoothgrad", "target_node": 0, "abs": False, "n_samples": 3,
                                    "noise_level": 0.1, "seed": 4, "chunk_size": 0}
        model = root / "maps" / f"split-{split}" / "best-loss" / "model.pth.tar"
        assert record["model"]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
        assert record["model"]["split"] == split and record["model"]["selection_metric"] == "loss"
        assert record["n_sessions"] == sessions and record["n_elements"] == sessions
        assert record["outputs"] == sorted(p.name for p in folder.iterdir() if p.name != "interpret.json")
        assert record["elapsed_seconds"] > 0 and record["images_per_second"] > 0
    os.chdir(tmp_path)
