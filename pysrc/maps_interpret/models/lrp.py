"""Layer-wise relevance propagation (LRP) as a network whose input gradient is the relevance.

`lrp_network(model, composite)` rewrites a copy of a network so that its forward values are the network's and the
gradient of its target output, seeded with one-hot (what the C++ engine's `gradients` method computes, batched on
the device), is the LRP relevance at the input under Zennit's composite of that name. Each layer's rule is a
modified backward written with detached factors: for a rule R_in = x * T(R / z) (T: the layer's transposed
operation, z the rule's denominator), the layer's output carries, besides its true value, the term
f(x_d * x) / z_d - its own detached value, whose gradient is exactly x_d * T(g / z_d) (d: detached). No hook, no
Python at run time: the rewritten network is scripted like any other (models/export.py).

Rules, as Zennit 0.5.1 computes them (tests/reference_lrp.py spells each out; tests/test_lrp.py checks both):
- dense layers: epsilon (z = W x + b); convolutions: z+ (`plus`: z = W+ x+ + b+ + W- x-), alpha2-beta1 or
  the generalised gamma (0.25); the first layer: flat (`-flat` composites: every input and weight 1, no bias; not
  multiplied by the input) or z^B (`-box`: within each image's own minimum and maximum);
- stabiliser z + 1e-6 sign(z), sign(0) = +1, everywhere (Zennit's default epsilon and stabiliser);
- BatchNorm merged into the convolution or dense layer before it (its eval-mode statistics and affine);
- activations pass the relevance unchanged; max-pooling, flattening and dropout keep their gradient (a window's
  relevance to its maximum); average pooling and residual additions share it in proportion to their terms
  (Zennit's Norm rule; Zennit leaves an addition written `out += ...` to plain autograd, which copies the
  relevance into both branches and doubles it at every block: here it is conserved);
- the first-layer rule goes to every layer that reads the image: the first convolution, and in a ResNet3D the
  first block's shortcut too (Zennit gives it to the first layer in registration order only).

Refused, with the reason: a network with a layer no rule covers (InstanceNorm, squeeze-excitation gates,
attention), a BatchNorm not right after a convolution or dense layer, a TorchScript file (no layers to read).
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..methods import LRP_COMPOSITES as COMPOSITES  # the option's choices
from .conv import ClinicaCNN, PadMaxPool2d, PadMaxPool3d
from .resnet3d import ResBlock
ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.PReLU, nn.SELU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.Softplus)
KEPT = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, PadMaxPool2d, PadMaxPool3d, nn.Flatten, nn.Dropout,
        nn.Dropout2d, nn.Dropout3d, nn.Identity)
AFFINE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def stabilise(z: torch.Tensor) -> torch.Tensor:
    """z + 1e-6 sign(z), sign(0) = +1: Zennit's stabiliser (a literal: TorchScript reads no Python global)."""
    return z + 1e-6 * torch.where(z >= 0, torch.ones_like(z), -torch.ones_like(z))


def with_gradient(value: torch.Tensor, carrier: torch.Tensor) -> torch.Tensor:
    """`value`'s numbers with `carrier`'s gradient (carrier - its detached self is exactly 0: added first, it
    cannot round `value` away however large the carrier)."""
    return value.detach() + (carrier - carrier.detach())


class RuleAffine(nn.Module):
    """A convolution or dense layer (BatchNorm merged) with its rule: "epsilon", "plus", "alpha2beta1" or
    "flat"."""

    def __init__(self, layer: nn.Module, weight: torch.Tensor, bias: Optional[torch.Tensor], rule: str):
        super().__init__()
        self.rule = rule
        self.dims = weight.dim() - 2  # 0: dense
        self.stride = list(layer.stride) if self.dims else [1]
        self.padding = list(layer.padding) if self.dims else [0]
        self.dilation = list(layer.dilation) if self.dims else [1]
        self.groups = layer.groups if self.dims else 1
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.bias = nn.Parameter((bias if bias is not None else weight.new_zeros(weight.shape[0])).detach().clone(),
                                 requires_grad=False)

    def affine(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        if self.dims == 3:
            return F.conv3d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        if self.dims == 2:
            return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        if self.dims == 1:
            return F.conv1d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        return F.linear(x, weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.affine(x, self.weight, self.bias)
        if self.rule == "flat":  # R spread over the receptive field, whatever the input and weights
            ones = torch.ones_like(self.weight)
            z = self.affine(torch.ones_like(x), ones, None)
            return with_gradient(out, self.affine(x, ones, None) / stabilise(z).detach())
        if self.rule == "epsilon":
            return with_gradient(out, self.affine(x.detach() * x, self.weight, None) / stabilise(out).detach())
        w_pos, w_neg = self.weight.clamp(min=0), self.weight.clamp(max=0)
        if self.rule == "box":  # z^B within [low, high]: each image's own minimum and maximum
            axes = list(range(1, x.dim()))
            low = x.detach().amin(dim=axes, keepdim=True).expand_as(x)
            high = x.detach().amax(dim=axes, keepdim=True).expand_as(x)
            z = out - self.affine(low, w_pos, self.bias.clamp(min=0)) - self.affine(high, w_neg, self.bias.clamp(max=0))
            carrier = (self.affine(x.detach() * x, self.weight, None) - self.affine(low * x, w_pos, None)
                       - self.affine(high * x, w_neg, None))
            return with_gradient(out, carrier / stabilise(z).detach())
        x_pos, x_neg = x.clamp(min=0).detach(), x.clamp(max=0).detach()
        if self.rule == "gamma":  # generalised gamma (0.25): the output's sign picks the side; 0 drops it
            w_up, w_down = self.weight + 0.25 * w_pos, self.weight + 0.25 * w_neg
            z_up = (self.affine(x_pos, w_up, self.bias + 0.25 * self.bias.clamp(min=0))
                    + self.affine(x_neg, w_down, None))
            z_down = (self.affine(x_pos, w_down, self.bias + 0.25 * self.bias.clamp(max=0))
                      + self.affine(x_neg, w_up, None))
            share_up = (self.affine(x_pos * x, w_up, None) + self.affine(x_neg * x, w_down, None)) * (
                (out > 0).to(out) / stabilise(z_up)).detach()
            share_down = (self.affine(x_pos * x, w_down, None) + self.affine(x_neg * x, w_up, None)) * (
                (out < 0).to(out) / stabilise(z_down)).detach()
            return with_gradient(out, share_up + share_down)
        up = self.affine(x_pos, w_pos, self.bias.clamp(min=0)) + self.affine(x_neg, w_neg, None)
        share_up = (self.affine(x_pos * x, w_pos, None) + self.affine(x_neg * x, w_neg, None)) / stabilise(up).detach()
        if self.rule == "plus":
            return with_gradient(out, share_up)
        down = self.affine(x_pos, w_neg, self.bias.clamp(max=0)) + self.affine(x_neg, w_pos, None)
        share_down = (self.affine(x_pos * x, w_neg, None) + self.affine(x_neg * x, w_pos, None)) / stabilise(
            down).detach()
        return with_gradient(out, 2.0 * share_up - share_down)  # alpha 2, beta 1


class PassActivation(nn.Module):
    """An activation whose relevance goes through unchanged."""

    def __init__(self, activation: nn.Module):
        super().__init__()
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return with_gradient(self.activation(x), x)


class NormAvgPool(nn.Module):
    """Average pooling whose relevance is shared in proportion to each input (Zennit's Norm rule)."""

    def __init__(self, pool: nn.Module):
        super().__init__()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(x)
        return with_gradient(out, self.pool(x.detach() * x) / stabilise(out).detach())


class RuleResBlock(nn.Module):
    """ResNet3D's block: its layers with their rules, the addition sharing the relevance between the two branches
    in proportion to their values (the Norm rule)."""

    def __init__(self, conv1: nn.Module, act1: nn.Module, conv2: nn.Module, shortcut: nn.Module, act2: nn.Module):
        super().__init__()
        self.conv1, self.act1, self.conv2, self.shortcut, self.act2 = conv1, act1, conv2, shortcut, act2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        main = self.conv2(self.act1(self.conv1(x)))
        side = self.shortcut(x)
        total = main + side
        share = (main.detach() * main + side.detach() * side) / stabilise(total).detach()
        return self.act2(with_gradient(total, share))


def lrp_network(model: nn.Module, composite: str = "epsilon-plus-flat", zennit_batch_norm: bool = False) -> nn.Module:
    """A copy of `model` whose input gradient is its LRP relevance under `composite` (the module's docstring).
    Raises ValueError naming the layer no rule covers. `zennit_batch_norm`: each merged BatchNorm also scales by
    1 / sqrt(1 + eps), as the BatchNorm Zennit 0.5.1 leaves in the network after merging does (its statistics
    reset, its eps kept): the network Zennit explains, for comparisons; the default merge is the model's own."""
    if composite not in COMPOSITES:
        raise ValueError(f"lrp: unknown composite {composite!r}: choose one of {', '.join(COMPOSITES)}")
    if isinstance(model, torch.jit.ScriptModule):
        raise ValueError("lrp needs the network's layers to give each its rule; a TorchScript file has none to read: "
                         "use a ClinicaDL architecture, or another method")
    conv_rule = ("plus" if composite.startswith("epsilon-plus") else "gamma" if composite == "epsilon-gamma-box"
                 else "alpha2beta1")
    first_rule = "flat" if composite.endswith("-flat") else "box" if composite.endswith("-box") else None
    first = [True]  # the next convolution or dense layer reads the image

    def rule_for(layer: nn.Module) -> str:
        if first[0]:
            first[0] = False
            if first_rule == "flat" or (first_rule == "box" and not isinstance(layer, nn.Linear)):
                return first_rule
        return "epsilon" if isinstance(layer, nn.Linear) else conv_rule

    def convert(module: nn.Module, where: str) -> nn.Module:
        if isinstance(module, ResBlock):
            reads_image = first[0]
            conv1 = affine_with(module.conv1, module.bn1, rule_for(module.conv1), zennit_batch_norm)
            conv2 = affine_with(module.conv2, module.bn2, rule_for(module.conv2), zennit_batch_norm)
            short = module.shortcut[0]
            shortcut = affine_with(short, None, first_rule if reads_image and first_rule else conv_rule)
            return RuleResBlock(conv1, PassActivation(module.act1), conv2, shortcut, PassActivation(module.act2))
        if isinstance(module, nn.Sequential):
            children = list(module.named_children())
            out, skip = nn.Sequential(), False
            for i, (name, child) in enumerate(children):
                if skip:
                    skip = False
                    continue
                following = children[i + 1][1] if i + 1 < len(children) else None
                if isinstance(child, AFFINE):
                    norm = following if isinstance(following, NORMS) else None
                    skip = norm is not None
                    out.add_module(name, affine_with(child, norm, rule_for(child), zennit_batch_norm))
                else:
                    out.add_module(name, convert(child, f"{where}.{name}" if where else name))
            return out
        if isinstance(module, AFFINE):
            return affine_with(module, None, rule_for(module))
        if isinstance(module, ACTIVATIONS):
            return PassActivation(module)
        if isinstance(module, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                               nn.AdaptiveAvgPool3d)):
            return NormAvgPool(module)
        if isinstance(module, KEPT):
            return module
        reason = ("a BatchNorm must follow a convolution or dense layer, to be merged into it"
                  if isinstance(module, NORMS) else "no LRP rule covers this layer")
        if not where:  # a network of another shape (ClinicaDL 2.0's, a custom one): no layer list to read
            reason = "a network of this kind has no LRP rules here (ClinicaDL 1.x's CNNs and ResNet3D have)"
        raise ValueError(f"lrp: {where or 'the network'} is a {type(module).__name__}: {reason}; LRP supports "
                         "convolutions, dense layers, BatchNorm after them, activations, pooling, dropout and "
                         "ResNet3D's blocks")

    model = copy.deepcopy(model).eval()
    if not hasattr(model, "convolutions") or not hasattr(model, "fc"):
        return convert(model, "")
    return ClinicaCNN(convert(model.convolutions, "convolutions"), convert(model.fc, "fc"))


def affine_with(layer: nn.Module, norm: Optional[nn.Module], rule: str, zennit: bool = False) -> RuleAffine:
    """`layer` with the eval-mode BatchNorm `norm` after it merged in (scale = gamma / sqrt(var + eps) per output
    channel); `zennit`: times Zennit's residue 1 / sqrt(1 + eps)."""
    weight = layer.weight.detach()
    bias = None if layer.bias is None else layer.bias.detach()
    if norm is not None:
        scale = norm.weight.detach() / (norm.running_var + norm.eps).sqrt()
        weight = weight * scale.view(-1, *([1] * (weight.dim() - 1)))
        bias = ((bias if bias is not None else 0.0) - norm.running_mean) * scale + norm.bias.detach()
        if zennit:
            residue = 1.0 / (1.0 + norm.eps) ** 0.5
            weight, bias = weight * residue, bias * residue
    return RuleAffine(layer, weight, bias, rule)
