"""--sanity_check (Adebayo et al.'s cascading randomisation) on models whose answer is known: a map that does
not depend on the parameters fails, a CNN's gradient map passes; the randomisation is cumulative, deterministic
and never touches the trained weights; the files of a run."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import make_engine, with_trained_batchnorm
from maps_interpret.analysis import sanity
from maps_interpret.runner.run import run
from maps_interpret.config import InterpretConfig
from maps_interpret.errors import MapsInterpretError
from maps_interpret.models.conv import conv5_fc3
from maps_interpret.models.export import to_torchscript
from maps_interpret.anatomy import subject as make_image
from maps_interpret.synthetic import PATTERN, build_demo

SHAPE = (1, 12, 14, 10)


class Scale(nn.Module):
    """x * softplus(a): a positive factor, whatever the value of a."""

    def __init__(self, value: float):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(value))

    def reset_parameters(self) -> None:
        nn.init.normal_(self.a, std=3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * F.softplus(self.a)


class Insensitive(nn.Module):
    """Both output nodes are softplus(a1) * softplus(a2) * sum(x * w), w a fixed buffer: the input gradient is
    w times a positive number, so every map is the trained map up to a positive scale."""

    def __init__(self):
        super().__init__()
        self.register_buffer("w", torch.randn(SHAPE, generator=torch.Generator().manual_seed(5)))
        self.first = Scale(0.7)
        self.second = Scale(-1.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = self.second(self.first((x * self.w).flatten(1).sum(1)))
        return torch.stack([total, total], 1)


def images() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    batch = torch.stack([make_image(SHAPE[1:], diagnosis, generator) for diagnosis in ("AD", "CN", "AD")])
    low = batch.flatten(1).min(1).values.view(-1, 1, 1, 1, 1)
    high = batch.flatten(1).max(1).values.view(-1, 1, 1, 1, 1)
    return (batch - low) / (high - low)  # min-max, as the run preprocesses images


def mean_maps(model: nn.Module) -> dict[int, torch.Tensor]:
    """The engine's gradients mean over three images (element 0)."""
    engine = make_engine(to_torchscript(model), method="gradients")
    engine.accumulate(images(), [0, 0, 0])
    return engine.means()


def cnn() -> nn.Module:
    torch.manual_seed(3)
    return with_trained_batchnorm(conv5_fc3(SHAPE, output_size=2, dropout=0.0))


def test_a_map_that_does_not_depend_on_the_parameters_fails():
    model = Insensitive()
    rows = sanity.run_cascade(model, mean_maps, mean_maps(Insensitive()))
    assert [(row["step"], row["layer"]) for row in rows] == [(1, "second"), (2, "first")]  # output first
    assert model.first.a.item() != 0.7 and model.second.a.item() != -1.2  # both were re-initialised
    for row in rows:
        assert row["spearman_abs"] == pytest.approx(1.0, abs=1e-6)
        assert row["pearson"] == pytest.approx(1.0, abs=1e-6) and row["dice_top10"] == 1.0
    result = sanity.verdict(rows, mean_maps(Insensitive()))
    assert result["verdict"] == "fails" and result["layers"] == 2
    assert result["elements"] == {"0": {"spearman_abs": 1.0, "verdict": "fails"}}


def test_a_cnns_gradient_map_passes():
    trained = mean_maps(cnn())
    rows = sanity.run_cascade(cnn(), mean_maps, trained)
    last = rows[-1]
    assert last["layers_randomised"] == 13  # 5 conv + 5 batch norm + 3 linear
    assert last["spearman_abs"] < 0.5 * sanity.THRESHOLD, last
    assert rows[0]["spearman_abs"] > last["spearman_abs"]  # the top layer alone changes less than all of them
    assert sanity.verdict(rows, trained)["verdict"] == "passes"


def test_flat_maps_are_undefined_and_a_flattened_map_has_changed():
    """A trained map the ReLU zeroed (Grad-CAM) cannot be compared; a random network's constant map has changed."""
    ramp = torch.linspace(-1, 2, 40).reshape(1, 2, 4, 5)
    flat = torch.zeros_like(ramp)
    changed = sanity.similarities(ramp, flat)
    assert math.isnan(changed["spearman_abs"]) and math.isnan(changed["dice_top10"])
    rows = [{"step": 1, "element": 0, **changed}, {"step": 1, "element": 1, **sanity.similarities(flat, ramp)}]
    result = sanity.verdict(rows, {0: ramp, 1: flat})
    assert [entry["verdict"] for entry in result["elements"].values()] == ["passes", "undefined"]
    assert result["verdict"] == "undefined"
    assert sanity.verdict(rows[:1], {0: ramp})["verdict"] == "passes"


def test_layers_are_listed_from_the_output_down():
    """Conv5_FC3: Linear layers of `fc`, then each block's batch norm and convolution, last block first."""
    blocks = [(f"convolutions.{i + 1}", f"convolutions.{i}") for i in (16, 12, 8, 4, 0)]
    assert [name for name, _ in sanity.layers(cnn())] == ["fc.6", "fc.4", "fc.2", *sum(blocks, ())]


def test_randomisation_is_cumulative_and_deterministic():
    trained = cnn()
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    global_state = torch.random.get_rng_state()
    model, again = cnn(), cnn()
    order = [name for name, _ in sanity.layers(model)]
    for (step, name), (step_again, _) in zip(sanity.cascade(model), sanity.cascade(again)):
        assert step == step_again and name == order[step - 1]
        state = model.state_dict()
        for key, value in state.items():
            layer = key.rsplit(".", 1)[0]
            randomised = layer in order[:step]
            if key.endswith("num_batches_tracked"):
                continue
            assert torch.equal(value, before[key]) != randomised, (step, key)  # exactly the top `step` layers
            assert torch.equal(value, again.state_dict()[key])  # the same values in a second cascade
    assert torch.equal(torch.random.get_rng_state(), global_state)  # the global RNG was not used
    norm = model.convolutions[1]  # batch norm: statistics reset too
    assert torch.equal(norm.running_mean, torch.zeros(8)) and torch.equal(norm.running_var, torch.ones(8))


def small_cnn() -> nn.Module:
    torch.manual_seed(4)
    return with_trained_batchnorm(nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(), nn.MaxPool3d(2), nn.Flatten(),
        nn.Linear(4 * 6 * 7 * 5, 2)))


def test_two_runs_give_the_same_table(tmp_path):
    for name in ("first", "second"):
        rows = sanity.run_cascade(small_cnn(), mean_maps, mean_maps(small_cnn()))
        sanity.write_table(tmp_path / f"{name}.tsv", rows, "image", 3)
    first = (tmp_path / "first.tsv").read_text()
    assert [line.split("\t")[:3] for line in first.splitlines()] == [
        ["step", "layer", "layers_randomised"], ["1", "5", "1"], ["2", "1", "2"], ["3", "0", "3"]]
    assert first == (tmp_path / "second.tsv").read_text()


def test_refused_for_torchscript_models(demo):
    maps = demo / "maps"
    params = json.loads((maps / "maps.json").read_text())
    params["architecture"] = "MyNet"
    (maps / "maps.json").write_text(json.dumps(params))
    scripted = torch.jit.script(conv5_fc3(SHAPE, 2, 0.0).eval())
    for split in (0, 1):
        scripted.save(str(maps / f"split-{split}/best-loss/model.torchscript.pt"))
    with pytest.raises(MapsInterpretError, match="TorchScript .* cannot be re-initialised: remove --sanity_check"):
        run(InterpretConfig(input_maps_directory=maps, data_group="train", name="s", gpu=False, n_proc=0,
                            sanity_check=True))
    assert not (maps / "split-0/best-loss/train/interpret-s").exists()


def read_tsv(path: Path) -> list[dict]:
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:]]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def roi_maps(root: Path) -> Path:
    """A synthetic MAPS of two ROI elements per image (8^3 each), random weights."""
    preprocessing = {"preprocessing": "t1-linear", "mode": "roi", "use_uncropped_image": False,
                     "roi_list": ["left", "right"], "uncropped_roi": False, "prepare_dl": False,
                     "file_type": {"pattern": PATTERN, "description": "t1-linear", "needed_pipeline": "t1-linear"}}
    regions = {"left": (slice(2, 10), slice(3, 11), slice(4, 12)), "right": (slice(9, 17), slice(10, 18), slice(5, 13))}
    build_demo(root, shape=(20, 22, 18), n_train=4, n_test=3, trained=False, preprocessing=preprocessing,
               input_size=(1, 8, 8, 8), regions=regions)
    return root / "maps"


def test_a_run_writes_the_check_into_each_folder(tmp_path, monkeypatch):
    import matplotlib.image

    maps = roi_maps(tmp_path / "demo")
    monkeypatch.chdir(tmp_path / "demo")
    weights = {split: sha256(maps / f"split-{split}/best-loss/model.pth.tar") for split in (0, 1)}
    summary = run(InterpretConfig(input_maps_directory=maps, data_group="test", name="few", gpu=False, n_proc=0,
                                  sanity_check=True, sanity_sessions=1, participants_tsv=Path("data/test.tsv"),
                                  caps_directory=Path("data/caps")))
    assert len(summary.outputs) == 2
    for split, folder in enumerate(summary.outputs):
        rows = read_tsv(folder / sanity.TSV)
        assert list(rows[0]) == ["step", "layer", "layers_randomised", "roi_id", "n_sessions", *sanity.MEASURES]
        # one row per (step, element): 13 layers of Conv5_FC3, 2 ROIs
        assert [(row["layers_randomised"], row["roi_id"]) for row in rows] == [
            (str(step), str(roi)) for step in range(1, 14) for roi in (0, 1)]
        assert {row["n_sessions"] for row in rows} == {"1"}  # --sanity_sessions 1 of the group's 4
        assert all(-1 <= float(row["pearson"]) <= 1 for row in rows)
        result = json.loads((folder / sanity.SUMMARY).read_text())
        assert result["n_sessions"] == 1 and result["verdict"] == "passes" and set(result["elements"]) == {"0", "1"}
        picture = matplotlib.image.imread(folder / sanity.PNG)
        assert picture.ndim == 3 and picture[..., :3].var() > 0
        record = json.loads((folder / "interpret.json").read_text())
        assert {sanity.TSV, sanity.PNG, sanity.SUMMARY} <= set(record["outputs"])
        assert sha256(maps / f"split-{split}/best-loss/model.pth.tar") == weights[split]  # trained weights untouched


def test_every_session_by_default(demo):
    """--sanity_sessions 0: the whole group, compared with the run's own means."""
    summary = run(InterpretConfig(input_maps_directory=Path("maps"), data_group="test", name="all", gpu=False,
                                  n_proc=0, batch_size=4, sanity_check=True, participants_tsv=Path("data/test.tsv"),
                                  caps_directory=Path("data/caps"), selection_metrics=["accuracy"]))
    sessions = len((demo / "data/test.tsv").read_text().splitlines()) - 1
    rows = read_tsv(summary.outputs[0] / sanity.TSV)
    assert len(rows) == 13 and {row["n_sessions"] for row in rows} == {str(sessions)}
    assert json.loads((summary.outputs[0] / "interpret.json").read_text())["n_sessions"] == sessions
