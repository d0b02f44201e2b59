"""The cost-only rewrite of ClinicaDL blocks (models/fast.py) and the core's frozen_batch_norm op: same
forward values bit for bit, same input gradients up to float rounding, same maps end to end."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import DEVICES, make_engine, with_trained_batchnorm
import maps_interpret.engine  # noqa: F401  loading the core registers torch.ops.maps_interpret.*
from maps_interpret.models.conv import conv4_fc3, conv5_fc3
from maps_interpret.models.export import to_torchscript
from maps_interpret.models.fast import ConvPoolBlock, fuse_blocks
from reference import reference_gradients


def frozen_batch_norm(x: torch.Tensor, norm: torch.nn.Module, alpha: torch.Tensor) -> torch.Tensor:
    """Eval-mode `norm(x)` (torch's values) whose input gradient is grad * alpha, as models/fast.py calls it."""
    return torch.ops.maps_interpret.frozen_batch_norm(x, norm.weight, norm.bias, norm.running_mean,
                                                      norm.running_var, float(norm.eps), alpha)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(3, 8, 9, 10, 11), (2, 8, 7, 12)])
def test_frozen_batch_norm_op(device, shape):
    torch.manual_seed(0)
    norm = with_trained_batchnorm(torch.nn.BatchNorm3d(8) if len(shape) == 5 else torch.nn.BatchNorm2d(8)).to(device)
    alpha = (norm.weight / torch.sqrt(norm.running_var + norm.eps)).detach().reshape([-1] + [1] * (len(shape) - 2))
    x = torch.randn(shape, device=device, requires_grad=True)
    y = frozen_batch_norm(x, norm, alpha)
    with torch.no_grad():
        assert torch.equal(y, norm(x))  # torch's own values
    g = torch.randn(shape, device=device)
    (ours,) = torch.autograd.grad(y, x, g)
    x2 = x.detach().clone().requires_grad_(True)
    for p in norm.parameters():
        p.requires_grad_(False)
    (theirs,) = torch.autograd.grad(norm(x2), x2, g)
    assert torch.allclose(ours, theirs, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("builder,size", [(conv5_fc3, (1, 17, 12, 9)), (conv4_fc3, (1, 32, 28, 40)),
                                          (conv5_fc3, (3, 33, 20))])
def test_fused_model_same_function_and_gradient(builder, size):
    torch.manual_seed(1)
    model = with_trained_batchnorm(builder(size, output_size=2, dropout=0.5))
    fused = fuse_blocks(model)
    assert sum(isinstance(m, ConvPoolBlock) for m in fused.convolutions) == 5 and len(fused.convolutions) == 5
    assert len(model.convolutions) == 20  # the original is untouched
    x = torch.randn(3, *size)
    with torch.no_grad():
        assert torch.equal(fused(x), model(x))
    engine = make_engine(to_torchscript(fused), target=1)
    ours = engine.accumulate(x, [0, 0, 0], return_maps=True)
    plain = reference_gradients(model, x, 1)
    assert (ours - plain).abs().max() <= 1e-5 * plain.abs().max()


def test_models_without_the_pattern_are_unchanged():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    assert fuse_blocks(model) is model


def test_clinicadl_padding_equals_symmetric_pool_padding():
    torch.manual_seed(2)
    for size in [(5, 6, 7), (8, 9, 10), (1, 2, 3)]:
        y = torch.randn(2, 3, *size)
        pads = [s % 2 for s in size]
        clinicadl = F.max_pool3d(F.pad(F.relu(y), [pads[2], 0, pads[1], 0, pads[0], 0]), 2, 2)
        ours = F.relu(F.max_pool3d(y, 2, 2, pads))
        assert torch.equal(clinicadl, ours)
