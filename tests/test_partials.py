"""Partial sums: merging is exact in counts and adds sums element by element, in the order given; a partial's
means are the engine's bit for bit; a checkpoint of them round-trips."""

from __future__ import annotations

import pytest
import torch

from helpers import make_engine

from maps_interpret.models.conv import conv5_fc3
from maps_interpret.models.export import to_torchscript
from maps_interpret.engine.partials import Partial, merge_all


def random_partial(ids, seed, shape=(1, 3, 4)):
    g = torch.Generator().manual_seed(seed)
    return Partial(list(ids), [int(c) for c in torch.randint(1, 9, (len(ids),), generator=g)],
                   torch.randn((len(ids), *shape), generator=g))


def test_merge_adds_counts_and_sums_over_the_union_of_ids():
    a, b = random_partial([0, 2, 5], 1), random_partial([2, 3], 2)
    merged = a.merge(b)
    assert merged.ids == [0, 2, 3, 5]
    assert merged.counts == [a.counts[0], a.counts[1] + b.counts[0], b.counts[1], a.counts[2]]
    assert torch.equal(merged.sums[1], a.sums[1] + b.sums[0])
    assert torch.equal(merged.sums[0], a.sums[0]) and torch.equal(merged.sums[2], b.sums[1])
    assert merge_all([Partial.empty(), a, Partial.empty()]).ids == a.ids
    with pytest.raises(ValueError, match="shape"):
        a.merge(random_partial([0], 3, shape=(2, 2)))


def test_means_of_merged_shards_match_one_engine_within_summation_order():
    torch.manual_seed(0)
    model = to_torchscript(conv5_fc3((1, 12, 14, 12), output_size=2, dropout=0.0).eval())
    batches = [torch.randn(2, 1, 12, 14, 12) for _ in range(6)]
    whole = make_engine(model, element_ids=[0])
    for batch in batches:
        whole.accumulate(batch, [0, 0])
    shards = []
    for part in (batches[:2], batches[2:5], batches[5:]):
        engine = make_engine(model, element_ids=[0])
        for batch in part:
            engine.accumulate(batch, [0, 0])
        shards.append(Partial.of_engine(engine))
    merged = merge_all(shards)
    assert merged.counts == [12]
    one = Partial.of_engine(whole)
    assert torch.equal(one.means()[0], whole.means()[0])  # the engine's own division, bit for bit
    scale = whole.means()[0].abs().max()
    assert (merged.means()[0] - whole.means()[0]).abs().max() <= 1e-6 * scale
    assert Partial.of_engine(make_engine(model)).sums is None  # nothing accumulated: an empty partial


def test_state_round_trips_and_refuses_inconsistent_files(tmp_path):
    a = random_partial([1, 4], 5)
    path = tmp_path / "p.pt"
    torch.save(a.state(), path)
    b = Partial.from_state(torch.load(path, weights_only=True))
    assert (b.ids, b.counts) == (a.ids, a.counts) and torch.equal(b.sums, a.sums)
    with pytest.raises(ValueError):
        Partial.from_state({"ids": [1, 2], "counts": [1, 1], "sums": torch.zeros(3, 2)})


def test_clinicadl_means_divide_by_sessions_times_elements():
    a = random_partial([0, 1], 7)
    means = a.clinicadl_means(n_sessions=5, n_elements=2)
    assert torch.equal(means[1], a.sums[1] / 10)
