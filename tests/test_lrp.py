"""lrp (models/lrp.py: a network whose input gradient is the relevance, through the C++ engine's gradients)
against Zennit, the oracle, and against the reference (tests/reference_lrp.py), on Conv5_FC3, the registry's
ResNet3D and a network with average and overlapping max pooling, for every composite; conservation on bias-free
networks; the refusals; from the command line with the sanity check and the evaluation."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import reference_lrp as ref
from helpers import run_with_sanity_check_and_evaluation
from maps_interpret.interpreter import Interpreter
from maps_interpret.methods import LRP_COMPOSITES
from maps_interpret.models.lrp import lrp_network
from test_lrp_zennit import assert_same_maps, networks, zennit, zennit_composite, zennit_lrp  # noqa: F401

FIRST_READERS = {"resnet3d": ["convolutions.0.0.shortcut.0"]}  # layers that also read the image


def relevance(network, batch: torch.Tensor, targets) -> torch.Tensor:
    """The rewritten network's input gradient seeded with the targets' one-hot: what the engine computes."""
    x = batch.clone().requires_grad_(True)
    out = network(x)
    out.backward(torch.eye(out.shape[1], dtype=out.dtype)[targets])
    return x.grad


def gamma_box(zennit, batch: torch.Tensor, also_first=()):  # noqa: F811 (the fixture, passed on)
    """Zennit's EpsilonGammaBox with each image's bounds, BatchNorm merged, ResNet3D's additions as Sum modules;
    `also_first`: layers that read the image too, given the box rule by name."""
    from test_lrp_zennit import resblock_canonizer
    from zennit.composites import EpsilonGammaBox
    from zennit.rules import ZBox

    axes = tuple(range(1, batch.dim()))
    low = batch.amin(dim=axes, keepdim=True).expand_as(batch)
    high = batch.amax(dim=axes, keepdim=True).expand_as(batch)
    canonizers = [zennit.SequentialMergeBatchNorm(), resblock_canonizer(zennit)]
    if not also_first:
        return EpsilonGammaBox(low=low, high=high, canonizers=canonizers)
    return zennit.MixedComposite([zennit.NameMapComposite([(tuple(also_first), ZBox(low, high))]),
                                  EpsilonGammaBox(low=low, high=high)], canonizers=canonizers)


@pytest.mark.parametrize("composite", LRP_COMPOSITES)
@pytest.mark.parametrize("case", ["conv5_fc3", "resnet3d", "pooling"])
def test_equal_to_zennit(zennit, networks, case, composite):  # noqa: F811
    """In float64, Zennit's network (its merged BatchNorm's leftover scaling, residual additions sharing the
    relevance as a canonizer tells it, every layer reading the image with the first-layer rule as named)."""
    net = networks[case]
    model, batch = copy.deepcopy(net.model).double(), net.batch.double()
    also_first = FIRST_READERS.get(case, []) if composite.endswith(("-flat", "-box")) else []
    if composite == "epsilon-gamma-box":  # z^B within each image's own minimum and maximum
        expected = zennit_lrp(zennit, copy.deepcopy(model), batch, net.targets, gamma_box(zennit, batch, also_first))
    else:
        expected = zennit_lrp(zennit, copy.deepcopy(model), batch, net.targets,
                              zennit_composite(zennit, composite.replace("-", "_"), also_first=also_first))
    network = lrp_network(model, composite, zennit_batch_norm=True)
    assert_same_maps(relevance(network, batch, net.targets), expected)


@pytest.mark.parametrize("composite", LRP_COMPOSITES)
def test_the_engine_computes_the_rewritten_network_and_relevance_is_conserved(networks, composite):  # noqa: F811
    net = networks["conv5_fc3"]
    got = Interpreter(copy.deepcopy(net.model)).attribute(net.batch, "lrp", net.targets, lrp_composite=composite)
    assert_same_maps(got, relevance(lrp_network(net.model, composite), net.batch, net.targets))
    model, batch = copy.deepcopy(net.model).double(), net.batch.double()  # the fixture's network stays float32
    axes = tuple(range(1, batch.dim()))
    bounds = dict(low=batch.amin(dim=axes, keepdim=True), high=batch.amax(dim=axes, keepdim=True)) \
        if composite == "epsilon-gamma-box" else {}  # each image's own
    reference = ref.lrp(model, batch, net.targets, ref.named_composite(composite.replace("-", "_"), **bounds))
    float64 = relevance(lrp_network(model, composite, zennit_batch_norm=True), net.batch.double(), net.targets)
    assert_same_maps(float64, reference)  # the reference's rules, one step at a time
    sums = relevance(lrp_network(net.unbiased, composite), net.batch.double(), net.targets).flatten(1).sum(1)
    assert torch.allclose(sums, torch.ones_like(sums), atol=1e-5), sums  # a one-hot's relevance of 1, all of it


def test_refusals():
    from torch import nn

    instance = nn.Sequential(nn.Conv3d(1, 2, 3), nn.InstanceNorm3d(2), nn.Flatten(), nn.Linear(2 * 4 * 4 * 4, 2))
    with pytest.raises(ValueError, match="lrp: 1 is a InstanceNorm3d: no LRP rule covers this layer"):
        Interpreter(instance).attribute(torch.rand(1, 1, 6, 6, 6), "lrp")
    lonely = nn.Sequential(nn.BatchNorm3d(1), nn.Conv3d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4 * 4, 2))
    with pytest.raises(ValueError, match="a BatchNorm must follow a convolution or dense layer"):
        Interpreter(lonely).attribute(torch.rand(1, 1, 6, 6, 6), "lrp")
    with pytest.raises(ValueError, match="--lrp_composite must be one of"):
        Interpreter(instance).attribute(torch.rand(1, 1, 6, 6, 6), "lrp", lrp_composite="epsilon")


def test_from_the_command_line_with_the_sanity_check_and_the_evaluation(tmp_path: Path, monkeypatch):
    _, method = run_with_sanity_check_and_evaluation(tmp_path, monkeypatch, "lrp",
                                                     ["lrp", "--lrp_composite", "epsilon-alpha2-beta1-flat"])
    assert (method["name"], method["lrp_composite"]) == ("lrp", "epsilon-alpha2-beta1-flat")
