"""The batched attribution methods of the C++ engine against their pure-PyTorch twins (reference.py), and
the properties that cannot hold by accident: integrated gradients' completeness, smoothgrad without noise is
the gradient, a seed makes smoothgrad reproducible whatever the batch; per-sample targets (label,
predicted) and magnitudes (--abs)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import DEVICES, core_noises, engine_sums, make_engine
from maps_interpret.engine import Engine
from maps_interpret.models.conv import conv5_fc3
from maps_interpret.models.export import to_torchscript
from reference import (reference_gradients, reference_input_x_gradient,
                                      reference_integrated_gradients, reference_smoothgrad)

SHAPE = (1, 12, 14, 12)
RTOL = 1e-5  # of each map's largest |value|: batch composition changes convolution rounding, not decisions


def close(ours: torch.Tensor, reference: torch.Tensor, rtol: float = RTOL) -> bool:
    scale = reference.abs().max().item()
    return ours.shape == reference.shape and (ours.cpu() - reference.cpu()).abs().max().item() <= rtol * scale


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(3)
    return conv5_fc3(SHAPE, output_size=2, dropout=0.0).eval()


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.rand((3, *SHAPE), generator=torch.Generator().manual_seed(4))


def engine(model, device="cpu", **options) -> Engine:
    return make_engine(to_torchscript(model), device=device, **options)


@pytest.mark.parametrize("device", DEVICES)
def test_input_x_gradient_equals_its_twin(model, batch, device):
    maps = engine(model, device, method="input-x-gradient").accumulate(batch, [0, 0, 0], return_maps=True)
    assert close(maps, reference_input_x_gradient(model.to(device), batch.to(device), 0))


def test_smoothgrad_equals_its_twin_with_the_same_noise(model, batch):
    seeds = [11, 12, 13]
    maps = engine(model, method="smoothgrad", n_samples=5, noise_level=0.2, seed=7).accumulate(
        batch, [0, 0, 0], return_maps=True, seeds=seeds)
    noises = core_noises(7, seeds, 5, SHAPE)
    assert close(maps, reference_smoothgrad(model, batch, 0, noises, 0.2))
    assert not close(maps, reference_gradients(model, batch, 0), rtol=1e-2)  # the noise did something


def test_smoothgrad_without_noise_is_the_gradient(model, batch):
    maps = engine(model, method="smoothgrad", n_samples=4, noise_level=0.0).accumulate(
        batch, [0, 0, 0], return_maps=True, seeds=[1, 2, 3])
    plain = engine(model).accumulate(batch, [0, 0, 0], return_maps=True)
    assert close(maps, plain, rtol=1e-6)


def test_smoothgrad_is_reproducible_whatever_the_batch_or_chunk(model, batch):
    options = dict(method="smoothgrad", n_samples=3, noise_level=0.1, seed=5, chunk_size=1)
    together = engine(model, **options).accumulate(batch, [0, 0, 0], return_maps=True, seeds=[21, 22, 23])
    again = engine(model, **options).accumulate(batch, [0, 0, 0], return_maps=True, seeds=[21, 22, 23])
    alone = engine(model, **options).accumulate(batch[1:2], [0], return_maps=True, seeds=[22])
    assert torch.equal(together, again)
    assert torch.equal(together[1], alone[0])  # one row per forward: the same computation, bit for bit
    chunked = engine(model, **{**options, "chunk_size": 4}).accumulate(batch, [0, 0, 0], return_maps=True,
                                                                 seeds=[21, 22, 23])
    assert close(chunked, together)
    other = engine(model, **{**options, "seed": 6}).accumulate(batch, [0, 0, 0], return_maps=True,
                                                              seeds=[21, 22, 23])
    assert not close(other, together, rtol=1e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_integrated_gradients_equals_its_twin(model, batch, device):
    maps = engine(model, device, method="integrated-gradients", n_steps=6, baseline=0.1, chunk_size=4).accumulate(
        batch, [0, 0, 0], return_maps=True)
    assert close(maps, reference_integrated_gradients(model.to(device), batch.to(device), 0, 6, baseline=0.1))


class Smooth(nn.Module):
    """A network without kinks (tanh): the midpoint rule converges as 1/steps^2."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 3, 3)
        self.fc = nn.Linear(3 * 10 * 12 * 10, 2)

    def forward(self, x):
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


def test_integrated_gradients_are_complete():
    """sum(attributions) = f(x) - f(baseline) up to the midpoint rule's error: within 0.5% at 64 steps for
    this smooth network, where 1 step is off by far more (the test can fail)."""
    torch.manual_seed(8)
    net = Smooth().eval()
    x = torch.rand((2, *SHAPE), generator=torch.Generator().manual_seed(9))
    scripted = torch.jit.script(net)
    with torch.no_grad():
        gap = net(x)[:, 1] - net(torch.zeros_like(x))[:, 1]
    sums = make_engine(scripted, method="integrated-gradients", target=1, n_steps=64).accumulate(
        x, [0, 0], return_maps=True).flatten(1).sum(1)
    assert ((sums - gap).abs() <= 5e-3 * gap.abs()).all(), (sums, gap)
    coarse = make_engine(scripted, method="integrated-gradients", target=1, n_steps=1).accumulate(
        x, [0, 0], return_maps=True).flatten(1).sum(1)
    assert ((coarse - gap).abs() > 5e-3 * gap.abs()).any()


@pytest.mark.parametrize("method", ["gradients", "smoothgrad", "integrated-gradients"])
def test_targets_per_sample_given_and_predicted(model, batch, method):
    options = dict(method=method, n_samples=2, noise_level=0.0, n_steps=3)
    given = engine(model, target_mode="given", **options).accumulate(batch, [0, 0, 0], return_maps=True,
                                                                    targets=[1, 0, 1], seeds=[1, 2, 3])
    node = {t: engine(model, target=t, **options).accumulate(batch, [0, 0, 0], return_maps=True, seeds=[1, 2, 3])
            for t in (0, 1)}
    for i, t in enumerate([1, 0, 1]):
        assert close(given[i], node[t][i])
    with torch.no_grad():
        predicted_classes = model(batch).argmax(1).tolist()
    predicted = engine(model, target_mode="predicted", **options).accumulate(batch, [0, 0, 0], return_maps=True,
                                                                            seeds=[1, 2, 3])
    for i, t in enumerate(predicted_classes):
        assert close(predicted[i], node[t][i])


def test_abs_accumulates_magnitudes(model, batch):
    signed = engine(model).accumulate(batch, [0, 0, 0], return_maps=True)
    magnitude = engine(model, abs=True)
    maps = magnitude.accumulate(batch, [0, 0, 0], return_maps=True)
    assert torch.equal(maps, signed.abs())
    assert torch.equal(engine_sums(magnitude)[0], maps[0] + maps[1] + maps[2])


def test_bad_method_options_are_one_line_errors(model):
    """Each value is checked once, where the settings are made (the method table's ranges)."""
    for options, message in ((dict(method="smoothgrad", n_samples=0), "--n_samples must be at least 1, got 0"),
                             (dict(method="integrated-gradients", chunk_size=-1), "--chunk_size must be 0 or more"),
                             (dict(noise_level=-0.5), "--noise_level must be 0 or more, got -0.5"),
                             (dict(target_mode="best"), "target mode 'best' is not one of node, given, predicted"),
                             (dict(group_by="age"), "group_by 'age' is not one of"),
                             (dict(n_sample=3), "unknown method parameter 'n_sample'"),
                             (dict(method="smoothgrad", noise_tunnel=True), "smoothgrad already averages"),
                             (dict(target=-1), "--target_node must be 0 or more")):
        with pytest.raises(ValueError, match=message):
            engine(model, **options)


# -- the command -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from maps_interpret.synthetic import build_demo

    root = tmp_path_factory.mktemp("methods") / "demo"
    build_demo(root, shape=(16, 20, 16), n_train=4, n_test=3, trained=False)
    return root


def interpret(root, name, *options):
    import os

    from maps_interpret.cli import main

    cwd = os.getcwd()
    os.chdir(root)
    try:
        group = [] if (root / "maps" / "groups" / "test").is_dir() else [
            "--participants_tsv", "data/test.tsv", "--caps_directory", "data/caps"]
        return main(["maps", "test", name, *options, *group, "--no-gpu", "-np", "0", "--batch_size", "2",
                     "--save_individual"])
    finally:
        os.chdir(cwd)


def folder(root, name):
    return root / "maps" / "split-0" / "best-loss" / "test" / f"interpret-{name}"


def test_label_targets_map_each_session_with_its_own_class(demo):
    from maps_interpret.synthetic import LABEL_CODE

    for name, target in (("label", "label"), ("node0", "0"), ("node1", "1")):
        assert interpret(demo, name, "--target_node", target) == 0
    rows = [line.split("\t") for line in (demo / "data" / "test.tsv").read_text().splitlines()]
    header = rows[0]
    for row in rows[1:]:
        values = dict(zip(header, row))
        stem = f"{values['participant_id']}_{values['session_id']}_image-0_map.pt"
        node = LABEL_CODE[values["diagnosis"]]
        assert torch.equal(torch.load(folder(demo, "label") / stem), torch.load(folder(demo, f"node{node}") / stem))


def test_smoothgrad_without_noise_gives_the_gradients_means(demo):
    assert interpret(demo, "grads") == 0
    assert interpret(demo, "smooth0", "smoothgrad", "--noise_level", "0", "--n_samples", "2") == 0
    assert close(torch.load(folder(demo, "smooth0") / "mean_image-0_map.pt"),
                 torch.load(folder(demo, "grads") / "mean_image-0_map.pt"), rtol=1e-6)


def test_label_and_predicted_are_refused_for_a_regression_maps(demo, tmp_path, capsys):
    import json
    import shutil

    root = tmp_path / "regression"
    shutil.copytree(demo, root)
    params = json.loads((root / "maps" / "maps.json").read_text())
    params["label_code"], params["network_task"] = None, "regression"
    (root / "maps" / "maps.json").write_text(json.dumps(params))
    for target in ("predicted", "label"):
        assert interpret(root, "x", "--target_node", target) == 2
        assert f"--target_node {target} needs a classification MAPS" in capsys.readouterr().err


def test_the_zero_fraction_of_each_model_is_logged_when_counted(demo, monkeypatch, caplog):
    """Under --amp (GPU only) the engine counts exactly-zero values; the run reports them per model."""
    monkeypatch.setattr(Engine, "zero_fraction", lambda self: 0.25)
    with caplog.at_level("INFO", logger="maps_interpret"):
        assert interpret(demo, "zeros") == 0
    assert caplog.text.count("25.0000% of the gradient values are exactly zero under --amp") == 2  # 2 splits
