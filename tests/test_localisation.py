"""The localisation measures against their definitions: hand-made maps with known values (the mask itself, its
negation, a constant, a map pointing outside), ties, the positive-relevance variant, and scikit-learn's AUROC."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.metrics import roc_auc_score

from maps_interpret.analysis.localisation import (auroc, localisation, pointing_game, rank_accuracy, relevance,
                                                  relevance_mass)

SHAPE = (6, 7, 5)


def mask() -> torch.Tensor:
    m = torch.zeros(SHAPE)
    m[1:3, 2:5, 1:4] = 1  # 18 of 210 voxels
    return m


def test_a_map_equal_to_the_mask_scores_perfectly_and_so_does_its_negation_by_magnitude():
    m = mask()
    for map_ in (m, -m, 3 * m.unsqueeze(0)):
        assert localisation(map_, m) == {"relevance_mass": 1.0, "rank_accuracy": 1.0, "auroc": 1.0,
                                         "pointing_game": 1.0}
    # positive relevance only: the negation holds no evidence for the target
    got = localisation(-m, m, "positive")
    assert math.isnan(got["relevance_mass"]) and got["auroc"] == 0.5 and got["pointing_game"] == pytest.approx(
        18 / 210)


def test_a_constant_map_scores_chance():
    m, constant = mask(), torch.full(SHAPE, 0.7)
    fraction = 18 / 210
    assert relevance_mass(constant, m) == pytest.approx(fraction)
    assert rank_accuracy(constant, m) == pytest.approx(fraction)  # ties shared out as a random pick would
    assert auroc(constant, m) == 0.5
    assert pointing_game(constant, m) == pytest.approx(fraction)


def test_a_map_pointing_outside():
    m = mask()
    outside = 1 - m
    assert localisation(outside, m) == {"relevance_mass": 0.0, "rank_accuracy": 0.0, "auroc": 0.0,
                                        "pointing_game": 0.0}


def test_partial_maps_against_the_definitions():
    m = mask()
    map_ = torch.zeros(SHAPE)
    map_[1, 2, 1:4] = 2.0  # 3 voxels inside, relevance 6
    map_[5, 6, 0:2] = -3.0  # 2 voxels outside, relevance 6 (magnitude)
    assert relevance_mass(map_, m) == pytest.approx(0.5)
    assert relevance_mass(map_, m, "positive") == pytest.approx(1.0)
    # top 18 by |map|: the 5 non-zero voxels (3 inside), then 13 of the 205 tied zeros (15 of them inside)
    assert rank_accuracy(map_, m) == pytest.approx((3 + 13 * 15 / 205) / 18)
    assert pointing_game(map_, m) == 0.0  # the maximum |value| (3) lies outside
    flat = map_.abs().reshape(-1).numpy()
    assert auroc(map_, m) == pytest.approx(roc_auc_score(m.reshape(-1).numpy(), flat))


def test_random_maps_agree_with_scikit_learn():
    generator = torch.Generator().manual_seed(0)
    m = mask()
    for _ in range(5):
        map_ = torch.randn(SHAPE, generator=generator).round(decimals=1)  # with ties
        assert auroc(map_, m) == pytest.approx(roc_auc_score(m.reshape(-1).numpy(), map_.abs().reshape(-1).numpy()))


def test_channels_are_one_voxel_and_shapes_are_checked():
    rgb = torch.stack([mask()] * 3)
    assert torch.equal(relevance(rgb), 3 * mask().reshape(-1).double())
    with pytest.raises(ValueError, match="does not fit"):
        auroc(torch.rand(1, 4, 4, 4), mask())
    with pytest.raises(ValueError, match="relevance must be"):
        relevance(mask(), "signed")
    assert math.isnan(auroc(torch.rand(SHAPE), torch.zeros(SHAPE)))
