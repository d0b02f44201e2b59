"""Reading maps.json as ClinicaDL does (defaults, old names), splits and selection metrics."""

from __future__ import annotations

import json
import shutil

import pytest

from helpers import fixture_root
from maps_interpret.errors import MapsInterpretError
from maps_interpret.maps import PREPROCESSING_TYPES, TOP_LEVEL_TYPES, open_maps, read_parameters

# What ClinicaDL 1.6.1 itself writes as null, by task (its task managers: regression has no label code;
# maps.json of the fixture's regression MAPS). Also accepted as null, for MAPS of older versions that wrote
# them so: dropout, output_size (then derived from the task), label, and the optional preprocessing keys.
CLINICADL_NULLS = {"classification": set(), "regression": {"label_code"}}
NULL_FOR_OLD_MAPS = {"dropout", "output_size", "label", "preprocessing_dict.num_slices",
                     "preprocessing_dict.roi_custom_template", "preprocessing_dict.roi_custom_mask_pattern"}


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


@pytest.mark.skipif(fixture_root() is None, reason="ClinicaDL fixture not found")
@pytest.mark.parametrize("name", ["maps_image_cls_clean", "maps_slice_reg_clean", "maps_patch_cls_clean"])
def test_every_maps_json_clinicadl_wrote_is_read(clinicadl_fixture, name):
    maps = open_maps(clinicadl_fixture / name)
    assert maps.splits() and maps.params["network_task"] in ("classification", "regression")
    if maps.params["network_task"] == "regression":
        assert maps.params["label_code"] is None and maps.params["label"] == "age"


@pytest.mark.skipif(fixture_root() is None, reason="ClinicaDL fixture not found")
@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("key", list(TOP_LEVEL_TYPES) + [f"preprocessing_dict.{k}" for k in PREPROCESSING_TYPES])
def test_null_is_accepted_exactly_where_clinicadl_writes_it(clinicadl_fixture, tmp_path, task, key):
    source = {"classification": "maps_image_cls_clean", "regression": "maps_slice_reg_clean"}[task]
    params = json.loads((clinicadl_fixture / source / "maps.json").read_text())
    assert params["network_task"] == task
    table, _, name = key.rpartition(".")
    (params[table] if table else params)[name] = None
    (tmp_path / "maps.json").write_text(json.dumps(params))
    if key in CLINICADL_NULLS[task] | NULL_FOR_OLD_MAPS:
        read = read_parameters(tmp_path / "maps.json")
        assert (read[table] if table else read)[name] is None
    else:
        with pytest.raises(MapsInterpretError, match=rf"maps.json: {key.replace('.', '[.]')} must be "):
            read_parameters(tmp_path / "maps.json")


def test_reconstruction_is_refused_before_its_types_are_checked(tmp_path):
    (tmp_path / "maps.json").write_text(json.dumps({
        "network_task": "reconstruction", "architecture": "AE_Conv5_FC3", "label": None, "label_code": None,
        "output_size": [1, 8, 8, 8], "input_size": [1, 8, 8, 8], "preprocessing_dict": {"mode": "image"}}))
    with pytest.raises(MapsInterpretError, match="network_task 'reconstruction' is not supported: only "
                                                 "classification and regression CNNs can be interpreted"):
        read_parameters(tmp_path / "maps.json")
