"""LRP: the pure-PyTorch reference of tests/reference_lrp.py against Zennit 0.5.1 (the oracle), on ClinicaDL's
Conv5_FC3 and ResNet3D and on a small network with average pooling (random weights, random BatchNorm statistics
and affine parameters, eval mode), for Zennit's composites EpsilonPlusFlat, EpsilonAlpha2Beta1Flat, EpsilonPlus,
EpsilonAlpha2Beta1 and EpsilonGammaBox; relevance conservation of the rules that conserve, on bias-free networks;
the rules on one Conv3d against values computed by hand.

Agreement is measured per sample as max |R_reference - R_zennit| / max |R_zennit| <= 1e-5: the one-hot start
spreads a relevance of about 1 over every voxel, so raw values are about 1e-5 and a raw 1e-5 bound would accept
anything; the maximum is the scale a saliency map is shown at.

ResNet3D is built by the registry (resnet3d) except its first Linear layer: ClinicaDL fixes it at 10240 features,
those of a 169x208x179 image; 63 voxels per axis is the smallest input that survives the five MaxPool3d(3, 2), and
it flattens to 128 features, so that layer is Linear(128, 256) here (every other layer is the registry's).
"""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import reference_lrp as ref
from maps_interpret.models.conv import conv5_fc3
from maps_interpret.models.resnet3d import ResBlock, resnet3d

COMPOSITES = ref.COMPOSITES
BOUNDS = {"low": 0.0, "high": 1.0}  # the test images are torch.rand: within [0, 1)
TOLERANCE = 1e-5
STAGES = 5  # ResNet3D's residual blocks


@pytest.fixture(scope="module")
def zennit():
    """Zennit's classes, or a skip where it is not installed. Zennit imports torchvision, whose compiled ops cannot
    load beside the CPU torch; the module registering them is skipped, as tests/clinicadl2_oracle.py does."""
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    pytest.importorskip("zennit")
    from zennit.attribution import Gradient
    from zennit.canonizers import AttributeCanonizer, SequentialMergeBatchNorm
    from zennit.composites import (EpsilonAlpha2Beta1, EpsilonAlpha2Beta1Flat, EpsilonGammaBox, EpsilonPlus,
                                   EpsilonPlusFlat, MixedComposite, NameMapComposite)
    from zennit.layer import Sum
    from zennit.rules import Flat

    classes = {"epsilon_plus_flat": EpsilonPlusFlat, "epsilon_alpha2_beta1_flat": EpsilonAlpha2Beta1Flat,
               "epsilon_plus": EpsilonPlus, "epsilon_alpha2_beta1": EpsilonAlpha2Beta1,
               "epsilon_gamma_box": EpsilonGammaBox}
    return SimpleNamespace(Gradient=Gradient, AttributeCanonizer=AttributeCanonizer, Sum=Sum, Flat=Flat,
                           SequentialMergeBatchNorm=SequentialMergeBatchNorm, MixedComposite=MixedComposite,
                           NameMapComposite=NameMapComposite, classes=classes)


# ------------------------------------------------------------------------------------------------- networks

def randomise(model: nn.Module, seed: int, biases: bool = True) -> nn.Module:
    """Eval mode, every floating tensor of the state_dict drawn: weights N(0, 2 / fan_in) (activations keep their
    scale, so logits are O(1) and the stabiliser stays a stabiliser), BatchNorm gamma 1 + 0.1 N, running_var
    U[0.5, 1.5), running_mean, beta and biases 0.1 N, or 0 where `biases` is False (then the merged BatchNorm
    has no shift either)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if not value.is_floating_point():
                continue
            name = key.rsplit(".", 1)[-1]
            if name == "running_var":
                value.copy_(0.5 + torch.rand(value.shape, generator=generator))
            elif value.dim() >= 2:
                value.copy_(torch.randn(value.shape, generator=generator) * (2.0 / value[0].numel()) ** 0.5)
            elif name == "weight":
                value.copy_(1.0 + 0.1 * torch.randn(value.shape, generator=generator))
            elif biases:
                value.copy_(0.1 * torch.randn(value.shape, generator=generator))
            else:
                value.zero_()
    return model.eval()


def small_resnet3d() -> nn.Module:
    """The registry's ResNet3D for 63^3 inputs (see the module docstring)."""
    model = resnet3d({})
    model.fc[1] = nn.Linear(128, 256)
    return model


def pooling_network() -> nn.Module:
    """What the ClinicaDL networks lack: average pooling (Norm rule), overlapping max-pooling windows, LeakyReLU,
    three outputs; with BatchNorm after both convolutions."""
    return nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4), nn.LeakyReLU(), nn.AvgPool3d(2),
        nn.Conv3d(4, 6, 3), nn.BatchNorm3d(6), nn.ELU(), nn.MaxPool3d(3, stride=2),
        nn.Flatten(), nn.Dropout(0.5), nn.Linear(6 * 1 * 2 * 1, 3))


def image(shape, seed: int, dtype=torch.float32) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


CASES = {  # network, batch, one target per sample
    "conv5_fc3": (lambda: conv5_fc3((1, 24, 28, 24), output_size=2, dropout=0.0), (2, 1, 24, 28, 24), [1, 0]),
    "resnet3d": (small_resnet3d, (1, 1, 63, 63, 63), [1]),
    "pooling": (pooling_network, (2, 1, 12, 14, 12), [2, 0]),
}


@pytest.fixture(scope="module")
def networks():
    """Per case: (network with biases, float32), (bias-free network, float64), float32 batch."""
    built = {}
    for seed, (name, (build, shape, targets)) in enumerate(CASES.items()):
        built[name] = SimpleNamespace(model=randomise(build(), seed), targets=targets, batch=image(shape, seed),
                                      unbiased=randomise(build(), seed, biases=False).double())
    return built


# ---------------------------------------------------------------------------------------------- Zennit setup

def summed_forward(block: ResBlock, x: torch.Tensor) -> torch.Tensor:
    """ResBlock's forward with its addition done by a Zennit Sum module, so that the Norm rule hooks it."""
    branch = block.bn2(block.conv2(block.act1(block.bn1(block.conv1(x)))))
    terms = torch.stack([branch, block.shortcut(x)], dim=-1)
    return block.act2(block.residual_sum(terms))


def resblock_canonizer(zennit):
    """What zennit.torchvision.ResNetCanonizer does for torchvision's blocks, for ResNet3D's ResBlock (which it
    does not know): the in-place `out += shortcut(x)` becomes a Sum module."""
    def attributes(name, module):
        if isinstance(module, ResBlock):
            return {"forward": summed_forward.__get__(module), "residual_sum": zennit.Sum()}
        return None

    return zennit.AttributeCanonizer(attributes)


def zennit_composite(zennit, name: str, residual: str = "norm", also_first=()):
    """Zennit's composite `name` with BatchNorm merged; residual "norm": ResBlock additions as Sum modules,
    "gradient": left as they are. `also_first`: module names that get the first-layer rule too."""
    canonizers = [zennit.SequentialMergeBatchNorm()]
    if residual == "norm":
        canonizers.append(resblock_canonizer(zennit))
    options = BOUNDS if name == "epsilon_gamma_box" else {}
    if not also_first:
        return zennit.classes[name](canonizers=canonizers, **options)
    assert name.endswith("_flat"), "only the flat first layer is set by name here"
    return zennit.MixedComposite([zennit.NameMapComposite([(tuple(also_first), zennit.Flat())]),
                                  zennit.classes[name](**options)], canonizers=canonizers)


def zennit_lrp(zennit, model: nn.Module, batch: torch.Tensor, targets, composite, scale: float = 1.0):
    """Zennit's Gradient attributor given the one-hot of `targets` (times `scale`) as attr_output."""
    outputs = model(batch).shape[1]
    attr_output = scale * torch.eye(outputs, dtype=batch.dtype)[targets]
    with zennit.Gradient(model, composite) as attributor:
        _, relevance = attributor(batch.clone(), attr_output)  # clone: Gradient sets requires_grad on its input
    return relevance.detach()


def reference_composite(name: str) -> ref.Composite:
    return ref.named_composite(name, **(BOUNDS if name == "epsilon_gamma_box" else {}))


def assert_same_maps(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    for sample, (a, e) in enumerate(zip(actual, expected)):
        scale = e.abs().max().item()
        error = (a - e).abs().max().item()
        assert scale > 0 and error <= TOLERANCE * scale, f"sample {sample}: max error {error:.3g}, max |R| {scale:.3g}"


# ------------------------------------------------------------------------------------- agreement with Zennit

@pytest.mark.parametrize("name", COMPOSITES)
@pytest.mark.parametrize("case", ["conv5_fc3", "resnet3d", "pooling"])
def test_reference_matches_zennit(zennit, networks, case, name):
    """Residual additions as Sum modules with the Norm rule (conserving); the first layer as Zennit picks it."""
    net = networks[case]
    expected = zennit_lrp(zennit, net.model, net.batch, net.targets, zennit_composite(zennit, name))
    actual = ref.lrp(net.model, net.batch, net.targets, reference_composite(name))
    assert_same_maps(actual, expected)


def test_resnet3d_without_residual_canonizer_matches_gradient_residuals(zennit, networks):
    """Zennit with BatchNorm merging alone: ResBlock's `out += shortcut(x)` is plain autograd, its gradient copies
    the relevance into both terms; the reference's residual="gradient"."""
    net, name = networks["resnet3d"], "epsilon_plus_flat"
    expected = zennit_lrp(zennit, net.model, net.batch, net.targets, zennit_composite(zennit, name, "gradient"))
    actual = ref.lrp(net.model, net.batch, net.targets, reference_composite(name), residual="gradient")
    assert_same_maps(actual, expected)


def test_resnet3d_first_layer_rule_on_every_input_reader_matches_zennit(zennit, networks):
    """The image feeds conv1 and the 1x1 shortcut of the first block; Zennit gives the flat rule to conv1 only,
    naming the shortcut gives it the flat rule too (the reference's first_layer="input")."""
    net, name = networks["resnet3d"], "epsilon_plus_flat"
    composite = zennit_composite(zennit, name, also_first=["convolutions.0.0.shortcut.0"])
    expected = zennit_lrp(zennit, net.model, net.batch, net.targets, composite)
    actual = ref.lrp(net.model, net.batch, net.targets, reference_composite(name), first_layer="input")
    assert_same_maps(actual, expected)


def test_zennit_gradient_returns_relevance_not_scaled_by_the_output(zennit, networks):
    """Given a one-hot attr_output, Gradient returns the relevance itself, linear in attr_output; the output's value
    is no factor: scaling the last layer by 10 scales the logits by 10 and leaves the map as it was."""
    net = networks["conv5_fc3"]
    composite = zennit_composite(zennit, "epsilon_plus")
    base = zennit_lrp(zennit, net.model, net.batch, net.targets, composite)
    assert_same_maps(zennit_lrp(zennit, net.model, net.batch, net.targets, composite, scale=3.0), 3.0 * base)
    louder = conv5_fc3((1, 24, 28, 24), output_size=2, dropout=0.0).eval()
    louder.load_state_dict(net.model.state_dict())
    with torch.no_grad():
        louder.fc[-1].weight.mul_(10.0)
        louder.fc[-1].bias.mul_(10.0)
    torch.testing.assert_close(louder(net.batch), 10.0 * net.model(net.batch), rtol=1e-5, atol=1e-6)
    assert_same_maps(zennit_lrp(zennit, louder, net.batch, net.targets, composite), base)


# ----------------------------------------------------------------------------------------------- conservation

def relevance_sums(case, networks, name, **options) -> torch.Tensor:
    """Per sample, the total input relevance of the bias-free float64 network (the target's relevance is 1)."""
    net = networks[case]
    maps = ref.lrp(net.unbiased, net.batch.double(), net.targets, reference_composite(name), **options)
    return maps.flatten(1).sum(1)


@pytest.mark.parametrize("name", COMPOSITES)
def test_conv5_fc3_conserves_relevance(networks, name):
    """Without biases every rule here conserves up to its stabiliser: epsilon and Norm lose eps / |z_j| of R_j,
    flat eps / N_j (N_j >= 1 inputs), z+ and gamma drop R_j where their denominator is 0, alpha-beta gives
    alpha R_j (or -beta R_j) where one part is 0; none of these happens here beyond 1e-5."""
    sums = relevance_sums("conv5_fc3", networks, name)
    torch.testing.assert_close(sums, torch.ones_like(sums), rtol=0, atol=TOLERANCE)


def test_resnet3d_conserves_relevance_with_gamma_box(networks):
    """EpsilonGammaBox conserves on ResNet3D, the additions taken by the Norm rule: the gamma rule shares a negative
    z_j among its negative contributions, so no output is left without a denominator."""
    sums = relevance_sums("resnet3d", networks, "epsilon_gamma_box")
    torch.testing.assert_close(sums, torch.ones_like(sums), rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("name", ["epsilon_plus_flat", "epsilon_alpha2_beta1"])
def test_resnet3d_zplus_and_alpha_beta_do_not_conserve(networks, name):
    """ResNet3D's 1x1 shortcuts read few channels (1 in the first block, the non-negative image; 8 in the second):
    some outputs have no positive contribution (z+ drops their relevance, alpha-beta gives them -beta R_j) or no
    negative one (alpha-beta: alpha R_j). Giving the first shortcut the flat rule too (first_layer="input") does
    not mend the second block's."""
    sums = relevance_sums("resnet3d", networks, name)
    assert (sums - 1).abs().min() > 1e-3, f"{name}: {sums.tolist()}"


def test_zennit_doubles_relevance_at_every_residual_addition_it_has_no_canonizer_for(zennit, networks):
    """Zennit, BatchNorm merging alone, on the bias-free ResNet3D: the addition's gradient gives both terms all of R,
    so each of the 5 ResBlocks doubles the relevance, 2^5 in all (EpsilonGammaBox conserves everywhere else), up to
    1e-4 that the stabiliser loses at the first shortcut (its relevance is no longer proportional to its output,
    and voxels near 0 give denominators near 0)."""
    net, name = networks["resnet3d"], "epsilon_gamma_box"
    composite = zennit_composite(zennit, name, "gradient")
    sums = zennit_lrp(zennit, net.unbiased, net.batch.double(), net.targets, composite).flatten(1).sum(1)
    torch.testing.assert_close(sums, torch.full_like(sums, 2.0 ** STAGES), rtol=1e-3, atol=0)


# ---------------------------------------------------------------------------------- one Conv3d, by hand

# A 2x2x2 kernel, five weights +1 then three -1 (in memory order), no bias unless given; input all ones (4x4x4).
# R = 1 at output voxel (1, 0, 2), so the window is x[1:3, 0:2, 2:4]; z = 5 - 3 = 2, positive part 5, negative -3.
HAND = {  # rule, options, bias -> relevance of the window's eight voxels (memory order), 0 elsewhere
    "epsilon": (ref.epsilon_rule, {}, None, [1 / 2] * 5 + [-1 / 2] * 3),
    "epsilon, bias 1": (ref.epsilon_rule, {}, 1.0, [1 / 3] * 5 + [-1 / 3] * 3),  # z = 3: the bias keeps 1/3
    "z+": (ref.zplus_rule, {}, None, [1 / 5] * 5 + [0] * 3),
    "z+, bias 1": (ref.zplus_rule, {}, 1.0, [1 / 6] * 5 + [0] * 3),  # b+ = 1 joins the denominator
    "alpha2beta1": (ref.alpha_beta_rule, {}, None, [2 / 5] * 5 + [-1 / 3] * 3),  # 2 * (1/5), -1 * (-1 / -3)
    "flat": (ref.flat_rule, {}, None, [1 / 8] * 8),
    # box, low -1, high 2: +1 weights w x - w low = 2, -1 weights w x - w high = 1; z = 10 + 3 = 13
    "box": (ref.box_rule, {"low": -1.0, "high": 2.0}, None, [2 / 13] * 5 + [1 / 13] * 3),
    # gamma 0.25, z > 0: weights w + 0.25 w+ = 1.25 and -1; denominator 6.25 - 3 = 3.25
    "gamma": (ref.gamma_rule, {"gamma": 0.25}, None, [1.25 / 3.25] * 5 + [-1 / 3.25] * 3),
}


@pytest.mark.parametrize("case", list(HAND))
def test_rules_on_one_conv3d_match_hand_computation(case):
    rule, options, bias, window = HAND[case]
    weight = torch.tensor([1, 1, 1, 1, 1, -1, -1, -1], dtype=torch.float64).view(1, 1, 2, 2, 2)
    layer = ref.Affine(weight, None if bias is None else torch.tensor([bias], dtype=torch.float64),
                       stride=(1, 1, 1), padding=(0, 0, 0), dilation=(1, 1, 1))
    x = torch.ones(1, 1, 4, 4, 4, dtype=torch.float64)
    R = torch.zeros(1, 1, 3, 3, 3, dtype=torch.float64)
    R[0, 0, 1, 0, 2] = 1.0
    expected = torch.zeros_like(x)
    expected[0, 0, 1:3, 0:2, 2:4] = torch.tensor(window, dtype=torch.float64).view(2, 2, 2)
    torch.testing.assert_close(rule(layer, x, R, **options), expected, rtol=0, atol=TOLERANCE)
