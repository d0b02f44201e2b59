"""Grad-CAM++ (csrc/methods/grad_cam.cpp, variant "plusplus") against its twin (tests/reference.py) and against
pytorch-grad-cam's GradCAMPlusPlus, the oracle: the same class activation map within 1e-5 (their weights and
feature map, resized as maps-interpret resizes every CAM); their image is that map presented otherwise (each
map rescaled to [0, 1] and resized by cubic-spline zoom, where maps-interpret keeps the map's values and resizes
trilinearly, as its Grad-CAM does), shown by rebuilding their image from that map; from the command line with
the sanity check and the evaluation."""

from __future__ import annotations

import copy
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from helpers import run_with_sanity_check_and_evaluation, with_trained_batchnorm
from maps_interpret.interpreter import Interpreter
from maps_interpret.models.conv import conv5_fc3
from reference import reference_grad_cam

SHAPE = (1, 24, 28, 24)


def _model():
    torch.manual_seed(3)
    return with_trained_batchnorm(conv5_fc3(SHAPE, output_size=2, dropout=0.0)).eval()


def _batch():
    return torch.rand((3, *SHAPE), generator=torch.Generator().manual_seed(4))


def close(ours: torch.Tensor, theirs: torch.Tensor, rtol: float = 1e-5) -> bool:
    return ours.shape == theirs.shape and float((ours - theirs).abs().max()) <= rtol * float(theirs.abs().max())


@pytest.mark.parametrize("level", [4, 8, 12, None])
def test_equal_to_the_twin(level):
    model, batch = _model(), _batch()
    got = Interpreter(model).attribute(batch, "grad-cam++", [1, 0, 1], level_grad_cam=level)
    for i, target in enumerate([1, 0, 1]):
        assert close(got[i:i + 1], reference_grad_cam(model, batch[i:i + 1], target, level, "plusplus")), (level, i)
    assert not torch.equal(got, Interpreter(model).attribute(batch, "grad-cam", [1, 0, 1], level_grad_cam=level))


def _oracle():
    # pytorch-grad-cam imports torchvision, whose compiled ops cannot load beside the CPU torch (tests/
    # clinicadl2_oracle.py says why); the module registering them is irrelevant to CAMs.
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    cam = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    return cam.GradCAMPlusPlus, ClassifierOutputTarget


@pytest.mark.parametrize("level", [8, 12])
def test_equal_to_pytorch_grad_cam(level):
    GradCAMPlusPlus, ClassifierOutputTarget = _oracle()
    model, batch = _model(), _batch()
    # A copy: their hooks cannot be scripted, and exporting freezes the weights pytorch-grad-cam differentiates.
    ours = Interpreter(copy.deepcopy(model)).attribute(batch, "grad-cam++", 1, level_grad_cam=level)
    layer = model.convolutions[level - 1]  # the feature map after `level` modules
    oracle = GradCAMPlusPlus(model, [layer])
    theirs = torch.from_numpy(oracle(input_tensor=batch, targets=[ClassifierOutputTarget(1)] * len(batch)))
    features = oracle.activations_and_grads.activations[0]
    grads = oracle.activations_and_grads.gradients[0]
    weights = torch.from_numpy(oracle.get_cam_weights(batch, [layer], None, features.numpy(), grads.numpy()))
    their_cam = torch.relu((weights[:, :, None, None, None] * features).sum(1, keepdim=True))
    # The map itself: their weights and feature map, resized as maps-interpret resizes every CAM.
    assert close(ours, F.interpolate(their_cam, size=SHAPE[1:], mode="trilinear", align_corners=False))
    # Their image is that map rescaled to [0, 1] and resized by scipy's cubic-spline zoom (corners on corners):
    # the same map, presented otherwise; the pictures still correlate strongly.
    import numpy as np
    from scipy.ndimage import zoom

    for cam, image, mine in zip(their_cam[:, 0].numpy(), theirs, ours[:, 0]):
        scaled = (cam - cam.min()) / (cam.max() - cam.min() + 1e-7)
        presented = np.maximum(zoom(scaled, [t / s for t, s in zip(SHAPE[1:], cam.shape)]), 0)  # spline overshoot
        presented = (presented - presented.min()) / (presented.max() - presented.min() + 1e-7)  # rescaled again
        assert torch.allclose(torch.from_numpy(presented), image, atol=1e-5)
        assert torch.corrcoef(torch.stack([mine.flatten(), image.flatten()]))[0, 1] > 0.9


def test_from_the_command_line_with_the_sanity_check_and_the_evaluation(tmp_path: Path, monkeypatch):
    folder, method = run_with_sanity_check_and_evaluation(tmp_path, monkeypatch, "cam",
                                                          ["grad-cam++", "--level_grad_cam", "8"])
    assert (method["name"], method["level_grad_cam"]) == ("grad-cam++", 8)
    assert len(list(folder.glob("sub-*_image-0_map.pt"))) == 3
