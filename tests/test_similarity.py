"""similarity.py against known answers and against a plain Python definition of each measure."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from maps_interpret.analysis.similarity import pearson, ranks, spearman, top_dice, top_mask

VALUES = st.lists(st.integers(-3, 3).map(float), min_size=2, max_size=40)


def plain_ranks(values):
    """Each value's rank: 1 + how many are smaller + (how many others are equal) / 2."""
    return [1 + sum(v < x for v in values) + (sum(v == x for v in values) - 1) / 2 for x in values]


def plain_pearson(x, y):
    mx, my = sum(x) / len(x), sum(y) / len(y)
    num = sum((a - mx) * (b - my) for a, b in zip(x, y))
    den = math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))
    return num / den if den else math.nan


@settings(max_examples=200, deadline=None)
@given(values=VALUES)
def test_ranks_average_ties(values):
    assert ranks(torch.tensor(values)).tolist() == plain_ranks(values)


@settings(max_examples=200, deadline=None)
@given(pairs=st.lists(st.tuples(st.integers(-3, 3), st.integers(-3, 3)), min_size=2, max_size=40))
def test_spearman_is_pearson_of_ranks(pairs):
    x = [float(a) for a, _ in pairs]
    y = [float(b) for _, b in pairs]
    expected = plain_pearson(plain_ranks(x), plain_ranks(y))
    got = spearman(torch.tensor(x), torch.tensor(y))
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected, abs=1e-12)
    assert pearson(torch.tensor(x), torch.tensor(y)) == pytest.approx(plain_pearson(x, y), abs=1e-12, nan_ok=True)


def test_known_answers():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(2, 5, 6, 7, generator=generator)
    assert pearson(a, a) == pytest.approx(1.0) and pearson(a, -a) == pytest.approx(-1.0)
    assert pearson(a, 3 * a + 2) == pytest.approx(1.0)
    # A monotone, non-linear change keeps the ranks (Spearman 1) but not the linear relation.
    assert spearman(a, a.pow(3)) == pytest.approx(1.0)
    assert pearson(a, a.pow(3)) < 0.95
    assert math.isnan(pearson(a, torch.ones_like(a)))
    assert abs(spearman(a, torch.randn(a.shape, generator=generator))) < 0.1
    with pytest.raises(ValueError, match="different shapes"):
        pearson(a, a[0])


def test_top_dice():
    a = torch.zeros(100)
    a[:10] = torch.arange(10, 0, -1)  # the top 10% are voxels 0..9
    b = torch.zeros(100)
    b[5:15] = -1  # magnitude counts: the top 10% are voxels 5..14 (ties by position)
    assert top_mask(b, 0.1).nonzero().reshape(-1).tolist() == list(range(5, 15))
    assert top_dice(a, b, 0.1) == pytest.approx(0.5)
    assert top_dice(a, a * 7, 0.1) == 1.0
    c = torch.zeros(100)
    c[50:60] = 1
    assert top_dice(a, c, 0.1) == 0.0
    assert top_mask(a, 0.001).sum() == 1  # at least one voxel
    with pytest.raises(ValueError, match="fraction"):
        top_dice(a, b, 0)


def test_zeros_are_never_top_voxels():
    """Two unrelated sparse maps (3% non-zero) share no top voxel: zeros are not picked by their position."""
    a, b = torch.zeros(1000), torch.zeros(1000)
    a[torch.arange(0, 1000, 37)] = 1.0  # 28 voxels
    b[torch.arange(5, 1000, 37)] = 2.0
    assert top_mask(a, 0.1).sum() == 28
    assert top_dice(a, b, 0.1) == 0.0
    assert top_dice(a, a, 0.1) == 1.0
    assert math.isnan(top_dice(torch.zeros(10), torch.zeros(10), 0.5))
