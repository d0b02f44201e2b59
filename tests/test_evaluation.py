"""--evaluate end to end: the engine's forward pass, the files, each row against the Python twin (faithfulness.py,
localisation.py) computed by hand on the same image and map, the refusals; and the known answers on the
template-based cohort with its planted atrophy: a trained model's gradients put far more relevance in the planted
region than its volume and delete faster than a random order; a randomised model and a model trained on shuffled
labels do not."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import pytest
import torch

from maps_interpret.analysis.faithfulness import Perturbation, curve, ranking
from maps_interpret.analysis.localisation import localisation
from maps_interpret.analysis.sanity import cascade
from maps_interpret.cli import main
from maps_interpret.data.caps import load_tensor
from maps_interpret.interpreter import Interpreter, sample_seed
from maps_interpret.models import load_model
from maps_interpret.maps import open_maps
from maps_interpret.settings import engine_settings
from maps_interpret.synthetic import LABEL_CODE, PLANTED_MASK, PLANTED_ROI, build_demo, tensor_path, train

RUN = ["--no-gpu", "-np", "0", "--selection_metrics", "loss"]
MASK = f"data/{PLANTED_MASK}"


def table(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text()), delimiter="\t"))


def summary(folder: Path) -> dict[str, float]:
    return {r["measure"]: float(r["mean"]) for r in table(folder / "evaluation_summary.tsv")}


def test_the_engines_forward_pass_is_the_models():
    from maps_interpret.models.conv import conv5_fc3

    model = conv5_fc3((1, 12, 14, 10), 2, 0.0).eval()
    engine = Interpreter(model).engine(engine_settings("gradients"))
    batch = torch.rand(3, 1, 12, 14, 10)
    with torch.no_grad():
        assert torch.allclose(engine.outputs(batch), model(batch), atol=1e-6)
    assert not engine.outputs(batch).requires_grad


class _Viewing(torch.nn.Module):
    """A model whose forward views its feature map: fails on a channels-last volume."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 3, 3)

    def forward(self, x):
        score = self.conv(x).view(x.size(0), -1).mean(1, keepdim=True)
        return torch.cat([score, -score], 1)


def test_a_model_that_refuses_channels_last_volumes_gets_them_contiguous():
    model = _Viewing().eval()
    engine = Interpreter(model).engine(engine_settings("gradients"))
    batch = torch.rand(2, 1, 9, 8, 7)
    with pytest.raises(RuntimeError, match="view"):
        model(batch.to(memory_format=torch.channels_last_3d))
    for _ in range(2):  # the refused layout, then the remembered choice
        with torch.no_grad():
            assert torch.allclose(engine.outputs(batch), model(batch), atol=1e-6)


def test_each_row_is_the_python_twins_on_the_same_image(demo):
    """The run's curves and measures of one session, recomputed outside the run: the map from the Interpreter,
    the curves by faithfulness.curve through the model, the measures by localisation()."""
    assert main(["maps", "test", "ev", "gradients", "--evaluate", "--evaluation_steps", "5", "--evaluation_orders",
                 "map", "--evaluation_orders", "random", "--evaluation_mask", MASK, "--target_node", "1",
                 *RUN]) == 0
    folder = demo / "maps" / "split-0" / "best-loss" / "test" / "interpret-ev"
    rows = table(folder / "evaluation.tsv")
    assert [r["participant_id"] for r in rows] == ["sub-TE01", "sub-TE01", "sub-TE02", "sub-TE03"]
    assert list(rows[0]) == ["participant_id", "session_id", "image_id", "target", "deletion_map_auc",
                             "deletion_random_auc", "insertion_map_auc", "insertion_random_auc",
                             "deletion_map_auc_output", "deletion_random_auc_output", "insertion_map_auc_output",
                             "insertion_random_auc_output", "relevance_mass", "rank_accuracy", "auroc",
                             "pointing_game", "mask_fraction"]
    interpreter = Interpreter.from_maps("maps", split=0, selection_metric="loss")
    session = SimpleNamespace(participant_id="sub-TE02", session_id="ses-M000")
    image = interpreter.preprocess(load_tensor(tensor_path(Path("data/caps"), "sub-TE02", "ses-M000")))
    map_ = interpreter.attribute(image.unsqueeze(0), "gradients", 1)[0]
    mask = torch.from_numpy(nib.load(MASK).get_fdata() > 0)
    row = next(r for r in rows if r["participant_id"] == "sub-TE02")

    def model(batch):
        with torch.no_grad():
            return interpreter.model(batch)

    generator = torch.Generator().manual_seed(sample_seed(session, 0))
    positions = {order: ranking(map_, order, "morf", generator) for order in ("map", "random")}  # the run's draws
    expected = {}
    for kind in ("deletion", "insertion"):
        for order in ("map", "random"):
            position = positions[order]
            if kind == "insertion" and order == "random":  # voxels put back in the reverse of the random deletion
                position = position.numel() - 1 - position
            expected[f"{kind}_{order}"] = curve(model, image, position, 1, kind,
                                                Perturbation(steps=5, replacement="blur"))
    for name, result in expected.items():
        assert float(row[f"{name}_auc"]) == pytest.approx(result.auc(), abs=1e-5), name
        assert float(row[f"{name}_auc_output"]) == pytest.approx(result.auc(False), abs=1e-4), name
    for measure, value in localisation(map_, mask).items():
        assert float(row[measure]) == pytest.approx(value, abs=1e-6), measure
    record = json.loads((folder / "evaluation.json").read_text())
    assert record["steps"] == 5 and record["replacement"] == "blur" and record["mask_sha256"]
    curves = table(folder / "evaluation_curves.tsv")
    assert {c["curve"] for c in curves} == set(expected) and len(curves) == 4 * 6
    assert (folder / "evaluation.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("group_by", ["diagnosis", "predicted"])
def test_group_by_gives_each_subset_its_summary_and_curves(demo, group_by):
    assert main(["maps", "test", f"ev-{group_by}", "gradients", "--evaluate", "--evaluation_steps", "4",
                 "--group_by", group_by, *RUN]) == 0
    folder = demo / "maps" / "split-0" / "best-loss" / "test" / f"interpret-ev-{group_by}"
    rows = table(folder / "evaluation.tsv")
    members = {(r["participant_id"], r["session_id"]): r[group_by] for r in table(folder / "subsets.tsv")}
    assert {(r["participant_id"], r["session_id"]): r[group_by] for r in rows} == members  # the maps' own subsets
    names = sorted(set(members.values()))
    summaries = table(folder / "evaluation_summary.tsv")
    assert [r["subset"] for r in summaries if r["measure"] == "deletion_abs_auc"] == ["all", *names]
    for name in ["all", *names]:
        mine = [float(r["deletion_abs_auc"]) for r in rows if name in ("all", r[group_by])]
        line = next(r for r in summaries if r["subset"] == name and r["measure"] == "deletion_abs_auc")
        assert int(line["n"]) == len(mine) and float(line["mean"]) == pytest.approx(sum(mine) / len(mine), abs=1e-6)
    curves = table(folder / "evaluation_curves.tsv")
    assert sorted({r["subset"] for r in curves}) == sorted(["all", *names])
    assert len(curves) == (1 + len(names)) * 4 * 5
    record = json.loads((folder / "evaluation.json").read_text())
    assert record["group_by"] == group_by and sorted(record["subsets"]) == names


def test_a_region_of_the_caps_is_the_same_mask(demo, capsys):
    """--evaluation_roi finds the region's mask where ClinicaDL's roi mode finds its masks (the demo's CAPS holds
    the planted region, `roi-planted`): the same rows as the mask given by path; an unknown region lists those
    there."""
    folder = demo / "data" / "caps" / "masks" / "tpl-MNI152NLin2009cSym"  # the demo's CAPS holds the planted region
    assert (nib.load(folder / PLANTED_ROI).get_fdata() == nib.load(MASK).get_fdata()).all()
    common = ["--evaluate", "--evaluation_steps", "2", "--evaluation_orders", "abs", *RUN]
    assert main(["maps", "test", "by-path", "gradients", "--evaluation_mask", MASK, *common]) == 0
    assert main(["maps", "test", "by-name", "gradients", "--evaluation_roi", "planted", *common]) == 0
    results = demo / "maps" / "split-0" / "best-loss" / "test"
    assert table(results / "interpret-by-name" / "evaluation.tsv") == table(results / "interpret-by-path" /
                                                                             "evaluation.tsv")
    record = json.loads((results / "interpret-by-name" / "evaluation.json").read_text())
    assert record["roi"] == "planted" and record["mask"].endswith("_roi-planted_mask.nii.gz")
    capsys.readouterr()
    assert main(["maps", "test", "none", "gradients", "--evaluation_roi", "amygdala", *common]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--evaluation_roi: no mask for region 'amygdala'" in err[0] and "there: planted" in err[0]
    assert main(["maps", "test", "both", "gradients", "--evaluation_roi", "planted", "--evaluation_mask", MASK,
                 *common]) == 2
    assert "both name the region" in capsys.readouterr().err


def test_refusals_are_one_line(demo, capsys):
    assert main(["maps", "test", "x", "gradients", "--evaluation_mask", MASK, *RUN]) == 2
    assert "--evaluation_mask is an option of --evaluate" in capsys.readouterr().err
    wrong = demo / "wrong.nii.gz"
    nib.save(nib.Nifti1Image(torch.ones(4, 4, 4).numpy(), torch.eye(4).numpy()), wrong)
    assert main(["maps", "test", "x", "gradients", "--evaluate", "--evaluation_mask", str(wrong), *RUN]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has shape (4, 4, 4), the images (16, 18, 14): resample it" in err[0]


@pytest.fixture
def demo(tmp_path: Path, monkeypatch) -> Path:
    root = tmp_path / "demo"
    build_demo(root, shape=(16, 18, 14), n_train=4, n_test=3, trained=False)
    monkeypatch.chdir(root)
    assert main(["maps", "test", "first", "gradients", "--participants_tsv", "data/test.tsv", "--caps_directory",
                 "data/caps", *RUN]) == 0
    return root


# -- known answers ----------------------------------------------------------------------------------------------------

def _replace_model(maps: Path, state: dict) -> None:
    checkpoint = torch.load(maps / "split-0" / "best-loss" / "model.pth.tar", weights_only=False)
    checkpoint["model"] = state
    torch.save(checkpoint, maps / "split-0" / "best-loss" / "model.pth.tar")


def _shuffled_labels_model(root: Path) -> dict:
    """Split 0's Conv5_FC3 trained as the demo's, on its labels shuffled: it cannot learn the atrophy."""
    from maps_interpret.models.conv import conv5_fc3

    maps = open_maps(root / "maps")
    parts = []
    for part in ("train", "validation"):
        rows = table(root / "maps" / "groups" / part / "split-0" / "data.tsv")
        x = torch.stack([load_tensor(tensor_path(root / "data" / "caps", r["participant_id"], r["session_id"]))
                         for r in rows])
        y = torch.tensor([LABEL_CODE[r["diagnosis"]] for r in rows])
        parts += [x, y[torch.randperm(len(y), generator=torch.Generator().manual_seed(7))]]
    torch.manual_seed(0)
    model = conv5_fc3(tuple(maps.params["input_size"]), 2, 0.0)
    return train(model, *parts, seconds=0, seed=0, epochs=25)["loss"]["model"]


@pytest.mark.slow
def test_known_answers_on_the_planted_cohort(tmp_path: Path, monkeypatch):
    root = tmp_path / "cohort"
    build_demo(root, shape=(32, 40, 32), n_train=40, n_test=10, epochs=25)
    randomised, shuffled = tmp_path / "randomised", tmp_path / "shuffled"
    shutil.copytree(root, randomised)
    shutil.copytree(root, shuffled)
    model = load_model(open_maps(randomised / "maps"), randomised / "maps" / "split-0" / "best-loss" / "model.pth.tar")
    for _ in cascade(model):  # every layer re-initialised, as the sanity check's last step
        pass
    _replace_model(randomised / "maps", model.state_dict())
    _replace_model(shuffled / "maps", _shuffled_labels_model(shuffled))
    found = {}
    group = ["--participants_tsv", "data/test.tsv", "--caps_directory", "data/caps"]
    for name, folder in (("trained", root), ("randomised", randomised), ("shuffled", shuffled)):
        monkeypatch.chdir(folder)
        for method in ("gradients", "integrated-gradients"):
            options = (group if method == "gradients" else []) + (["--n_steps", "8"] if method != "gradients" else [])
            assert main(["maps", "test", method, method, *options, "--evaluate", "--evaluation_mask", MASK,
                         "--target_node", "predicted", "--evaluation_steps", "10", *RUN]) == 0
            found[name, method] = summary(folder / "maps" / "split-0" / "best-loss" / "test" / f"interpret-{method}")
    for method in ("gradients", "integrated-gradients"):
        trained = found["trained", method]
        chance = trained["mask_fraction"]
        assert trained["relevance_mass"] > 3 * chance, (method, trained)
        assert trained["deletion_abs_auc"] < 0.9 * trained["deletion_random_auc"], (method, trained)
        for other in ("randomised", "shuffled"):
            theirs = found[other, method]
            # NaN: a map of zeros (a collapsed network), no relevance anywhere; `not >=` counts it as not pointing.
            # Integrated gradients multiply by the input, whose contrast the planted region has (fluid beside
            # tissue) whatever the weights: above chance even for a random network, far below the trained one.
            assert not theirs["relevance_mass"] >= 0.6 * trained["relevance_mass"], (method, other, theirs)
            if method == "gradients":
                assert not theirs["relevance_mass"] >= 2 * chance, (method, other, theirs)
            assert theirs["deletion_abs_auc"] >= 0.98 * theirs["deletion_random_auc"], (method, other, theirs)


@pytest.mark.parametrize("maps", ["maps_image_cls", "maps_patch_cls", "maps_slice_reg"])
def test_the_clinicadl_fixtures(clinicadl_fixture: Path, tmp_path: Path, monkeypatch, maps: str):
    """Every mode of the real ClinicaDL 1.6.1 MAPS: one row per element map; a regression has no probability,
    its curves are its outputs."""
    shutil.copytree(clinicadl_fixture / "data", tmp_path / "data")
    shutil.copytree(clinicadl_fixture / f"{maps}_clean", tmp_path / maps)
    monkeypatch.chdir(tmp_path)
    assert main([maps, "validation", "ev", "gradients", "--evaluate", "--evaluation_steps", "3", *RUN]) == 0
    folder = next((tmp_path / maps).glob("split-*/best-loss/validation/interpret-ev"))  # the splits trained
    rows = table(folder / "evaluation.tsv")
    maps_per_session = {"maps_image_cls": 1, "maps_patch_cls": 4, "maps_slice_reg": 28}[maps]
    assert len(rows) == 6 * maps_per_session
    regression = maps == "maps_slice_reg"
    assert all((r["deletion_abs_auc"] == "nan") == regression for r in rows)
    assert all(r["deletion_abs_auc_output"] != "nan" for r in rows)
    assert f"mean_{'output' if regression else 'probability'}" in (folder / "evaluation_curves.tsv").read_text()
