"""Occlusion that recomputes only what a patch changes (models/staged.py, csrc/methods/stages.cpp): the staged
network computes the network; whatever number of stages runs on crops (the core's optional `depth`), the maps
are those of whole forward passes (depth 0) and of the twin, on odd sizes, overlapping patches, patches cut at the
borders, strided convolutions, implicit -inf and ClinicaDL's zero padding, 2D and 3D; networks whose first layer
is a block keep whole passes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from maps_interpret import _core
from maps_interpret.interpreter import Interpreter
from maps_interpret.models.conv import conv4_fc3, conv5_fc3
from maps_interpret.models.export import to_torchscript
from maps_interpret.models.staged import Pointwise, staged_network
from helpers import with_trained_batchnorm
from reference import reference_occlusion
from test_architectures import CONFIGS, IDS, build, deterministic_state

STAGED = {"Stride_Conv5_FC3", "resnet18", "RandomArchitecture"}  # the registry's networks that begin with stages


def _architecture(config: dict) -> tuple[nn.Module, tuple]:
    model = build(config)
    model.load_state_dict(deterministic_state(model.state_dict(), 0))
    return model.eval(), tuple(config["params"]["input_size"])


def _maps(model: nn.Module, batch: torch.Tensor, depth: int, size: int, stride: int, chunk: int = 3) -> torch.Tensor:
    options = _core.EngineOptions()
    options.method = "occlusion"
    options.parameters = {"occlusion_size": size, "occlusion_stride": stride, "baseline": 0.25, "chunk_size": chunk,
                          "depth": depth}
    options.target_mode, options.target = "node", 0
    return _core.Engine(to_torchscript(staged_network(model))._c, options).attribute(batch)


def _close(got: torch.Tensor, expected: torch.Tensor, model: nn.Module, batch: torch.Tensor) -> bool:
    with torch.no_grad():  # drops are differences of outputs: rounded as the outputs are
        scale = max(float(model(batch).abs().max()), float(expected.abs().max()))
    return got.shape == expected.shape and float((got - expected).abs().max()) <= 1e-5 * scale


@pytest.mark.parametrize("shape", [(1, 21, 26, 19), (1, 16, 16, 16)])
def test_the_staged_network_is_the_network(shape):
    torch.manual_seed(0)
    model = with_trained_batchnorm(conv5_fc3(shape, 2, 0.0)).eval()
    staged = staged_network(model)
    assert len(staged.stages) == 20 and not any(isinstance(m, nn.Conv3d) for m in staged.rest.modules())
    batch = torch.rand((2, *shape))
    with torch.no_grad():
        assert torch.allclose(to_torchscript(staged)(batch), model(batch), atol=1e-6)


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_the_registry_networks(config):
    model, shape = _architecture(config)
    staged = staged_network(model)
    if config["architecture"] not in STAGED:  # a residual block first: nothing to split
        assert staged is None
        return
    assert not all(isinstance(stage, Pointwise) for stage in staged.stages)
    batch = torch.rand((2, *shape), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(to_torchscript(staged)(batch), model(batch), atol=1e-5)


def test_a_scripted_model_or_a_foreign_class_is_left_whole():
    torch.manual_seed(0)
    model = conv4_fc3((1, 12, 12, 12), 2, 0.0).eval()
    assert staged_network(torch.jit.script(model)) is None
    assert staged_network(nn.Sequential(*model.convolutions, *model.fc)) is None


@pytest.mark.parametrize("shape,size,stride", [((1, 21, 26, 19), 4, 4), ((1, 21, 26, 19), 5, 3),
                                               ((1, 17, 20, 15), 7, 2), ((1, 21, 26, 19), 19, 19)])
def test_every_depth_gives_the_maps_of_whole_passes(shape, size, stride):
    torch.manual_seed(2)
    model = with_trained_batchnorm(conv5_fc3(shape, 2, 0.0)).eval()
    batch = torch.rand((2, *shape), generator=torch.Generator().manual_seed(3))
    whole = _maps(model, batch, 0, size, stride)
    assert _close(whole, reference_occlusion(model, batch, 0, size, stride, 0.25), model, batch)
    for depth in (1, 3, 4, 8, 13, 20):
        assert _close(_maps(model, batch, depth, size, stride, chunk=depth % 4), whole, model, batch), depth


@pytest.mark.parametrize("config", [c for c in CONFIGS if c["architecture"] in STAGED], ids=lambda c: c["name"])
def test_every_depth_on_the_registry_networks(config):
    """Strided convolutions (Stride_Conv5_FC3, resnet18), a max-pool with -inf padding (resnet18), LeakyReLU before
    ClinicaDL's zero-padded pooling (RandomArchitecture)."""
    model, shape = _architecture(config)
    batch = torch.rand((2, *shape), generator=torch.Generator().manual_seed(4))
    size = max(2, min(shape[1:]) // 3)
    stride = max(1, size - 1)
    whole = _maps(model, batch, 0, size, stride)
    for depth in range(1, len(staged_network(model).stages) + 1):
        assert _close(_maps(model, batch, depth, size, stride), whole, model, batch), depth


def test_the_interpreter_takes_the_staged_network_and_chooses_a_depth():
    """The depth it chooses by itself (a large image, small patches: several stages on crops) gives the twin's
    maps; so does a patch larger than the whole receptive field of every activation."""
    shape = (1, 45, 53, 47)
    torch.manual_seed(5)
    model = with_trained_batchnorm(conv5_fc3(shape, 2, 0.0)).eval()
    batch = torch.rand((1, *shape), generator=torch.Generator().manual_seed(6))
    for size in (6, 40):
        got = Interpreter(model).attribute(batch, "occlusion", 1, occlusion_size=size, baseline=0.25)
        assert _close(got, reference_occlusion(model, batch, 1, size, size, 0.25), model, batch), size

