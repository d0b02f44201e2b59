"""The rebuilt ClinicaDL networks: identical state_dict keys and shapes, ClinicaDL's padding rule,
arithmetic sizing of the first Linear layer, TorchScript export, safe checkpoint loading."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from helpers import fixture_root
from maps_interpret.errors import MapsInterpretError
from maps_interpret.maps import open_maps
from maps_interpret.models import build_model, check_weights, load_model, read_state_dict
from maps_interpret.models.conv import PadMaxPool2d, PadMaxPool3d, conv4_fc3, conv5_fc3, flattened_size
from maps_interpret.models.export import to_torchscript


def conv_keys() -> list[str]:
    """ClinicaDL's flat `convolutions` Sequential: conv at 0, 4, 8, 12, 16 and BatchNorm one after."""
    keys = []
    for block in range(5):
        keys += [f"convolutions.{4 * block}.weight", f"convolutions.{4 * block}.bias"]
        keys += [f"convolutions.{4 * block + 1}.{p}" for p in
                 ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
    return keys


FC_KEYS = ["fc.2.weight", "fc.2.bias", "fc.4.weight", "fc.4.bias", "fc.6.weight", "fc.6.bias"]


@pytest.mark.parametrize("builder,hidden", [(conv5_fc3, (1300, 50)), (conv4_fc3, (50, 40))])
@pytest.mark.parametrize("input_size", [(1, 32, 28, 40), (1, 169, 208, 179), (3, 64, 50)])
def test_keys_and_shapes_match_clinicadl(builder, hidden, input_size):
    with torch.device("meta"):
        model = builder(input_size, output_size=2)
    state = model.state_dict()
    assert list(state) == conv_keys() + FC_KEYS
    assert state["convolutions.0.weight"].shape == (8, input_size[0], *[3] * (len(input_size) - 1))
    assert state["fc.2.weight"].shape == (hidden[0], flattened_size(input_size))
    assert state["fc.4.weight"].shape == (hidden[1], hidden[0])
    assert state["fc.6.weight"].shape == (2, hidden[1])


def test_flattened_size_is_clinicadl_arithmetic():
    assert flattened_size((1, 32, 28, 40)) == 256  # 128 * 1*1*2 (facts §4)
    assert flattened_size((1, 169, 208, 179)) == 32256  # 128 * 6*7*6
    for size in [(1, 17, 12, 9), (2, 33, 20), (1, 5, 6, 7)]:  # against a real forward pass
        model = conv5_fc3(size).eval()
        with torch.no_grad():
            assert model.convolutions(torch.zeros(1, *size)).numel() == flattened_size(size)


def test_padmaxpool_pads_the_beginning_of_odd_axes():
    x = torch.arange(1.0, 6.0).view(1, 1, 5, 1, 1).expand(1, 1, 5, 2, 2).contiguous()
    # ClinicaDL pads one zero before the first voxel: windows (0,1) (2,3) (4,5) -> 1, 3, 5.
    assert PadMaxPool3d()(x)[0, 0, :, 0, 0].tolist() == [1.0, 3.0, 5.0]
    y = torch.arange(1.0, 8.0).view(1, 1, 7, 1).expand(1, 1, 7, 3).contiguous()
    out = PadMaxPool2d()(y)
    assert out.shape == (1, 1, 4, 2) and out[0, 0, :, 0].tolist() == [1.0, 3.0, 5.0, 7.0]


def test_torchscript_export_is_the_same_function():
    torch.manual_seed(0)
    model = conv5_fc3((1, 17, 12, 9), dropout=0.5)
    scripted = to_torchscript(model)
    assert model.training and all(p.requires_grad for p in model.parameters())  # the caller's model as it was
    assert not scripted.training
    x = torch.randn(2, 1, 17, 12, 9)
    with torch.no_grad():
        assert torch.equal(scripted(x), model.eval()(x))  # dropout off, running statistics used


def test_fixture_checkpoints_load_strictly(clinicadl_fixture):
    maps = open_maps(clinicadl_fixture / "maps_image_cls_clean")
    for metric in ("loss", "accuracy"):
        path = maps.model_path(0, metric)
        check_weights(maps, path)
        model = load_model(maps, path)
        assert list(model.state_dict()) == list(read_state_dict(path))


def test_checkpoint_errors(demo):
    maps = open_maps(demo / "maps")
    good = maps.model_path(0, "loss")
    bad = demo / "bad.pth.tar"

    bad.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(MapsInterpretError, match="truncated, corrupt"):
        read_state_dict(bad)

    class Payload:  # a pickle that would run code when loaded without weights_only
        def __reduce__(self):
            return (print, ("owned",))

    bad.write_bytes(pickle.dumps({"model": Payload()}))
    with pytest.raises(MapsInterpretError, match="refused for safety"):
        read_state_dict(bad)

    torch.save({"weights": {}}, bad)
    with pytest.raises(MapsInterpretError, match="no 'model' state_dict"):
        read_state_dict(bad)

    state = read_state_dict(good)
    state.pop("fc.6.bias")
    state["fc.2.weight"] = torch.zeros(3, 3)
    torch.save({"model": state}, bad)
    with pytest.raises(MapsInterpretError, match=r"does not fit the architecture in maps.json \(missing fc.6.bias; "
                                                 r"wrong shape fc.2.weight\)"):
        check_weights(maps, bad)

    with pytest.raises(MapsInterpretError, match="does not exist"):
        read_state_dict(demo / "missing.pth.tar")


def test_unsupported_networks_are_refused(demo):
    maps = open_maps(demo / "maps")
    for key, value, message in [("architecture", "UNet", "architecture 'UNet' cannot be rebuilt .* save the trained model as TorchScript"),
                                ("multi_network", True, "multi_network MAPS are not supported")]:
        params = dict(maps.params, **{key: value})
        with pytest.raises(MapsInterpretError, match=message):
            build_model(type(maps)(path=maps.path, params=params, split_name="split"))


def test_regression_output_defaults_to_one_node(demo):
    maps = open_maps(demo / "maps")
    params = dict(maps.params, network_task="regression", output_size=None)
    model = build_model(type(maps)(path=maps.path, params=params, split_name="split"))
    assert isinstance(model.fc[-1], nn.Linear) and model.fc[-1].out_features == 1


@pytest.mark.skipif(fixture_root() is None, reason="ClinicaDL fixture not found")
def test_dropout_value_comes_from_maps_json(clinicadl_fixture):
    model = build_model(open_maps(clinicadl_fixture / "maps_image_cls_clean"))
    assert model.fc[1].p == 0.0
