"""Property-based tests: whatever a participants TSV or a maps.json holds, parsing gives either a valid
result or a MapsInterpretError (a one-line message), never another exception."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maps_interpret.errors import MapsInterpretError
from maps_interpret.plan.participants import load_participants

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
CELL = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=12)
ROWS = st.lists(st.lists(st.one_of(CELL, st.sampled_from(["AD", "CN", "sub-01", "ses-M000", "../x", ""])),
                         min_size=0, max_size=5), max_size=6)
HEADERS = st.lists(st.one_of(st.sampled_from(["participant_id", "session_id", "diagnosis", "cohort", "path",
                                              "diagnoses", "age", ""]), CELL), max_size=6)


@SETTINGS
@given(header=HEADERS, rows=ROWS, multi_cohort=st.booleans(), separator=st.sampled_from(["\t", "\n", "\r\n"]))
def test_any_participants_tsv_parses_or_fails_cleanly(tmp_path, header, rows, multi_cohort, separator):
    path = tmp_path / "p.tsv"
    path.write_text(separator.join(["\t".join(header)] + ["\t".join(r) for r in rows]), encoding="utf-8")
    try:
        participants = load_participants(path, ["AD", "CN"], multi_cohort, "diagnosis")
    except MapsInterpretError as error:
        assert "\n" not in str(error)
        return
    assert participants.rows and all(set(r) <= set(participants.columns) for r in participants.rows)


JSON = st.recursive(st.none() | st.booleans() | st.integers(-5, 300) | st.floats(allow_nan=False) | CELL,
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(CELL, inner, max_size=4),
                    max_leaves=8)
VALUES = st.one_of(JSON, st.sampled_from(["image", "patch", "slice", "roi", "rgb", "single", "t1-linear", "custom",
                                          0, 1, 2, 3, 8, -1, [1, 2], [2], [], [1, 8, 8, 8], [3, 8, 8], True,
                                          {"pattern": "*.nii.gz"}, ["a", "b"], "Conv4_FC3", "RandomArchitecture",
                                          "resnet18", "regression"]))
KEYS = ["architecture", "input_size", "output_size", "dropout", "mode", "preprocessing_dict", "network_task",
        "label_code", "normalize", "size_reduction", "size_reduction_factor", "multi_network", "diagnoses",
        "convolutions_dict", "n_fcblocks", "network_normalization"]
PREP_KEYS = ["mode", "patch_size", "stride_size", "slice_direction", "slice_mode", "discarded_slices",
             "num_slices", "roi_list", "uncropped_roi", "prepare_dl", "file_type", "preprocessing"]


@SETTINGS
@given(changes=st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=4),
       prep_changes=st.dictionaries(st.sampled_from(PREP_KEYS), VALUES, max_size=3))
def test_any_maps_json_plans_or_fails_cleanly(synthetic_demo, tmp_path, changes, prep_changes):
    from maps_interpret.data.elements import layout_for
    from maps_interpret.maps import open_maps
    from maps_interpret.models import check_weights, output_count
    from maps_interpret.data.transforms import Preprocess

    maps_dir = tmp_path / "maps"
    if not maps_dir.exists():
        shutil.copytree(Path(synthetic_demo) / "maps", maps_dir)
    params = json.loads((Path(synthetic_demo) / "maps" / "maps.json").read_text())
    params.update(changes)
    if isinstance(params.get("preprocessing_dict"), dict):
        params["preprocessing_dict"] = {**params["preprocessing_dict"], **prep_changes}
    (maps_dir / "maps.json").write_text(json.dumps(params))
    try:
        maps = open_maps(maps_dir)
        Preprocess.from_params(maps.params)
        layout_for(maps.params["preprocessing_dict"], Path(synthetic_demo) / "data" / "caps")
        check_weights(maps, maps.split_dir(0) / "best-loss" / "model.pth.tar")
        output_count(maps)
    except MapsInterpretError as error:
        assert "\n" not in str(error)
