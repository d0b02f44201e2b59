"""The core's custom ops (csrc/ops/): registrations checked by torch.library.opcheck (schema, autograd kernel,
fake tensors through the Meta kernels, AOT tracing with dynamic shapes), values equal to torch's own functions,
and autocast, meta tensors and symbolic shapes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.fx.experimental.proxy_tensor import make_fx

import maps_interpret.engine  # noqa: F401  loading the core registers torch.ops.maps_interpret.*
from helpers import DEVICES, assert_close_to_reference

OPS = torch.ops.maps_interpret

# (input shape, output channels, kernel, stride, padding, dilation, groups, bias)
CONV_CASES = {
    "3d-bias": ((2, 3, 9, 10, 11), 4, (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), 1, True),
    "3d-stride-padding-dilation-groups": ((2, 4, 9, 10, 11), 6, (3, 2, 3), (2, 1, 2), (0, 1, 2), (1, 2, 1), 2, False),
    "3d-one-channel": ((2, 1, 8, 9, 7), 8, (3, 3, 3), (1, 1, 1), (0, 0, 0), (1, 1, 1), 1, False),
    "2d": ((3, 2, 12, 13), 4, (3, 3), (1, 1), (1, 1), (1, 1), 1, False),
    "2d-bias-stride-padding-dilation-groups": ((1, 6, 11, 9), 6, (3, 3), (2, 1), (2, 0), (2, 1), 3, True),
}
CONVS = [pytest.param(case, id=name) for name, case in CONV_CASES.items()]
NORM_SHAPES = [pytest.param((3, 8, 5, 6, 7), id="3d"), pytest.param((2, 8, 7, 12), id="2d")]
AMP_DTYPES = {"cpu": torch.bfloat16, "cuda": torch.float16}


def conv_args(case, device, dtype=torch.float32):
    """(x, weight, bias, stride, padding, dilation, groups) for frozen_conv, x requiring grad."""
    shape, out_channels, kernel, stride, padding, dilation, groups, bias = case
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen, dtype=dtype).to(device).requires_grad_(True)
    weight = torch.randn(out_channels, shape[1] // groups, *kernel, generator=gen, dtype=dtype).to(device)
    b = torch.randn(out_channels, generator=gen, dtype=dtype).to(device) if bias else None
    return x, weight, b, list(stride), list(padding), list(dilation), groups


def torch_conv(x, weight, bias, stride, padding, dilation, groups):
    conv = F.conv3d if x.dim() == 5 else F.conv2d
    return conv(x, weight, bias, stride, padding, dilation, groups)


def norm_args(shape, device, affine):
    """(x, weight, bias, running_mean, running_var, eps, alpha) for frozen_batch_norm, x requiring grad."""
    gen = torch.Generator().manual_seed(1)
    channels = shape[1]
    x = torch.randn(shape, generator=gen).to(device).requires_grad_(True)
    weight = (torch.rand(channels, generator=gen) + 0.5).to(device) if affine else None
    bias = (torch.rand(channels, generator=gen) - 0.5).to(device) if affine else None
    mean = (torch.rand(channels, generator=gen) - 0.5).to(device)
    var = (torch.rand(channels, generator=gen) + 0.5).to(device)
    eps = 1e-5
    alpha = 1 / torch.sqrt(var + eps)  # as models/fast.py's FrozenBatchNorm computes it
    if affine:
        alpha = alpha * weight
    return x, weight, bias, mean, var, eps, alpha.reshape([-1] + [1] * (len(shape) - 2)).contiguous()


def test_every_dispatch_key_has_its_kernel():
    """CUDA kernels are registered (and the core loads) even with a CPU-only torch."""
    want = {"frozen_conv": ["CPU", "CUDA", "Meta", "Autograd", "AutocastCPU", "AutocastCUDA"],
            "frozen_conv_input_grad": ["CPU", "CUDA", "Meta", "Autograd"],
            "frozen_batch_norm": ["CPU", "CUDA", "Meta", "Autograd", "AutocastCPU", "AutocastCUDA"]}
    for name, keys in want.items():
        for key in keys:
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"maps_interpret::{name}", key), (name, key)
        assert not torch._C._dispatch_has_kernel_for_dispatch_key(f"maps_interpret::{name}",
                                                                  "CompositeImplicitAutograd")


# opcheck: test_schema, test_autograd_registration, test_faketensor (fake strides included), test_aot_dispatch_dynamic.
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CONVS)
def test_frozen_conv_opcheck(case, device):
    torch.library.opcheck(OPS.frozen_conv.default, conv_args(case, device))


@pytest.mark.parametrize("device", DEVICES)
def test_frozen_conv_opcheck_with_weights_requiring_grad(device):
    """Weights that require grad stay constants: eager and traced agree that they get no gradient."""
    x, weight, bias, *rest = conv_args(CONV_CASES["3d-bias"], device)
    torch.library.opcheck(OPS.frozen_conv.default, (x, weight.requires_grad_(True), bias.requires_grad_(True), *rest))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("case", CONVS)
def test_frozen_conv_input_grad_opcheck(case, channels_last, device):
    x, weight, _, stride, padding, dilation, groups = conv_args(case, device)
    with torch.no_grad():
        y = torch_conv(x, weight, None, stride, padding, dilation, groups)
    grad = torch.randn_like(y).requires_grad_(True)  # its autograd kernel (double backward) is checked too
    torch.library.opcheck(OPS.frozen_conv_input_grad.default,
                          (grad, weight, list(x.shape), stride, padding, dilation, groups, channels_last))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", NORM_SHAPES)
def test_frozen_batch_norm_opcheck(shape, affine, device):
    torch.library.opcheck(OPS.frozen_batch_norm.default, norm_args(shape, device, affine))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CONVS)
def test_frozen_conv_equals_torch(case, device):
    x, weight, bias, stride, padding, dilation, groups = conv_args(case, device)
    y = OPS.frozen_conv(x, weight, bias, stride, padding, dilation, groups)
    x2 = x.detach().clone().requires_grad_(True)
    y2 = torch_conv(x2, weight, bias, stride, padding, dilation, groups)
    assert torch.equal(y, y2)  # bit for bit: every later ReLU/max-pool decision is torch's
    g = torch.randn_like(y)
    (ours,) = torch.autograd.grad(y, x, g)
    (theirs,) = torch.autograd.grad(y2, x2, g)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    assert_close_to_reference(ours, theirs, "input gradient", rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_frozen_conv_gives_no_weight_gradient(device):
    x, weight, bias, *rest = conv_args(CONV_CASES["3d-bias"], device)
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    y = OPS.frozen_conv(x, weight, bias, *rest)
    assert torch.autograd.grad(y.sum(), [x, weight, bias], allow_unused=True)[1:] == (None, None)
    assert not OPS.frozen_conv(x.detach(), weight, bias, *rest).requires_grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", NORM_SHAPES)
def test_frozen_batch_norm_equals_torch(shape, affine, device):
    x, weight, bias, mean, var, eps, alpha = norm_args(shape, device, affine)
    y = OPS.frozen_batch_norm(x, weight, bias, mean, var, eps, alpha)
    assert torch.equal(y, F.batch_norm(x.detach(), mean, var, weight, bias, False, 0.0, eps))
    g = torch.randn_like(y)
    (ours,) = torch.autograd.grad(y, x, g)
    assert torch.equal(ours, g * alpha)


@pytest.mark.parametrize("device", DEVICES)
def test_autocast_casts_frozen_conv_like_torch_conv(device):
    dtype = AMP_DTYPES[device]
    x, weight, bias, *rest = conv_args(CONV_CASES["3d-bias"], device)
    x2 = x.detach().clone().requires_grad_(True)
    with torch.autocast(device, dtype):
        y = OPS.frozen_conv(x, weight, bias, *rest)
        y2 = torch_conv(x2, weight, bias, *rest)
    assert y.dtype == dtype and torch.equal(y, y2)
    g = torch.randn_like(y)
    (ours,) = torch.autograd.grad(y, x, g)
    (theirs,) = torch.autograd.grad(y2, x2, g)
    assert ours.dtype == torch.float32  # the cast to the autocast dtype is part of the graph
    assert_close_to_reference(ours, theirs, "input gradient under autocast", rtol=1e-2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("x_dtype", ["float32", "autocast"])
def test_autocast_leaves_frozen_batch_norm_to_torch(device, x_dtype):
    """No cast of its own: the op keeps x's dtype and gives what torch's batch_norm gives under autocast."""
    dtype = AMP_DTYPES[device]
    x, weight, bias, mean, var, eps, alpha = norm_args((3, 8, 5, 6, 7), device, True)
    if x_dtype == "autocast":
        x = x.detach().to(dtype).requires_grad_(True)
    with torch.autocast(device, dtype):
        y = OPS.frozen_batch_norm(x, weight, bias, mean, var, eps, alpha)
        y2 = F.batch_norm(x.detach(), mean, var, weight, bias, False, 0.0, eps)
    assert y.dtype == x.dtype and torch.equal(y, y2)
    g = torch.randn_like(y)
    (ours,) = torch.autograd.grad(y, x, g)
    assert torch.equal(ours, (g * alpha).to(g.dtype))


def test_meta_tensors():
    x, weight, bias, *rest = (t.to("meta") if isinstance(t, torch.Tensor) else t
                              for t in conv_args(CONV_CASES["3d-stride-padding-dilation-groups"], "cpu"))
    y = OPS.frozen_conv(x, weight, bias, *rest)
    assert y.device.type == "meta" and y.shape == torch_conv(x, weight, bias, *rest).shape
    grad = OPS.frozen_conv_input_grad(torch.empty_like(y), weight, list(x.shape), *rest, True)
    assert grad.shape == x.shape and grad.is_contiguous(memory_format=torch.channels_last_3d)
    norm = [t.to("meta") if isinstance(t, torch.Tensor) else t for t in norm_args((2, 8, 3, 4, 5), "cpu", True)]
    assert OPS.frozen_batch_norm(*norm).shape == (2, 8, 3, 4, 5)


def test_symbolic_shapes_reach_the_backward_op():
    """Traced once with symbolic sizes (make_fx), forward and input gradient run on other sizes unchanged."""
    def forward_backward(x, weight, g):
        y = OPS.frozen_conv(x, weight, None, [1, 2, 1], [1, 1, 0], [1, 1, 1], 1)
        return y, torch.autograd.grad(y, x, g)[0]

    def inputs(batch, size):
        gen = torch.Generator().manual_seed(2)
        x = torch.randn(batch, 3, *size, generator=gen).requires_grad_(True)
        weight = torch.randn(4, 3, 3, 3, 3, generator=gen)
        with torch.no_grad():
            y = F.conv3d(x, weight, None, [1, 2, 1], [1, 1, 0])
        return x, weight, torch.randn(y.shape, generator=gen)

    graph = make_fx(forward_backward, tracing_mode="symbolic")(*inputs(2, (6, 7, 8)))
    assert "maps_interpret.frozen_conv_input_grad" in graph.code and "sym_size" in graph.code
    x, weight, g = inputs(3, (9, 5, 11))
    y, gx = graph(x.detach(), weight, g)
    y2, gx2 = forward_backward(x, weight, g)
    assert torch.equal(y, y2) and torch.equal(gx, gx2)


@pytest.mark.parametrize("case", [CONVS[1], CONVS[3]])
def test_gradients_in_float64(case):
    """The backward op is the convolution's adjoint, and its own backward (double backward) is right."""
    x, weight, bias, *rest = conv_args(case, "cpu", torch.float64)
    x = x.detach()[(slice(0, 1), slice(None)) + (slice(0, 5),) * (x.dim() - 2)].requires_grad_(True)  # small: gradcheck's cost

    def f(x):
        return OPS.frozen_conv(x, weight, bias, *rest)

    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))
