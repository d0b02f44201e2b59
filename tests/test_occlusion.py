"""Occlusion (csrc/methods/occlusion.cpp) against its twin (tests/reference.py: one patch, one forward pass at a
time) and against Captum's Occlusion, the oracle, on 3D and 2D networks; patches cut at the borders, overlapping
or side by side, in chunks of any size; its refusals; from the command line with the sanity check and the
evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from maps_interpret.cli import main
from maps_interpret.interpreter import Interpreter
from maps_interpret.models.conv import conv5_fc3
from maps_interpret.data.caps import load_tensor
from maps_interpret.synthetic import tensor_path
from helpers import run_with_sanity_check_and_evaluation
from reference import reference_occlusion


def _model_3d() -> nn.Module:
    torch.manual_seed(0)
    model = conv5_fc3((1, 20, 23, 18), 2, 0.0).eval()
    for module in model.modules():  # non-trivial statistics: the eval-mode BatchNorm matters
        if isinstance(module, nn.BatchNorm3d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model


def _model_2d() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 7 * 6, 3)).eval()


@pytest.mark.parametrize("size,stride,chunk", [(4, 4, 0), (5, 3, 7), (7, 2, 64), (18, 18, 1)])
def test_equal_to_the_twin_on_a_volume(size, stride, chunk):
    model = _model_3d()
    batch = torch.rand(2, 1, 20, 23, 18, generator=torch.Generator().manual_seed(2))
    got = Interpreter(model).attribute(batch, "occlusion", [1, 0], occlusion_size=size, occlusion_stride=stride,
                                       baseline=0.25, chunk_size=chunk)
    expected = reference_occlusion(model, batch, [1, 0], size, stride, 0.25)
    assert got.shape == batch.shape
    assert torch.allclose(got, expected, atol=1e-5), float((got - expected).abs().max())


def test_equal_to_the_twin_on_rgb_slices():
    model = _model_2d()
    batch = torch.rand(3, 3, 14, 12, generator=torch.Generator().manual_seed(3))
    got = Interpreter(model).attribute(batch, "occlusion", 2, occlusion_size=3, occlusion_stride=2)
    assert torch.allclose(got, reference_occlusion(model, batch, 2, 3, 2), atol=1e-5)
    assert torch.equal(got[:, 0], got[:, 1]) and torch.equal(got[:, 0], got[:, 2])  # a voxel's channels together


@pytest.mark.parametrize("size,stride", [(4, 4), (5, 2)])
def test_equal_to_captum(size, stride):
    captum = pytest.importorskip("captum.attr")
    model = _model_3d()
    batch = torch.rand(2, 1, 20, 23, 18, generator=torch.Generator().manual_seed(4))
    got = Interpreter(model).attribute(batch, "occlusion", 1, occlusion_size=size, occlusion_stride=stride,
                                       baseline=0.5)
    theirs = captum.Occlusion(model).attribute(batch, sliding_window_shapes=(1, size, size, size),
                                               strides=(1, stride, stride, stride), baselines=0.5, target=1,
                                               perturbations_per_eval=16)
    assert torch.allclose(got, theirs, atol=1e-5), float((got - theirs).abs().max())


def test_refusals():
    model = _model_3d()
    batch = torch.rand(1, 1, 20, 23, 18)
    with pytest.raises(ValueError, match="--occlusion_stride 5 is larger than --occlusion_size 4"):
        Interpreter(model).attribute(batch, "occlusion", occlusion_size=4, occlusion_stride=5)
    with pytest.raises(ValueError, match="occlusion with --amp: its map is the difference of two outputs"):
        Interpreter(model).attribute(batch, "occlusion", amp="bfloat16")
    with pytest.raises(RuntimeError, match="a patch of 21 voxels does not fit the input's 20 along spatial axis 0"):
        Interpreter(model).attribute(batch, "occlusion", occlusion_size=21)


def test_from_the_command_line_with_the_sanity_check_and_the_evaluation(tmp_path: Path, monkeypatch, capsys):
    folder, method = run_with_sanity_check_and_evaluation(
        tmp_path, monkeypatch, "occ", ["occlusion", "--occlusion_size", "6", "--occlusion_stride", "4", "--baseline",
                                       "0.1"], shape=(16, 18, 14))
    assert (method["name"], method["occlusion_size"], method["occlusion_stride"], method["baseline"]) == (
        "occlusion", 6, 4, 0.1)
    interpreter = Interpreter.from_maps("maps", split=0, selection_metric="loss")
    image = interpreter.preprocess(load_tensor(tensor_path(Path("data/caps"), "sub-TE02", "ses-M000")))
    saved = torch.load(folder / "sub-TE02_ses-M000_image-0_map.pt")
    assert torch.allclose(saved, reference_occlusion(interpreter.model, image.unsqueeze(0), 0, 6, 4, 0.1)[0],
                          atol=1e-5)
    assert main(["maps", "test", "bad", "occlusion", "--occlusion_size", "4", "--occlusion_stride", "6",
                 "--no-gpu"]) == 2
    assert "--occlusion_stride 6 is larger than --occlusion_size 4" in capsys.readouterr().err
