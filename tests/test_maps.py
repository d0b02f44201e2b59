"""Reading maps.json as ClinicaDL does (defaults, old names), splits and selection metrics."""

from __future__ import annotations

import json
import shutil

import pytest

from maps_interpret.errors import MapsInterpretError
from maps_interpret.maps import open_maps, read_parameters


def test_defaults_and_old_names(tmp_path):
    path = tmp_path / "maps.json"
    path.write_text(json.dumps({"model": "Conv5_FC3", "mode": "image", "use_cpu": True, "num_workers": 4,
                                "minmaxnormalization": False, "preprocessing": "t1-linear", "prepare_dl": True,
                                "input_size": [1, 8, 8, 8]}))
    params = read_parameters(path)
    assert params["architecture"] == "Conv5_FC3" and "model" not in params
    assert params["gpu"] is False and params["n_proc"] == 4 and params["normalize"] is False
    assert params["network_task"] == "classification" and params["label"] == "diagnosis"
    assert params["diagnoses"] == ["AD", "CN"] and params["size_reduction"] is False
    # Preprocessing options move into preprocessing_dict, prepare_dl included (ClinicaDL drops it by a typo).
    assert params["preprocessing_dict"] == {"mode": "image", "preprocessing": "t1-linear", "prepare_dl": True,
                                            "use_uncropped_image": False}


@pytest.mark.parametrize("text,message", [("{", "is not valid JSON"), ("[1, 2]", "must hold a JSON object"),
                                          ("{}", "has neither 'preprocessing_dict' nor 'mode'")])
def test_bad_maps_json(tmp_path, text, message):
    (tmp_path / "maps.json").write_text(text)
    with pytest.raises(MapsInterpretError, match=message):
        read_parameters(tmp_path / "maps.json")


def test_splits_metrics_and_paths(demo):
    maps = open_maps(demo / "maps")
    assert maps.split_name == "split" and maps.splits() == [0, 1]
    assert maps.selection_metrics(0) == ["accuracy", "loss"]
    (demo / "maps" / "split-0" / "best-empty").mkdir()  # ClinicaDL would count this folder as a metric
    assert maps.selection_metrics(0) == ["accuracy", "loss"]
    assert maps.results_dir(1, "loss", "test", "x") == demo / "maps" / "split-1" / "best-loss" / "test" / "interpret-x"
    assert maps.mode == "image" and maps.input_size == (1, 12, 14, 10)


def test_old_fold_naming(demo):
    for split in (0, 1):
        shutil.move(demo / "maps" / f"split-{split}", demo / "maps" / f"fold-{split}")
    maps = open_maps(demo / "maps")
    assert maps.split_name == "fold" and maps.splits() == [0, 1]
    assert maps.model_path(0, "loss") == demo / "maps" / "fold-0" / "best-loss" / "model.pth.tar"
