"""Pure-PyTorch twin of layer-wise relevance propagation (LRP) with Zennit's composite rules, written for
clarity as the rules are defined (Bach et al. 2015, Montavon et al. 2017/2019), not for speed. It is the
reference a future C++ implementation (custom ops with modified backward) is tested against, and it is
itself tested against Zennit 0.5.1 (tests/test_lrp_zennit.py).

Every rule takes one layer's input x, its (BatchNorm-merged) weight and bias, and the relevance R at its
output, and returns the relevance at its input through the same four steps, each a future op:
    z = forward(modified x, modified weight, modified bias)      the rule's denominator
    s = R / stabilise(z)                                          Zennit's stabiliser, below
    c = transpose(s, modified weight)                             the gradient of that forward (transposed conv)
    R_in = modified x * c                                         summed over the rule's terms

Zennit facts mirrored here (each checked against Zennit by the tests):
* stabilise(z) = z + eps * sign0(z), sign0 = sign with +1 at 0: never a division by zero, and 0 becomes +eps.
  eps = 1e-6 for every rule of every built-in composite (`epsilon` of the Epsilon rule, `stabilizer` of the
  others).
* With a one-hot `attr_output`, Zennit's Gradient attributor returns the relevance itself (the modified
  vector-Jacobian product); the relevance at the output is the one-hot, the output's value is not a factor.
* The first-layer rule (flat, or box in EpsilonGammaBox) goes to the first matching module in registration
  order (named_modules), only that one: in a ResNet the 1x1 shortcut convolution that also reads the image
  gets the ordinary convolution rule.
* Activations (ReLU, ELU, ...) and BatchNorm pass relevance unchanged; max-pooling, Flatten and Dropout are
  not hooked, so relevance follows their gradient (max-pooling: all of a window's relevance to its argmax).
* BatchNorm is merged into the preceding convolution (SequentialMergeBatchNorm), and the BatchNorm left in
  the network then computes x / sqrt(1 + eps) (mean 0, variance 1, but its eps stays): a 5e-6 shrink of the
  forward values at every merged BatchNorm, mimicked here.
* A residual addition not written as a module is plain autograd to Zennit: its gradient copies the relevance
  into both branches, which doubles it at every block ("gradient"). Written as Zennit's Sum module, it gets
  the Norm rule R_k = z_k R / stabilise(z_1 + z_2), which conserves relevance ("norm", the default here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Callable, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from maps_interpret.models.conv import ClinicaCNN, PadMaxPool2d, PadMaxPool3d
from maps_interpret.models.resnet3d import ResBlock

EPSILON = 1e-6  # Zennit's default `epsilon` (Epsilon rule) and `stabilizer` (all other rules)
GAMMA = 0.25  # Zennit's default gamma


# ---------------------------------------------------------------------------------------------------- stabiliser

def stabilise(z: torch.Tensor, eps: float = EPSILON) -> torch.Tensor:
    """Zennit's stabiliser: z + eps * sign(z), where sign(0) counts as +1 (a zero denominator becomes +eps)."""
    sign = (z == 0).to(z) + z.sign()
    return z + sign * eps


# ------------------------------------------------------------------------------------- one linear layer, 3 ops

@dataclass
class Affine:
    """A convolution or a dense layer, BatchNorm already merged: its weight and bias (None: no bias), and the
    convolution geometry. `forward` and `transpose` are the two operations every rule is made of."""

    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    stride: Sequence[int] = ()
    padding: Sequence[int] = ()
    dilation: Sequence[int] = ()
    groups: int = 1

    @property
    def is_conv(self) -> bool:
        return self.weight.dim() > 2

    def forward(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        """The layer with the given (modified) parameters."""
        if not self.is_conv:
            return F.linear(x, weight, bias)
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[self.weight.dim() - 2]
        return conv(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def transpose(self, s: torch.Tensor, weight: torch.Tensor, input_shape: Sequence[int]) -> torch.Tensor:
        """The gradient of `forward` with respect to its input, applied to s: s @ W for a dense layer, the
        transposed convolution for a convolution (a bias does not change it)."""
        if not self.is_conv:
            return s @ weight
        conv_input = {1: torch.nn.grad.conv1d_input, 2: torch.nn.grad.conv2d_input,
                      3: torch.nn.grad.conv3d_input}[self.weight.dim() - 2]
        return conv_input(list(input_shape), weight, s, self.stride, self.padding, self.dilation, self.groups)


def positive(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.clamp(min=0)


def negative(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.clamp(max=0)


# ------------------------------------------------------------------------------------------- rules, one layer

def epsilon_rule(layer: Affine, x: torch.Tensor, R: torch.Tensor, eps: float = EPSILON) -> torch.Tensor:
    """LRP-epsilon (dense layers): R_i = x_i sum_j w_ji R_j / stabilise(z_j), z = W x + b. eps = 0 is LRP-0."""
    z = layer.forward(x, layer.weight, layer.bias)
    s = R / stabilise(z, eps)
    return x * layer.transpose(s, layer.weight, x.shape)


def zplus_rule(layer: Affine, x: torch.Tensor, R: torch.Tensor, eps: float = EPSILON) -> torch.Tensor:
    """z+ = alpha1-beta0 (Zennit's ZPlus): only the positive contributions w+ x+ + w- x- share R_j; the positive
    part of the bias b+ is in the denominator (it absorbs relevance), the negative inputs are kept."""
    w_pos, w_neg = positive(layer.weight), negative(layer.weight)
    x_pos, x_neg = x.clamp(min=0), x.clamp(max=0)
    z = layer.forward(x_pos, w_pos, positive(layer.bias)) + layer.forward(x_neg, w_neg, None)
    s = R / stabilise(z, eps)
    return x_pos * layer.transpose(s, w_pos, x.shape) + x_neg * layer.transpose(s, w_neg, x.shape)


def alpha_beta_rule(layer: Affine, x: torch.Tensor, R: torch.Tensor, alpha: float = 2.0, beta: float = 1.0,
                    eps: float = EPSILON) -> torch.Tensor:
    """alpha-beta (alpha - beta = 1): R_i = alpha * (x_i's share of the positive contributions of each z_j)
    - beta * (its share of the negative ones). Positive part: w+ x+ + w- x- + b+; negative part: w- x+ + w+ x-
    + b-. An output with no negative (or no positive) contribution gives alpha R_j (or -beta R_j)."""
    w_pos, w_neg = positive(layer.weight), negative(layer.weight)
    x_pos, x_neg = x.clamp(min=0), x.clamp(max=0)
    z_pos = layer.forward(x_pos, w_pos, positive(layer.bias)) + layer.forward(x_neg, w_neg, None)
    z_neg = layer.forward(x_pos, w_neg, negative(layer.bias)) + layer.forward(x_neg, w_pos, None)
    s_pos = R / stabilise(z_pos, eps)
    s_neg = R / stabilise(z_neg, eps)
    share_pos = x_pos * layer.transpose(s_pos, w_pos, x.shape) + x_neg * layer.transpose(s_pos, w_neg, x.shape)
    share_neg = x_pos * layer.transpose(s_neg, w_neg, x.shape) + x_neg * layer.transpose(s_neg, w_pos, x.shape)
    return alpha * share_pos - beta * share_neg


def flat_rule(layer: Affine, x: torch.Tensor, R: torch.Tensor, eps: float = EPSILON) -> torch.Tensor:
    """Flat (first layer): R_j spread evenly over its receptive field, ignoring the input and the weights:
    every weight and input set to 1, no bias. Zero padding is outside the field (it has no input)."""
    ones_w = torch.ones_like(layer.weight)
    ones_x = torch.ones_like(x)
    z = layer.forward(ones_x, ones_w, None)  # the number of (input channel, voxel) pairs feeding z_j
    s = R / stabilise(z, eps)
    return layer.transpose(s, ones_w, x.shape)  # no product with the input


def box_rule(layer: Affine, x: torch.Tensor, R: torch.Tensor, low, high, eps: float = EPSILON) -> torch.Tensor:
    """z^B (Zennit's ZBox, first layer; the input lies in [low, high]): contribution of x_i to z_j is
    w_ji x_i - w+_ji low_i - w-_ji high_i >= 0. The bias terms b, b+, b- of the three forwards cancel."""
    low = torch.as_tensor(low, dtype=x.dtype).expand_as(x)
    high = torch.as_tensor(high, dtype=x.dtype).expand_as(x)
    w, w_pos, w_neg = layer.weight, positive(layer.weight), negative(layer.weight)
    z = (layer.forward(x, w, layer.bias) - layer.forward(low, w_pos, positive(layer.bias))
         - layer.forward(high, w_neg, negative(layer.bias)))
    s = R / stabilise(z, eps)
    return (x * layer.transpose(s, w, x.shape) - low * layer.transpose(s, w_pos, x.shape)
            - high * layer.transpose(s, w_neg, x.shape))


def gamma_rule(layer: Affine, x: torch.Tensor, R: torch.Tensor, gamma: float = GAMMA,
               eps: float = EPSILON) -> torch.Tensor:
    """Generalised gamma (Zennit's Gamma): where z_j = W x + b > 0, R_j is shared by the contributions computed
    with the weights W + gamma W+ on x+ and W + gamma W- on x- (bias b + gamma b+); where z_j < 0, by W + gamma W-
    on x+ and W + gamma W+ on x- (bias b + gamma b-); where z_j == 0 exactly, R_j is dropped."""
    w = layer.weight
    w_up, w_down = w + gamma * positive(w), w + gamma * negative(w)
    b = layer.bias
    b_up = None if b is None else b + gamma * positive(b)
    b_down = None if b is None else b + gamma * negative(b)
    x_pos, x_neg = x.clamp(min=0), x.clamp(max=0)
    z = layer.forward(x, w, b)
    z_up = layer.forward(x_pos, w_up, b_up) + layer.forward(x_neg, w_down, None)
    z_down = layer.forward(x_pos, w_down, b_down) + layer.forward(x_neg, w_up, None)
    s_up = (z > 0).to(R) * R / stabilise(z_up, eps)
    s_down = (z < 0).to(R) * R / stabilise(z_down, eps)
    return (x_pos * layer.transpose(s_up, w_up, x.shape) + x_neg * layer.transpose(s_up, w_down, x.shape)
            + x_pos * layer.transpose(s_down, w_down, x.shape) + x_neg * layer.transpose(s_down, w_up, x.shape))


def pass_rule(R: torch.Tensor) -> torch.Tensor:
    """Activations and BatchNorm (Zennit's Pass): the relevance goes through unchanged, whatever the input."""
    return R


def max_pool_rule(x: torch.Tensor, R: torch.Tensor, kernel, stride, padding=0) -> torch.Tensor:
    """Max-pooling as Zennit leaves it (no rule: its gradient): each window's relevance goes to its argmax
    (the first maximum on ties, torch's choice); overlapping windows add up at a shared winner."""
    pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[x.dim() - 2]
    _, winners = pool(x, kernel, stride, padding, return_indices=True)  # flat index in each (sample, channel)
    R_in = torch.zeros_like(x).flatten(2)
    R_in.scatter_add_(2, winners.flatten(2), R.flatten(2))
    return R_in.view_as(x)


def avg_pool_rule(x: torch.Tensor, R: torch.Tensor, kernel, stride, eps: float = EPSILON) -> torch.Tensor:
    """Average pooling (Zennit's Norm rule): R_i = x_i sum_j (1/K) R_j / stabilise(mean_j), K the window size;
    the pooling is a depthwise convolution with weights 1/K (no padding)."""
    channels, dims = x.shape[1], x.dim() - 2
    kernel, stride = _per_axis(kernel, dims), _per_axis(stride, dims)
    weight = torch.full((channels, 1) + kernel, 1.0 / math.prod(kernel), dtype=x.dtype)
    layer = Affine(weight, None, stride, (0,) * dims, (1,) * dims, groups=channels)
    z = layer.forward(x, weight, None)
    s = R / stabilise(z, eps)
    return x * layer.transpose(s, weight, x.shape)


def _per_axis(value, dims: int) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (int(value),) * dims


def sum_rule(terms: Sequence[torch.Tensor], R: torch.Tensor, eps: float = EPSILON) -> List[torch.Tensor]:
    """An addition z = sum_k z_k (Zennit's Sum module with the Norm rule): R_k = z_k R / stabilise(z)."""
    s = R / stabilise(sum(terms), eps)
    return [term * s for term in terms]


# ------------------------------------------------------------------------------------------- BatchNorm merging

def merge_batch_norm(weight: torch.Tensor, bias: Optional[torch.Tensor], gamma: torch.Tensor, beta: torch.Tensor,
                     mean: torch.Tensor, var: torch.Tensor, eps: float):
    """Eval-mode BatchNorm after a convolution (or dense layer) folded into it, as Zennit's canonizer writes
    it: scale = gamma / (var + eps) ** 0.5, W' = W scale (per output channel), b' = (b - mean) scale + beta
    (b = 0 when the layer has none)."""
    scale = gamma / (var + eps) ** 0.5
    merged_weight = weight * scale.view(-1, *([1] * (weight.dim() - 1)))
    merged_bias = ((bias if bias is not None else 0.0) - mean) * scale + beta
    return merged_weight, merged_bias


def batch_norm_residue(eps: float) -> float:
    """The factor Zennit's merged BatchNorm still applies: mean 0, variance 1, gamma 1, beta 0, but its eps kept,
    so it computes x / sqrt(1 + eps)."""
    return 1.0 / (1.0 + eps) ** 0.5


# ---------------------------------------------------------------------------------------------------- composites

@dataclass(frozen=True)
class Composite:
    """Which rule each layer gets, as Zennit's composite of the same name: `conv` for convolutions, epsilon for
    dense layers, `first` (or None) for the first layer of the kinds `first_kinds` ("conv", "dense")."""

    name: str
    conv: str  # "zplus" | "alpha2beta1" | "gamma"
    first: Optional[str] = None  # "flat" | "box"
    first_kinds: tuple = ("conv", "dense")
    epsilon: float = EPSILON
    stabiliser: float = EPSILON
    gamma: float = GAMMA
    low: object = None
    high: object = None

    def rule(self, layer: Affine, first: bool) -> Callable:
        """The rule (layer, x, R) -> R_in of one affine layer; `first`: it gets the first-layer rule."""
        if first:
            if self.first == "flat":
                return partial(flat_rule, eps=self.stabiliser)
            return partial(box_rule, low=self.low, high=self.high, eps=self.stabiliser)
        if not layer.is_conv:
            return partial(epsilon_rule, eps=self.epsilon)
        if self.conv == "zplus":
            return partial(zplus_rule, eps=self.stabiliser)
        if self.conv == "alpha2beta1":
            return partial(alpha_beta_rule, alpha=2.0, beta=1.0, eps=self.stabiliser)
        return partial(gamma_rule, gamma=self.gamma, eps=self.stabiliser)


def named_composite(name: str, **options) -> Composite:
    """A composite by Zennit's registered name (epsilon_plus_flat, ...), with its keyword options (epsilon,
    stabiliser, gamma, low, high)."""
    layouts = {
        "epsilon_plus_flat": dict(conv="zplus", first="flat"),
        "epsilon_alpha2_beta1_flat": dict(conv="alpha2beta1", first="flat"),
        "epsilon_plus": dict(conv="zplus"),
        "epsilon_alpha2_beta1": dict(conv="alpha2beta1"),
        "epsilon_gamma_box": dict(conv="gamma", first="box", first_kinds=("conv",)),  # ZBox maps Convolution only
    }
    if name not in layouts:
        raise ValueError(f"unknown composite {name!r}: one of {', '.join(layouts)}")
    if name == "epsilon_gamma_box" and (options.get("low") is None or options.get("high") is None):
        raise ValueError("epsilon_gamma_box needs the input's bounds: low=..., high=...")
    return Composite(name=name, **layouts[name], **options)


COMPOSITES = ("epsilon_plus_flat", "epsilon_alpha2_beta1_flat", "epsilon_plus", "epsilon_alpha2_beta1",
              "epsilon_gamma_box")


# ---------------------------------------------------------------------------- the network as a chain of steps

class Step:
    """One stage of the forward pass and its relevance rule: `relevance(x, R)` maps the relevance at the
    output of `forward(x)` to its input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def relevance(self, x: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class AffineStep(Step):
    def __init__(self, layer: Affine, rule: Callable):
        self.layer, self.rule = layer, rule
        self.merged = False  # a BatchNorm folded in already

    def forward(self, x):
        return self.layer.forward(x, self.layer.weight, self.layer.bias)

    def relevance(self, x, R):
        return self.rule(self.layer, x, R)


class PassStep(Step):
    """An element-wise map (activation, merged BatchNorm's residue, eval Dropout): Pass rule."""

    def __init__(self, function: Callable):
        self.function = function

    def forward(self, x):
        return self.function(x)

    def relevance(self, x, R):
        return pass_rule(R)


class MaxPoolStep(Step):
    """MaxPool, or ClinicaDL's PadMaxPool (one zero first on every odd axis): relevance routed to the winner;
    any that a padding cell won is dropped with the padding, as the gradient of F.pad does."""

    def __init__(self, kernel, stride, padding=0, pad_odd_axes: bool = False):
        self.kernel, self.stride, self.padding, self.pad_odd_axes = kernel, stride, padding, pad_odd_axes

    def _pads(self, x):
        """One zero before each odd-sized axis, as PadMaxPool adds (F.pad's order)."""
        pads = []
        for axis in reversed(range(2, x.dim())):  # F.pad lists the last axis first
            pads += [x.size(axis) % 2, 0]
        return pads

    def _padded(self, x):
        return F.pad(x, self._pads(x)) if self.pad_odd_axes else x

    def forward(self, x):
        pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[x.dim() - 2]
        return pool(self._padded(x), self.kernel, self.stride, self.padding)

    def relevance(self, x, R):
        R_padded = max_pool_rule(self._padded(x), R, self.kernel, self.stride, self.padding)
        crop = (slice(None), slice(None)) + tuple(slice(R_padded.size(a) - x.size(a), None) for a in range(2, x.dim()))
        return R_padded[crop]


class AvgPoolStep(Step):
    def __init__(self, kernel: int, stride: int, eps: float):
        self.kernel, self.stride, self.eps = kernel, stride, eps

    def forward(self, x):
        pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[x.dim() - 2]
        return pool(x, self.kernel, self.stride)

    def relevance(self, x, R):
        return avg_pool_rule(x, R, self.kernel, self.stride, self.eps)


class FlattenStep(Step):
    def forward(self, x):
        return x.flatten(1)

    def relevance(self, x, R):
        return R.view_as(x)


def run_forward(steps: Sequence[Step], x: torch.Tensor) -> List[torch.Tensor]:
    """The input of every step, then the final output."""
    values = [x]
    for step in steps:
        values.append(step.forward(values[-1]))
    return values


def run_relevance(steps: Sequence[Step], values: Sequence[torch.Tensor], R: torch.Tensor) -> torch.Tensor:
    """Relevance at the output of `steps` back to their input, `values` from run_forward."""
    for step, x in zip(reversed(steps), reversed(values[:-1])):
        R = step.relevance(x, R)
    return R


class ResidualStep(Step):
    """ResNet3D's ResBlock: act2(branch(x) + shortcut(x)). "norm": the addition's Norm rule (conserving);
    "gradient": both terms get the whole relevance, as Zennit does with an addition that is not a module."""

    def __init__(self, branch: List[Step], shortcut: List[Step], after: List[Step], residual: str, eps: float):
        self.branch, self.shortcut, self.after, self.residual, self.eps = branch, shortcut, after, residual, eps

    def _values(self, x):
        """Every intermediate value of the block, kept from the forward pass for the relevance pass."""
        if getattr(self, "_input", None) is not x:
            branch, shortcut = run_forward(self.branch, x), run_forward(self.shortcut, x)
            self._input, self._kept = x, (branch, shortcut, run_forward(self.after, branch[-1] + shortcut[-1]))
        return self._kept

    def forward(self, x):
        return self._values(x)[2][-1]

    def relevance(self, x, R):
        branch, shortcut, after = self._values(x)
        R_sum = run_relevance(self.after, after, R)
        if self.residual == "norm":
            R_branch, R_shortcut = sum_rule([branch[-1], shortcut[-1]], R_sum, self.eps)
        else:
            R_branch, R_shortcut = R_sum, R_sum
        return run_relevance(self.branch, branch, R_branch) + run_relevance(self.shortcut, shortcut, R_shortcut)


ACTIVATIONS = (nn.ReLU, nn.ELU, nn.LeakyReLU)


def activation(module: nn.Module) -> Callable:
    """The activation as a function that never writes into its input (the forward values are kept)."""
    if isinstance(module, nn.ELU):
        return partial(F.elu, alpha=module.alpha)
    if isinstance(module, nn.LeakyReLU):
        return partial(F.leaky_relu, negative_slope=module.negative_slope)
    return F.relu


CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
MAX_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
AVG_POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
FIRST_LAYERS = ("zennit", "input")


class _Builder:
    """Turns a network into Steps with their rules, BatchNorm merged into the affine layer before it.
    The first-layer rule goes to (first_layer="zennit") the first affine layer in registration order, as Zennit
    counts, or ("input") every affine layer that reads the network's input, e.g. ResNet3D's first shortcut."""

    def __init__(self, composite: Composite, residual: str, first_layer: str, dtype: torch.dtype):
        self.composite, self.residual, self.first_layer, self.dtype = composite, residual, first_layer, dtype
        self.seen_first = False

    def chain(self, modules: Sequence[nn.Module], reads_input: bool) -> List[Step]:
        """Steps of modules applied one after the other; `reads_input`: the chain starts on the network input."""
        steps: List[Step] = []
        for module in modules:
            steps += self.module(module, steps, reads_input and not steps)
        return steps

    def module(self, module: nn.Module, previous: List[Step], reads_input: bool) -> List[Step]:
        if isinstance(module, (nn.Sequential, ClinicaCNN)):  # their forward chains their children
            return self.chain(list(module.children()), reads_input)
        if isinstance(module, ResBlock):
            branch = self.chain([module.conv1, module.bn1, module.act1, module.conv2, module.bn2], reads_input)
            shortcut = self.chain(list(module.shortcut.children()), reads_input)
            after = self.chain([module.act2], False)
            return [ResidualStep(branch, shortcut, after, self.residual, self.composite.stabiliser)]
        if isinstance(module, CONVOLUTIONS + (nn.Linear,)):
            layer = self._affine(module)
            return [AffineStep(layer, self.composite.rule(layer, self._is_first(layer, reads_input)))]
        if isinstance(module, BATCH_NORMS):
            return [self._merge(module, previous)]
        if isinstance(module, ACTIVATIONS):
            return [PassStep(activation(module))]
        if isinstance(module, nn.Dropout):
            return [PassStep(lambda x: x)]  # eval mode: the identity
        if isinstance(module, nn.Flatten) and module.start_dim == 1 and module.end_dim == -1:
            return [FlattenStep()]
        if isinstance(module, (PadMaxPool3d, PadMaxPool2d)):
            return [MaxPoolStep(2, 2, pad_odd_axes=True)]
        if isinstance(module, MAX_POOLS) and module.dilation in (1, (1,) * 3) and not module.ceil_mode:
            return [MaxPoolStep(module.kernel_size, module.stride, module.padding)]
        if isinstance(module, AVG_POOLS) and module.padding in (0, (0,) * 3) and not module.ceil_mode:
            return [AvgPoolStep(module.kernel_size, module.stride or module.kernel_size, self.composite.stabiliser)]
        raise NotImplementedError(f"no LRP rule for {module}")

    def _affine(self, module: nn.Module) -> Affine:
        weight = module.weight.detach().to(self.dtype)
        bias = None if module.bias is None else module.bias.detach().to(self.dtype)
        if isinstance(module, nn.Linear):
            return Affine(weight, bias)
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise NotImplementedError(f"{module}: numeric zero padding only")
        return Affine(weight, bias, module.stride, module.padding, module.dilation, module.groups)

    def _is_first(self, layer: Affine, reads_input: bool) -> bool:
        kind = "conv" if layer.is_conv else "dense"
        if self.composite.first is None or kind not in self.composite.first_kinds:
            return False
        if self.first_layer == "input":
            return reads_input
        first, self.seen_first = not self.seen_first, True
        return first

    def _merge(self, norm: nn.Module, previous: List[Step]) -> Step:
        """The BatchNorm folded into the affine step just before it; what stays is Zennit's residue."""
        if not previous or not isinstance(previous[-1], AffineStep) or previous[-1].merged:
            raise NotImplementedError(f"{norm}: a BatchNorm must follow a convolution or a dense layer")
        if not norm.track_running_stats or norm.running_mean is None:
            raise NotImplementedError(f"{norm}: eval-mode running statistics needed")
        channels = norm.running_mean.numel()

        def tensor(value, default):
            if value is None:
                return torch.full((channels,), default, dtype=self.dtype)
            return value.detach().to(self.dtype)

        layer = previous[-1].layer
        layer.weight, layer.bias = merge_batch_norm(
            layer.weight, layer.bias, tensor(norm.weight, 1.0), tensor(norm.bias, 0.0), tensor(norm.running_mean, 0.0),
            tensor(norm.running_var, 1.0), norm.eps)
        previous[-1].merged = True
        return PassStep(partial(torch.mul, other=batch_norm_residue(norm.eps)))


def build_steps(model: nn.Module, composite: Composite, residual: str = "norm", first_layer: str = "zennit",
                dtype: torch.dtype = torch.float32) -> List[Step]:
    """The network as Steps carrying their rules (the model itself is not modified)."""
    if residual not in ("norm", "gradient"):
        raise ValueError(f"residual must be 'norm' or 'gradient', got {residual!r}")
    if first_layer not in FIRST_LAYERS:
        raise ValueError(f"first_layer must be one of {FIRST_LAYERS}, got {first_layer!r}")
    return _Builder(composite, residual, first_layer, dtype).chain([model], reads_input=True)


# ------------------------------------------------------------------------------------------------------- LRP

def one_hot(output: torch.Tensor, target: Union[int, Sequence[int]]) -> torch.Tensor:
    """1 at the target node of each sample (one target for all, or one per sample), 0 elsewhere."""
    R = torch.zeros_like(output)
    targets = [target] * len(output) if isinstance(target, int) else list(target)
    R[torch.arange(len(output)), torch.as_tensor(targets)] = 1
    return R


def lrp(model: nn.Module, batch: torch.Tensor, target: Union[int, Sequence[int]], composite: Union[str, Composite],
        residual: str = "norm", first_layer: str = "zennit") -> torch.Tensor:
    """Relevance maps (B, C, D, H, W) of `batch` for the `target` output node, starting from a one-hot relevance
    there (what Zennit's Gradient returns for attr_output = that one-hot), computed in the batch's dtype.
    `composite`: a Composite or a name (epsilon_gamma_box needs its bounds: pass named_composite(...)).
    `residual`: "norm" (the addition's Norm rule) or "gradient" (Zennit on a block it has no canonizer for).
    `first_layer`: "zennit" (the first layer in registration order) or "input" (every layer reading the input)."""
    if isinstance(composite, str):
        composite = named_composite(composite)
    steps = build_steps(model, composite, residual, first_layer, batch.dtype)
    with torch.no_grad():
        values = run_forward(steps, batch)
        return run_relevance(steps, values, one_hot(values[-1], target))

