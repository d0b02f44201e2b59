"""Deletion and insertion curves against a plain loop (one copy, one forward pass at a time) and against known
answers on a linear model, where removing a voxel removes exactly its term; the replacements (constant, blur, ROAD's
imputation) against their definitions."""

from __future__ import annotations

import pytest
import torch

from maps_interpret.analysis.faithfulness import Perturbation, blurred, curve, curves, ranking, road_imputed
from maps_interpret.settings import step_counts

SHAPE = (1, 6, 5, 4)


def linear_model(weight: torch.Tensor):
    """Two outputs: the weighted sum of the voxels and its negation (a softmax of the two is a sigmoid of 2x)."""
    def model(batch: torch.Tensor) -> torch.Tensor:
        score = (batch * weight).flatten(1).sum(1, keepdim=True)
        return torch.cat([score, -score], dim=1)
    return model


def plain_loop(model, image, position, target, kind, steps, value):
    """What a user writes today: one perturbed copy and one forward pass per step."""
    n = position.numel()
    out = []
    for k in range(steps + 1):
        count = round(k * n / steps)
        copy = image.clone().reshape(image.shape[0], -1)
        for voxel in range(n):
            gone = position[voxel] < count
            if (kind == "deletion") == bool(gone):
                copy[:, voxel] = value
        out.append(model(copy.reshape(1, *image.shape))[0, target])
    return torch.stack(out).double()


@pytest.mark.parametrize("kind", ["deletion", "insertion"])
@pytest.mark.parametrize("order,direction", [("map", "morf"), ("abs", "lerf"), ("random", "morf")])
def test_equal_to_a_plain_loop_whatever_the_chunk(kind, order, direction):
    generator = torch.Generator().manual_seed(1)
    image, weight = torch.rand(SHAPE, generator=generator), torch.randn(SHAPE, generator=generator)
    model = linear_model(weight)
    position = ranking(weight * image, order, direction, torch.Generator().manual_seed(5))
    expected = plain_loop(model, image, position, 0, kind, 7, 0.25)
    for chunk in (1, 3, 8):
        got = curve(model, image, position, 0, kind, Perturbation(steps=7, value=0.25, chunk=chunk))
        assert torch.allclose(got.outputs, expected, atol=1e-6)
        assert torch.allclose(got.probabilities, torch.sigmoid(2 * expected), atol=1e-6)
        n = position.numel()  # the share actually removed at each step: whole voxels
        shares = torch.tensor([round(k * n / 7) / n for k in range(8)], dtype=torch.float64)
        assert torch.allclose(got.fractions, shares)


def test_known_answers_on_a_linear_model():
    """Gradient x input of a linear model is each voxel's exact contribution: deleting most relevant first takes
    the output down as fast as possible; least relevant first as slowly; a random order in between."""
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(SHAPE, generator=generator)
    weight = torch.randn(SHAPE, generator=generator)
    model = linear_model(weight)
    contribution = weight * image
    settings = Perturbation(steps=120)  # one voxel per step: the curve is the sorted partial sums
    morf = curve(model, image, ranking(contribution, "map", "morf"), 0, settings=settings)
    lerf = curve(model, image, ranking(contribution, "map", "lerf"), 0, settings=settings)
    rand = curve(model, image, ranking(contribution, "random", generator=generator), 0, settings=settings)
    ordered = contribution.reshape(-1).sort(descending=True).values.double()
    total = float(contribution.sum())
    assert torch.allclose(morf.outputs, total - torch.cat([torch.zeros(1), ordered.cumsum(0)]), atol=1e-5)
    assert morf.auc(False) < rand.auc(False) < lerf.auc(False)
    assert morf.outputs[-1] == pytest.approx(0, abs=1e-6) and morf.outputs[0] == pytest.approx(total, abs=1e-5)
    insertion = curve(model, image, ranking(contribution, "map", "morf"), 0, "insertion", settings)
    # insertion puts back the largest terms first
    assert torch.allclose(insertion.outputs, torch.cat([torch.zeros(1), ordered.cumsum(0)]), atol=1e-5)
    assert insertion.auc(False) > rand.auc(False)


REQUESTS = [(kind, order, direction) for direction in ("morf", "lerf") for kind in ("deletion", "insertion")
            for order in ("abs", "map", "random") if not (direction == "lerf" and order == "random")]


@pytest.mark.parametrize("replacement", ["constant", "blur", "road"])
def test_shared_copies_give_each_curve_its_own_result(replacement):
    """`curves` computes each perturbed copy once for all the curves: every curve equals the one `curve` computes
    alone from its own order (least relevant first: most relevant first reversed; random insertion: the random
    deletion's order reversed), and the forward passes are the distinct copies only."""
    generator = torch.Generator().manual_seed(2)
    image, weight = torch.rand(SHAPE, generator=generator), torch.randn(SHAPE, generator=generator)
    weight[0, :2] = 0  # ties: the orders' ends must still match
    linear, copies = linear_model(weight), []

    def model(batch):
        copies.append(len(batch))
        return linear(batch)

    map_ = weight * image
    positions = {order: ranking(map_, order, "morf", torch.Generator().manual_seed(5))
                 for order in ("abs", "map", "random")}
    settings = Perturbation(steps=7, replacement=replacement, value=0.5, road_noise=0.0, chunk=3)
    got = curves(model, image, positions, 0, REQUESTS, settings)
    assert sum(copies) == 5 * (7 - 1) + 2  # abs and map from both ends, random from one; intact and replaced once
    for kind, order, direction in REQUESTS:
        position = positions[order]
        if direction == "lerf" or (order == "random" and kind == "insertion"):
            position = position.numel() - 1 - position
        if direction == "lerf":
            assert torch.equal(position, ranking(map_, order, "lerf"))
        alone = curve(linear, image, position, 0, kind, settings)
        assert torch.allclose(got[kind, order, direction].outputs, alone.outputs, atol=1e-6), (kind, order, direction)
    copies.clear()
    intact = linear(image.unsqueeze(0))[0]
    again = curves(model, image, positions, 0, REQUESTS[:2], settings, intact=intact)
    assert sum(copies) == 2 * (7 - 1) + 1  # the intact image's outputs given: not computed again
    assert torch.allclose(again["deletion", "abs", "morf"].outputs, got["deletion", "abs", "morf"].outputs)


def test_step_counts_are_whole_mirrored_and_rounded():
    for n, steps in ((120, 7), (10, 4), (7, 2), (6, 4), (1, 3)):
        counts = torch.tensor(step_counts(n, steps))
        assert counts[0] == 0 and counts[-1] == n and bool((counts[1:] >= counts[:-1]).all())
        mirrored = counts.flip(0) == n - counts  # but the middle step of an odd n in an even number of steps
        assert bool(mirrored.all()) or (n % 2 and not steps % 2 and int((~mirrored).sum()) == 1)
        assert all(abs(int(c) - k * n / steps) <= 0.5 for k, c in enumerate(counts))


def test_blur_is_a_normalised_gaussian():
    constant = torch.full(SHAPE, 3.0)
    assert torch.allclose(blurred(constant, 1.5), constant)  # edges replicated: a constant stays
    impulse = torch.zeros(1, 21, 21, 21)
    impulse[0, 10, 10, 10] = 1
    out = blurred(impulse, 2.0)
    assert out.sum() == pytest.approx(1.0, abs=1e-5)
    profile = out[0, 10, 10, 4:17]
    expected = torch.exp(-0.5 * (torch.arange(-6, 7) / 2.0) ** 2)
    assert torch.allclose(profile / profile.max(), expected / expected.max(), atol=2e-3)


def test_road_imputes_from_the_kept_neighbours():
    """A linear ramp is its own neighbours' mean: removed voxels inside it are imputed exactly (no noise); the
    kept ones never change; the noise is ROAD's, on the removed voxels only."""
    ramp = torch.arange(8.0).reshape(1, 8, 1, 1).expand(1, 8, 6, 5).contiguous()
    removed = torch.zeros(1, 1, 8, 6, 5, dtype=torch.bool)
    removed[0, 0, 3:5, 2:4, 1:3] = True
    settings = Perturbation(replacement="road", road_noise=0.0, road_iterations=300)
    got = road_imputed(ramp, removed, settings, torch.zeros_like(ramp))[0]
    assert torch.allclose(got, ramp, atol=1e-4)
    noisy = road_imputed(ramp, removed, Perturbation(replacement="road", road_noise=0.1), ramp,
                         torch.Generator().manual_seed(0))[0]
    assert torch.equal(noisy[~removed[0]], ramp[~removed[0]]) and not torch.equal(noisy, ramp)


def test_refusals():
    with pytest.raises(ValueError, match="replacement"):
        Perturbation(replacement="zero")
    with pytest.raises(ValueError, match="order"):
        ranking(torch.rand(SHAPE), "signed")
