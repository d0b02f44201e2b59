"""ClinicaDL 2.0's `DenseNet` and its named variants: MONAI's DenseNet, kept as `features` and `fc` (MONAI's
class_layers) with every activation renamed from "relu..." to "act..." (2.0's `_rename_act`), so that the
state_dict keys are 2.0's."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from .fields import ConfigError, Fields

# name -> (n_dense_layers, growth_rate, init_features), 2D images with 3 channels, as 2.0's fixed variants.
VARIANTS = {
    "DenseNet121": ((6, 12, 24, 16), 32, 64),
    "DenseNet161": ((6, 12, 36, 24), 48, 96),
    "DenseNet169": ((6, 12, 32, 32), 32, 64),
    "DenseNet201": ((6, 12, 48, 32), 32, 64),
}
_RELU = ("relu", {"inplace": True})


class DenseNet(nn.Sequential):
    """`features` (ending with norm5) then `fc` (act, pool, flatten, out, output_act)."""


def build_densenet(config: dict) -> DenseNet:
    fields = Fields(config)
    dims = fields.positive_int("spatial_dims")
    if dims > 3:
        raise ConfigError(f"spatial_dims must be 1, 2 or 3, got {dims}")
    network = densenet(
        dims, in_channels=fields.positive_int("in_channels"), num_outputs=fields.positive_int("num_outputs"),
        n_dense_layers=fields.positive_ints("n_dense_layers", [6, 12, 24, 16]),
        init_features=fields.positive_int("init_features", 64), growth_rate=fields.positive_int("growth_rate", 32),
        bottleneck_factor=fields.positive_int("bottleneck_factor", 4),
        act=fields.activation("act", _RELU, optional=False), output_act=fields.activation("output_act", None),
        dropout=fields.dropout())
    fields.done()
    return network


def build_variant(config: dict) -> DenseNet:
    """DenseNet121..201: `pretrained` only chose the initial weights, replaced by model.pt's."""
    fields = Fields(config)
    blocks, growth, init = VARIANTS[fields.config.get("name_")]
    num_outputs = fields.positive_int("num_outputs")
    output_act = fields.activation("output_act", None)
    fields.get("pretrained", False)  # initial weights only: not the architecture
    fields.done()
    return densenet(2, in_channels=3, num_outputs=num_outputs, n_dense_layers=blocks, init_features=init,
                    growth_rate=growth, bottleneck_factor=4, act=_RELU, output_act=output_act, dropout=None)


def densenet(dims: int, in_channels: int, num_outputs: int, n_dense_layers, init_features: int, growth_rate: int,
             bottleneck_factor: int, act, output_act, dropout) -> DenseNet:
    from monai.networks.layers.utils import get_act_layer
    from monai.networks.nets import DenseNet as MonaiDenseNet

    if not n_dense_layers:
        raise ConfigError("n_dense_layers must list at least one dense block")
    base = MonaiDenseNet(spatial_dims=dims, in_channels=in_channels, out_channels=num_outputs,
                         init_features=init_features, growth_rate=growth_rate, block_config=tuple(n_dense_layers),
                         bn_size=bottleneck_factor, act=act, dropout_prob=dropout or 0.0)
    fc = base.class_layers
    if output_act is not None:
        fc.add_module("output_act", get_act_layer(output_act))
    network = DenseNet(OrderedDict([("features", base.features), ("fc", fc)]))
    _rename_relu(network)
    return network


def _rename_relu(module: nn.Module) -> None:
    """Every submodule named "...relu..." becomes "...act..." at any depth, in place and in order (forward runs
    the children of these Sequentials in registration order; MONAI's dense layers call `self.layers` by name,
    which is not renamed)."""
    for child in module.children():
        _rename_relu(child)
    if any("relu" in name for name in module._modules):
        module._modules = OrderedDict((name.replace("relu", "act"), child) for name, child in module._modules.items())
