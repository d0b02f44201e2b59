"""ClinicaDL 2.0's `CNN`: `convolutions` (its ConvEncoder: MONAI Convolution blocks and pooling layers) then
`mlp` (its MLP: Linear + MONAI ADN blocks). Module names follow 2.0's so that its state_dict loads as is."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from .fields import CONV_NORMS, NORMS, POOLS, ConfigError, Fields, layer_spec, per_layer, spec_args, spec_name


class CNN(nn.Sequential):
    """`convolutions` then `mlp`, as 2.0's CNN (an nn.Sequential too)."""


def build_cnn(config: dict) -> CNN:
    fields = Fields(config)
    in_shape = fields.positive_ints("in_shape")
    if not 2 <= len(in_shape) <= 4:
        raise ConfigError(f"in_shape must be [channels, *1 to 3 spatial sizes], got {in_shape}")
    num_outputs = fields.positive_int("num_outputs")
    conv = Fields(fields.get("conv_args"), "conv_args", strict=False)
    mlp_config = fields.get("mlp_args", None)
    mlp = Fields({} if mlp_config is None else mlp_config, "mlp_args", strict=False)
    fields.done()

    in_channels, *size = in_shape
    convolutions, size = _conv_encoder(conv, in_channels, size)
    channels = conv.positive_ints("channels")
    flat = (channels[-1] if channels else in_channels) * _product(size)
    # mlp_args null is 2.0's MLPOptions(hidden_dims=[]): the output layer alone.
    hidden = [] if mlp_config is None else mlp.positive_ints("hidden_dims")
    return CNN(OrderedDict([("convolutions", convolutions), ("mlp", _mlp(mlp, flat, num_outputs, hidden))]))


def _conv_encoder(conv: Fields, in_channels: int, size: list[int]) -> tuple[nn.Sequential, list[int]]:
    """2.0's ConvEncoder: layer<i> = Convolution (conv + ADN, the last one conv only), pool<i> after the layers
    listed in pooling_indices (-1: `init_pool` before the first), `output_act` last. Returns it and the spatial
    size it outputs, computed as 2.0 does (that size fixes the first Linear's in_features)."""
    from monai.networks.blocks import Convolution
    from monai.networks.layers.utils import get_act_layer, get_pool_layer

    dims = len(size)
    channels = conv.positive_ints("channels")
    n = len(channels)
    kernel = per_layer(conv.get("kernel_size", 3), dims, n, "conv_args.kernel_size")
    stride = per_layer(conv.get("stride", 1), dims, n, "conv_args.stride")
    padding = per_layer(conv.get("padding", 0), dims, n, "conv_args.padding")
    dilation = per_layer(conv.get("dilation", 1), dims, n, "conv_args.dilation")
    indices, pools = _pooling(conv, n)
    act = conv.activation("act", "prelu")
    norm = conv.norm("norm", CONV_NORMS, "instance")
    if norm is not None and spec_name(norm) == "syncbatch":
        # SyncBatchNorm only differs from BatchNorm while training across processes; in eval it is
        # F.batch_norm with the same weights and buffers, and BatchNorm is scriptable where it is not.
        norm = ("batch", spec_args(norm))
    dropout = conv.dropout()
    bias = conv.boolean("bias", True)
    ordering = conv.adn_ordering()
    output_act = conv.activation("output_act", None)

    encoder = nn.Sequential()
    pools = iter(pools)
    if -1 in indices:
        pool = next(pools)
        encoder.add_module("init_pool", get_pool_layer(pool, spatial_dims=dims))
        size = _pooled(pool, size, "init_pool")
    previous = in_channels
    for i, (c, k, s, p, d) in enumerate(zip(channels, kernel, stride, padding, dilation)):
        encoder.add_module(f"layer{i}", Convolution(
            spatial_dims=dims, in_channels=previous, out_channels=c, strides=s, kernel_size=k, padding=p,
            dilation=d, act=act, norm=norm, dropout=dropout, bias=bias, adn_ordering=ordering,
            conv_only=i == n - 1))  # 2.0: no norm, activation or dropout after the last convolution
        size = _checked([(x + 2 * pp - dd * (kk - 1) - 1) // ss + 1 for x, kk, ss, pp, dd in zip(size, k, s, p, d)],
                        f"layer{i}")
        previous = c
        if i in indices:
            pool = next(pools)
            encoder.add_module(f"pool{i}", get_pool_layer(pool, spatial_dims=dims))
            size = _pooled(pool, size, f"pool{i}")
    if output_act is not None:
        encoder.add_module("output_act", get_act_layer(output_act))
    return encoder, size


def _pooling(conv: Fields, n_layers: int) -> tuple[list[int], list]:
    """pooling_indices (sorted, as 2.0 places the poolings) and one pooling spec per index, in network order."""
    indices = conv.get("pooling_indices", None) or []
    if not isinstance(indices, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
        raise ConfigError(f"conv_args.pooling_indices must be a list of layer indices, got {indices!r}")
    if len(set(indices)) != len(indices) or any(not -1 <= i <= n_layers - 1 for i in indices):
        raise ConfigError(f"conv_args.pooling_indices must be distinct indices in [-1, {n_layers - 1}], got {list(indices)}")
    pooling = conv.get("pooling", ["max", {"kernel_size": 2}])
    if pooling is None:
        return [], []
    key = "conv_args.pooling"
    if isinstance(pooling, (list, tuple)) and pooling and isinstance(pooling[0], str):
        specs = [layer_spec(pooling, key, POOLS)] * len(indices)  # one pooling for every index
    elif isinstance(pooling, (list, tuple)):
        specs = [layer_spec(p, key, POOLS) for p in pooling]
        if len(specs) != len(indices):
            raise ConfigError(f"{key} lists {len(specs)} poolings for {len(indices)} pooling_indices")
    else:
        raise ConfigError(f"{key} must be null, [mode, {{arguments}}] or a list of them, got {pooling!r}")
    for spec in specs:
        needed = "output_size" if spec_name(spec).startswith("adaptive") else "kernel_size"
        if needed not in spec_args(spec):
            raise ConfigError(f"{key}: {spec_name(spec)} pooling needs {needed}, got {spec_args(spec)}")
    return sorted(indices), specs


def _pooled(spec, size: list[int], where: str) -> list[int]:
    """Output size of a pooling layer, by 2.0's formulas (which fix the Linear size its weights have)."""
    mode, args = spec_name(spec), spec_args(spec)
    dims = len(size)

    def each(name, default):
        value = args.get(name, default)
        return list(value) if isinstance(value, tuple) else [value] * dims

    if mode.startswith("adaptive"):
        out = each("output_size", None)
    else:
        k, p = each("kernel_size", None), each("padding", 0)
        s = each("stride", None) if args.get("stride") is not None else k
        ceil = bool(args.get("ceil_mode", False))
        if mode == "max":
            d = each("dilation", 1)
            span = [x + 2 * pp - dd * (kk - 1) - 1 for x, kk, pp, dd in zip(size, k, p, d)]
            out = [(-(-a // ss) if ceil else a // ss) + 1 for a, ss in zip(span, s)]
        else:
            out = [(-(-(x + 2 * pp - kk) // ss) if ceil else (x + 2 * pp - kk) // ss) + 1
                   for x, kk, pp, ss in zip(size, k, p, s)]
            if ceil:  # the last window must start inside the (left-padded) input
                out = [o - 1 if (o - 1) * ss >= x + pp else o for o, ss, x, pp in zip(out, s, size, p)]
    if any(not isinstance(o, int) for o in out) or len(out) != dims:
        raise ConfigError(f"conv_args.pooling at {where}: sizes must be integers, one per dimension, got {args}")
    if any(o > x for o, x in zip(out, size)):
        raise ConfigError(f"conv_args.pooling at {where}: {spec} would enlarge the image {size} to {out}")
    return _checked(out, where)


def _checked(size: list[int], where: str) -> list[int]:
    if any(x <= 0 for x in size):
        raise ConfigError(f"the image shrinks to {size} at {where}: in_shape is too small for conv_args")
    return size


def _product(size: list[int]) -> int:
    total = 1
    for x in size:
        total *= x
    return total


def _mlp(mlp: Fields, num_inputs: int, num_outputs: int, hidden: list[int]) -> nn.Sequential:
    """2.0's MLP (a renamed MONAI FullyConnectedNet): flatten, hidden<i> = (linear, adn), output = (linear,
    output_act). The ADN of a hidden layer is there even when empty (no weights: nothing in the state_dict)."""
    from monai.networks.blocks import ADN
    from monai.networks.layers.utils import get_act_layer

    act = mlp.activation("act", "prelu")
    norm = mlp.norm("norm", NORMS, "batch")
    if norm is not None and spec_name(norm) == "syncbatch":
        norm = ("batch", spec_args(norm))  # same in eval, and scriptable (see _conv_encoder)
    dropout = mlp.dropout()
    bias = mlp.boolean("bias", True)
    ordering = mlp.adn_ordering()
    output_act = mlp.activation("output_act", None)

    layers = nn.Sequential(OrderedDict([("flatten", nn.Flatten())]))
    previous = num_inputs
    for i, width in enumerate(hidden):
        # 2.0 sizes LayerNorm itself only when norm is the bare name "layer"; with arguments, they must say it.
        layer_norm = ("layer", {"normalized_shape": width}) if norm == "layer" else norm
        adn = ADN(ordering=ordering, act=act, norm=layer_norm, dropout=dropout, dropout_dim=1, in_channels=width)
        layers.add_module(f"hidden{i}", nn.Sequential(OrderedDict([
            ("linear", nn.Linear(previous, width, bias)), ("adn", adn)])))
        previous = width
    output = nn.Sequential(OrderedDict([("linear", nn.Linear(previous, num_outputs, bias))]))
    if output_act is not None:
        output.add_module("output_act", get_act_layer(output_act))
    layers.add_module("output", output)
    return layers

