"""The CNN architectures of ClinicaDL 1.6.1 beyond Conv5_FC3/Conv4_FC3, against ground truth recorded
from ClinicaDL's own classes (tests/data/clinicadl_architectures.json; ClinicaDL is not needed here).

For every recorded configuration: the same ordered state_dict keys and shapes, the same number of
modules in `convolutions` (what Grad-CAM's level counts), the same outputs for the same deterministic
weights and input (eager and TorchScript), construction on the meta device without any forward pass.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from maps_interpret.models import random_arch, resnet, resnet3d, secnn, stride
from maps_interpret.models.export import to_torchscript

DATA = Path(__file__).resolve().parent / "data" / "clinicadl_architectures.json"
CONFIGS = json.loads(DATA.read_text())["configurations"]
BUILDERS = {**stride.BUILDERS, **resnet.BUILDERS, **resnet3d.BUILDERS, **secnn.BUILDERS, **random_arch.BUILDERS}
IDS = [c["name"] for c in CONFIGS]
WITH_ORACLE = [c for c in CONFIGS if c["oracle"] is not None]


def deterministic_state(state: dict, seed: int) -> dict:
    """The weights the oracle was recorded with (the same function generated the JSON): after
    torch.manual_seed(seed), key by key in state_dict order: running_var U[0.5, 1.5); tensors of
    2+ dims N(0, 2 / fan_in); other `weight`s 1 + 0.1 N(0, 1); the rest (biases, running_mean)
    0.1 N(0, 1); integer buffers (num_batches_tracked) kept."""
    torch.manual_seed(seed)
    out = {}
    for key, value in state.items():
        if not value.is_floating_point():
            out[key] = value.clone()
            continue
        name = key.rsplit(".", 1)[-1]
        shape = tuple(value.shape)
        if name == "running_var":
            t = torch.rand(shape) + 0.5
        elif len(shape) >= 2:
            fan_in = 1
            for s in shape[1:]:
                fan_in *= s
            t = torch.randn(shape) * (2.0 / fan_in) ** 0.5
        elif name == "weight":
            t = 1.0 + 0.1 * torch.randn(shape)
        else:
            t = 0.1 * torch.randn(shape)
        out[key] = t.to(value.dtype)
    return out


def build(config: dict) -> nn.Module:
    return BUILDERS[config["architecture"]](config["params"])


def assert_close_to_oracle(output: torch.Tensor, oracle: dict) -> None:
    expected = torch.tensor(oracle["output"], dtype=torch.float64).view(oracle["output_shape"])
    assert tuple(output.shape) == tuple(expected.shape)
    scale = expected.abs().max().item()
    error = (output.double() - expected).abs().max().item()
    assert error <= 1e-5 * scale, f"max error {error} for outputs up to {scale}"


def test_every_architecture_is_covered():
    assert set(BUILDERS) == {c["architecture"] for c in CONFIGS}
    assert set(BUILDERS) == {"Stride_Conv5_FC3", "resnet18", "ResNet3D", "SqueezeExcitationCNN",
                             "RandomArchitecture"}


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_state_dict_keys_shapes_and_convolutions_length(config):
    model = build(config)
    assert [[k, list(v.shape)] for k, v in model.state_dict().items()] == config["state_dict"]
    assert isinstance(model.convolutions, nn.Sequential) and isinstance(model.fc, nn.Sequential)
    assert len(model.convolutions) == config["n_convolutions"]


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_builds_on_meta_device_without_forward_pass(config):
    calls = []
    handle = nn.modules.module.register_module_forward_pre_hook(lambda module, args: calls.append(module))
    try:
        with torch.device("meta"):
            model = build(config)
    finally:
        handle.remove()
    assert calls == []  # ClinicaDL sizes layers with a dummy forward pass; we use arithmetic
    state = model.state_dict()
    assert all(v.is_meta for v in state.values())
    assert [[k, list(v.shape)] for k, v in state.items()] == config["state_dict"]


@pytest.mark.parametrize("config", WITH_ORACLE, ids=[c["name"] for c in WITH_ORACLE])
def test_forward_matches_clinicadl(config):
    oracle = config["oracle"]
    model = build(config).eval()
    state = deterministic_state(model.state_dict(), oracle["weight_seed"])
    total = sum(float(v.double().sum()) for v in state.values() if v.is_floating_point())
    assert total == pytest.approx(oracle["weights_checksum"], rel=1e-9, abs=1e-9)  # same RNG stream
    model.load_state_dict(state, strict=True)

    torch.manual_seed(1)
    x = torch.randn(oracle["batch"], *oracle["input_size"])
    assert float(x.double().sum()) == pytest.approx(oracle["input_checksum"][0], rel=1e-9, abs=1e-9)
    assert x.flatten()[:4].tolist() == oracle["input_checksum"][1]

    with torch.no_grad():
        assert_close_to_oracle(model(x), oracle)
        assert_close_to_oracle(to_torchscript(model)(x), oracle)


def test_fixed_shape_networks_ignore_maps_json():
    """ClinicaDL's ResNet3D and SqueezeExcitationCNN never pass input_size/output_size/dropout on."""
    for name in ("ResNet3D", "SqueezeExcitationCNN"):
        a = BUILDERS[name]({"input_size": [1, 169, 208, 179], "output_size": 2, "dropout": 0.5})
        b = BUILDERS[name]({"input_size": [3, 20, 20, 20], "output_size": 5, "dropout": 0.0})
        assert [(k, v.shape) for k, v in a.state_dict().items()] == [(k, v.shape) for k, v in b.state_dict().items()]
        assert a.fc[-1].out_features == 2


def test_resnet18_refuses_other_than_three_channels():
    with pytest.raises(ValueError, match="3-channel"):
        resnet.resnet18({"input_size": [1, 64, 64], "output_size": 2, "dropout": 0.5})
    with pytest.raises(ValueError):
        resnet.resnet18({"input_size": [3, 64, 64, 64], "output_size": 2, "dropout": 0.5})


def test_random_architecture_rejects_unknown_options():
    base = {"input_size": [1, 32, 32], "output_size": 2, "dropout": 0.5, "n_fcblocks": 1,
            "network_normalization": "BatchNorm",
            "convolutions_dict": {"conv0": {"in_channels": None, "out_channels": 4, "n_conv": 1,
                                            "d_reduction": "MaxPooling"}}}
    random_arch.random_architecture(base)
    with pytest.raises(ValueError, match="network_normalization"):
        random_arch.random_architecture({**base, "network_normalization": "GroupNorm"})
    bad_block = {"conv0": {**base["convolutions_dict"]["conv0"], "d_reduction": "AvgPooling"}}
    with pytest.raises(ValueError, match="d_reduction"):
        random_arch.random_architecture({**base, "convolutions_dict": bad_block})
    with pytest.raises(KeyError):
        random_arch.random_architecture({k: v for k, v in base.items() if k != "n_fcblocks"})


@pytest.mark.parametrize("config", [c for c in CONFIGS if "ignores_params" not in c["name"]], ids=lambda c: c["name"])
def test_output_count_equals_a_forward_pass(config, monkeypatch):
    """models.output_count reads the outputs off the last Linear layer instead of a forward pass (which costs
    ~1 s of imports on the meta device): that layer is the output layer of every architecture rebuilt here.
    (ResNet3D/SE-CNN ignore maps.json, so their `ignores_params` inputs do not fit them; left out.)"""
    from types import SimpleNamespace

    import maps_interpret.models as models
    from maps_interpret.models.conv import conv5_fc3

    for model, input_size in [(build(config), config["params"]["input_size"]),
                              (conv5_fc3((1, 40, 48, 40), output_size=3, dropout=0.5), (1, 40, 48, 40))]:
        with torch.device("meta"):
            outputs = model.to("meta").eval()(torch.empty(1, *input_size)).shape[1]
        monkeypatch.setattr(models, "build_model", lambda maps, model=model: model)
        maps = SimpleNamespace(architecture="Conv5_FC3", input_size=list(input_size), generation=1)
        assert models.output_count(maps) == outputs


def test_output_count_of_a_network_without_linear_layer(monkeypatch):
    """Without a Linear layer, output_count falls back to a forward pass on the meta device."""
    from types import SimpleNamespace

    import maps_interpret.models as models

    def head_by_pooling(maps):
        return nn.Sequential(nn.Conv3d(1, 4, 3), nn.AdaptiveAvgPool3d(1), nn.Flatten())

    monkeypatch.setattr(models, "build_model", head_by_pooling)
    maps = SimpleNamespace(architecture="Conv5_FC3", input_size=[1, 9, 10, 11], generation=1)
    assert models.output_count(maps) == 4


@pytest.mark.parametrize("config", [c for c in CONFIGS if "ignores_params" not in c["name"]], ids=lambda c: c["name"])
def test_occlusion_grad_cam_plusplus_and_lrp_on_every_architecture(config):
    """The methods of forward passes only (occlusion), of a feature map (Grad-CAM++) and of layer rules (LRP) on
    each architecture, against their twins (tests/reference.py); LRP refuses, naming the layer, the networks no
    rule covers (squeeze-excitation gates, InstanceNorm, torchvision's residual blocks)."""
    from maps_interpret.interpreter import Interpreter
    from reference import reference_grad_cam, reference_lrp, reference_occlusion

    model = build(config)
    shape = tuple(config["params"]["input_size"])
    if config["architecture"] in ("ResNet3D", "SqueezeExcitationCNN"):  # fixed 169x208x179 networks: made smaller
        first = next(i for i, layer in enumerate(model.fc) if isinstance(layer, nn.Linear))
        model.fc[first] = nn.Linear(128, model.fc[first].out_features)  # 63^3: 1 voxel after the five poolings
        shape = (1, 63, 63, 63)
    model.load_state_dict(deterministic_state(model.state_dict(), 0))
    model.eval()
    batch = torch.rand((2, *shape), generator=torch.Generator().manual_seed(1))
    size = max(1, min(shape[1:]) // 2)
    occlusion = Interpreter(model).attribute(batch, "occlusion", 0, occlusion_size=size)
    expected = reference_occlusion(model, batch, 0, size, size)
    with torch.no_grad():  # drops are differences of outputs: rounded as the outputs are
        scale = max(float(model(batch).abs().max()), float(expected.abs().max()))
    assert torch.allclose(occlusion, expected, atol=1e-5 * scale)
    cam = Interpreter(model).attribute(batch, "grad-cam++", 0)
    expected = reference_grad_cam(model, batch, 0, None, "plusplus")
    assert float((cam - expected).abs().max()) <= 1e-5 * max(float(expected.abs().max()), 1e-12)
    refused = {"resnet18": "BasicBlock", "SqueezeExcitationCNN": "ResBlockSE", "instancenorm": "InstanceNorm"}
    reason = next((layer for key, layer in refused.items() if key in config["architecture"] or key in config["name"]),
                  None)
    if reason is None:
        relevance = Interpreter(model).attribute(batch, "lrp", 0)
        expected = reference_lrp(model, batch, 0)
        assert torch.allclose(relevance, expected, atol=1e-5 * float(expected.abs().max()))
    else:
        with pytest.raises(ValueError, match=f"lrp: .* is a {reason}.*: no LRP rule covers this layer"):
            Interpreter(model).attribute(batch, "lrp", 0)
