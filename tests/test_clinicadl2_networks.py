"""ClinicaDL 2.0's networks rebuilt from model.json (maps_interpret.models.clinicadl2) against 2.0's own
(tests/clinicadl2_oracle.py): 2.0's state_dict loads strictly, outputs and input gradients agree (also through
TorchScript), the fixture's trained weights load, bad configs give one-line errors, the Grad-CAM cut composes."""

from __future__ import annotations

import json

import pytest
import torch

from clinicadl2_oracle import import_clinicadl2, network
from helpers import fixture2_root
from maps_interpret.errors import MapsInterpretError
from maps_interpret.models.clinicadl2 import NETWORKS, build_network, cam_parts, output_count
from maps_interpret.models.export import CamModel, to_torchscript

RTOL = 1e-6


def cnn(in_shape, conv, mlp=None, num_outputs=2):
    return {"name_": "CNN", "in_shape": in_shape, "num_outputs": num_outputs, "conv_args": conv, "mlp_args": mlp}


def resnet(name="ResNet", **options):
    config = {"name_": name, "spatial_dims": 2, "in_channels": 1, "num_outputs": 2, "block_type": "basic",
              "n_res_blocks": [1, 1], "n_features": [4, 8], "init_conv_size": 3, "init_conv_stride": 1,
              "bottleneck_reduction": 4, "act": ["relu", {"inplace": True}], "output_act": None}
    if name == "SEResNet":
        config["se_reduction"] = 2
    return {**config, **options}


def densenet(**options):
    return {"name_": "DenseNet", "spatial_dims": 2, "in_channels": 1, "num_outputs": 2, "n_dense_layers": [2, 2],
            "init_features": 8, "growth_rate": 4, "bottleneck_factor": 2, "act": ["relu", {"inplace": True}],
            "output_act": None, "dropout": None, **options}


def vit(**options):
    return {"name_": "ViT", "in_shape": [1, 16, 16], "patch_size": 4, "num_outputs": 2, "embedding_dim": 16,
            "num_layers": 2, "num_heads": 2, "mlp_dim": 32, "pos_embed_type": "learnable", "output_act": None,
            "dropout": None, **options}


# (id, network config, input shape without the batch axis)
CASES = [
    ("cnn-3d-instance-prelu", cnn([1, 14, 16, 12], {"channels": [3, 4], "pooling_indices": [0, 1]},
                                  {"hidden_dims": [5]}), (1, 14, 16, 12)),
    ("cnn-2d-batch-leakyrelu-avgpool-ADN", cnn([2, 20, 18], {
        "channels": [4, 6, 5], "norm": ["batch", {"eps": 1e-3, "momentum": 0.3}],
        "act": ["leakyrelu", {"negative_slope": 0.2}], "pooling": [["avg", {"kernel_size": 2}],
                                                                    ["avg", {"kernel_size": 3, "stride": 2, "padding": 1}]],
        "pooling_indices": [1, -1], "dropout": 0.3, "adn_ordering": "ADN", "padding": 1},
        {"hidden_dims": [6, 4], "norm": ["group", {"num_groups": 2}], "act": ["elu", {"alpha": 0.5}],
         "dropout": 0.2, "bias": False}, num_outputs=3), (2, 20, 18)),
    ("cnn-3d-group-elu-adaptivemax-layernorm", cnn([1, 12, 10, 14], {
        "channels": [4, 4, 6], "norm": ["group", {"num_groups": 2}], "act": ["elu", {"alpha": 0.7}],
        "kernel_size": [[3, 3, 1], [1, 3, 3], 3], "stride": [1, [2, 1, 2], 1], "padding": [1, 0, [1, 1, 0]],
        "dilation": [[2, 1, 1], 1, 1], "pooling": ["adaptivemax", {"output_size": [3, 2, 3]}],
        "pooling_indices": [2], "adn_ordering": "NA", "bias": False},
        {"hidden_dims": [7], "norm": "layer", "act": "relu", "adn_ordering": "AN"}), (1, 12, 10, 14)),
    ("cnn-2d-syncbatch-inplace-relu-output-acts", cnn([1, 16, 16], {
        "channels": [3, 5], "norm": "syncbatch", "act": ["relu", {"inplace": True}], "adn_ordering": "DA",
        "pooling": [["max", {"kernel_size": 3, "stride": 2, "padding": 1, "dilation": 1}]], "pooling_indices": [0],
        "output_act": ["prelu", {"num_parameters": 5, "init": 0.1}]},
        {"hidden_dims": [8, 6], "norm": "syncbatch", "act": "selu", "output_act": "sigmoid"}), (1, 16, 16)),
    ("cnn-1d-instance-affine-running-stats-ceil", cnn([2, 31], {
        "channels": [4, 4], "norm": ["instance", {"affine": True, "track_running_stats": True}], "act": "gelu",
        "pooling": [["max", {"kernel_size": 2, "ceil_mode": True}],
                    ["avg", {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}]],
        "pooling_indices": [0, 1]}, {"hidden_dims": [4], "act": "mish", "norm": "batch"}), (2, 31)),
    ("cnn-2d-no-norm-no-act-no-mlp", cnn([1, 10, 9], {
        "channels": [2, 3], "norm": None, "act": None, "pooling": None, "stride": 2}, None, num_outputs=1),
     (1, 10, 9)),
    ("cnn-3d-celu-relu6-tanh", cnn([1, 9, 16, 9], {
        "channels": [2, 2, 2], "act": ["celu", {"alpha": 0.5}], "norm": "batch", "pooling_indices": [-1],
        "pooling": [["max", {"kernel_size": [1, 2, 1]}]]}, {"hidden_dims": [3], "act": "relu6", "norm": None,
                                                             "output_act": "tanh"}), (1, 9, 16, 9)),
    ("cnn-2d-adaptiveavg-zero-dropout", cnn([1, 11, 10], {
        "channels": [3, 3], "pooling": [["adaptiveavg", {"output_size": [4, 3]}]], "pooling_indices": [0],
        "dropout": 0.0}, {"hidden_dims": [4], "dropout": 0.0, "norm": "batch"}), (1, 11, 10)),
    ("resnet-3d-basic", resnet(spatial_dims=3, init_conv_size=[5, 5, 5], init_conv_stride=[2, 2, 2]),
     (1, 16, 18, 14)),
    ("resnet-2d-bottleneck-leakyrelu", resnet(block_type="bottleneck", bottleneck_reduction=2, n_res_blocks=[2, 1, 2],
                                              n_features=[8, 16, 8], act=["leakyrelu", {"negative_slope": 0.1}],
                                              output_act="sigmoid", num_outputs=3, in_channels=2), (2, 24, 20)),
    ("resnet-2d-prelu", resnet(act="prelu", init_conv_size=[7, 5], init_conv_stride=[2, 1]), (1, 20, 22)),
    ("resnet-1d-basic", resnet(spatial_dims=1, n_res_blocks=[1, 2, 1], n_features=[4, 4, 8]), (1, 40)),
    ("seresnet-2d-basic", resnet("SEResNet", n_res_blocks=[2, 1]), (1, 18, 18)),
    ("seresnet-3d-bottleneck", resnet("SEResNet", spatial_dims=3, block_type="bottleneck", bottleneck_reduction=2,
                                      n_features=[8, 16], se_reduction=4, act="elu"), (1, 12, 12, 12)),
    ("densenet-2d-dropout-elu", densenet(dropout=0.1, act="elu", output_act="tanh"), (1, 24, 20)),
    ("densenet-3d-prelu", densenet(spatial_dims=3, in_channels=2, n_dense_layers=[1, 2, 1], act="prelu",
                                   num_outputs=1), (2, 16, 16, 16)),
    ("vit-2d-learnable-dropout", vit(dropout=0.1, output_act="tanh"), (1, 16, 16)),
    ("vit-3d-sincos", vit(in_shape=[2, 8, 8, 8], patch_size=[4, 4, 2], embedding_dim=12, num_heads=3,
                          pos_embed_type="sincos", num_outputs=3), (2, 8, 8, 8)),
    ("vit-2d-sincos-no-output-act", vit(pos_embed_type="sincos", num_layers=1), (1, 16, 16)),
    ("vit-2d-no-position", vit(pos_embed_type=None, in_shape=[1, 12, 8]), (1, 12, 8)),
    ("vit-1d", vit(in_shape=[1, 16], patch_size=4), (1, 16)),
]
# 2.0 configs whose forward warns in torch (both networks do it): softmax with its implicit dim (a common
# output_act), InstanceNorm1d after a Linear layer (it sees a (batch, features) input as one unbatched sample).
SOFTMAX_WARNING = pytest.mark.filterwarnings("ignore:Implicit dimension choice for (log_)?softmax:UserWarning")
WARNING_CASES = [
    pytest.param(resnet(output_act="softmax"), (1, 12, 12), id="resnet-softmax", marks=SOFTMAX_WARNING),
    pytest.param(cnn([1, 10, 10], {"channels": [2, 2], "act": "logsoftmax"}, {"hidden_dims": [3]}), (1, 10, 10),
                 id="cnn-logsoftmax", marks=SOFTMAX_WARNING),
    pytest.param(cnn([1, 10, 10], {"channels": [2, 2]}, {"hidden_dims": [4], "norm": "instance"}), (1, 10, 10),
                 id="cnn-mlp-instance", marks=pytest.mark.filterwarnings(
                     "ignore:input's size at dim=0 does not match num_features:UserWarning")),
]
# Named variants: fixed 2D, 3-channel architectures; convolutional ones run on small images, ViTs need 224.
VARIANTS = [
    *[(name, {"name_": name, "num_outputs": 2, "output_act": None, "pretrained": False}, (3, 32, 32))
      for name in ("ResNet18", "ResNet34", "ResNet50", "DenseNet121")],
    ("SEResNet50", {"name_": "SEResNet50", "num_outputs": 2, "output_act": None}, (3, 32, 32)),
    ("ViTB32", {"name_": "ViTB32", "num_outputs": 2, "output_act": "tanh", "pretrained": False}, (3, 224, 224)),
]
# The biggest variants (up to 300M weights): structure only (meta device), the numbers are the same code's.
STRUCTURE_ONLY = ["ResNet101", "ResNet152", "SEResNet101", "SEResNet152", "DenseNet161", "DenseNet169",
                  "DenseNet201", "ViTB16", "ViTL16", "ViTL32"]


@pytest.fixture(scope="module", autouse=True)
def oracle():
    import_clinicadl2()


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Random weights of a sensible scale, random BatchNorm/InstanceNorm running statistics."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif tensor.dim() > 1:
                tensor.copy_(noise / max(tensor[0].numel(), 1) ** 0.5)
            else:
                tensor.copy_(0.2 * noise + (1.0 if name.endswith("norm.weight") else 0.0))


def outputs_and_gradients(model, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The outputs, and d output[:, k] / d input for every output node k."""
    x = x.clone().requires_grad_(True)
    out = model(x)
    grads = [torch.autograd.grad(out[:, k].sum(), x, retain_graph=True)[0] for k in range(out.shape[1])]
    return out.detach(), grads


def assert_close(ours: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    scale = ref.abs().max().item()
    diff = (ours - ref).abs().max().item()
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    assert diff <= RTOL * scale + 1e-12, f"{what}: max|diff| {diff:.3g} vs max|ref| {scale:.3g}"
    assert scale > 0 or what.startswith("gradient"), f"{what}: all zero, the comparison says nothing"


def check_against_oracle(config: dict, shape: tuple[int, ...], seed: int = 0) -> None:
    reference = network(config)
    randomise(reference, seed)
    reference.eval().requires_grad_(False)  # frozen as the engine runs it: weight-gradient kernels change the rounding
    ours = build_network(config, "model.json")
    assert list(ours.state_dict()) == list(reference.state_dict())
    ours.load_state_dict(reference.state_dict(), strict=True)
    ours.eval().requires_grad_(False)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(seed + 1))
    ref_out, ref_grads = outputs_and_gradients(reference, x)
    assert ref_out.shape == (2, output_count(config))
    candidates = [("eager", ours), ("torchscript", to_torchscript(ours))]
    for kind, model in candidates:
        out, grads = outputs_and_gradients(model, x)
        assert_close(out, ref_out, f"{kind} output")
        for k, (grad, ref_grad) in enumerate(zip(grads, ref_grads)):
            assert_close(grad, ref_grad, f"gradient of output {k} ({kind})")
    assert any(g.abs().max() > 0 for g in ref_grads), "no gradient reaches the input"


@pytest.mark.parametrize("config,shape", [pytest.param(*c[1:], id=c[0]) for c in CASES] + WARNING_CASES)
def test_matches_clinicadl2(config, shape):
    check_against_oracle(config, shape)


@pytest.mark.parametrize("config,shape", [c[1:] for c in VARIANTS], ids=[c[0] for c in VARIANTS])
def test_named_variant_matches_clinicadl2(config, shape):
    check_against_oracle(config, shape)


@pytest.mark.parametrize("name", STRUCTURE_ONLY)
def test_big_variant_has_clinicadl2_structure(name):
    config = {"name_": name, "num_outputs": 3, "output_act": None}
    if not name.startswith("SE"):
        config["pretrained"] = False
    with torch.device("meta"):
        reference = network(config)
        ours = build_network(config, "model.json")
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    assert list(ours.state_dict()) == list(reference.state_dict())


def test_every_image_network_of_clinicadl2_is_covered():
    from clinicadl.networks.config import ImplementedNetwork

    tested = {c[1]["name_"] for c in CASES + VARIANTS} | set(STRUCTURE_ONLY)
    assert set(NETWORKS) == tested
    others = {n.value for n in ImplementedNetwork} - set(NETWORKS)
    assert others == {"MLP", "ConvEncoder", "ConvDecoder", "Generator", "AutoEncoder", "VAE", "UNet", "AttentionUNet"}


@pytest.mark.parametrize("config", [c[1] for c in CASES + VARIANTS], ids=[c[0] for c in CASES + VARIANTS])
def test_builds_on_the_meta_device_in_float32(config):
    with torch.device("meta"):
        model = build_network(config, "model.json")
    assert all(t.is_meta and t.dtype == torch.float32 for t in model.state_dict().values() if t.is_floating_point())


@pytest.mark.parametrize("maps", ["maps_cnn_image_cls", "maps_resnet_image_reg"])
def test_fixture_weights_load_strictly(maps):
    root = fixture2_root()
    if root is None:
        pytest.skip("ClinicaDL 2.0.0 fixture not found (../shared/fixtures/clinicadl-2.0.0)")
    config = json.loads((root / maps / "model.json").read_text())["network"]
    weights = root / maps / "training" / "split-0" / "models" / "best_models" / "best-loss" / "model.pt"
    state = {k[len("network."):]: v for k, v in torch.load(weights, weights_only=True).items()
             if k.startswith("network.")}
    with torch.device("meta"):
        ours = build_network(config, str(root / maps / "model.json"))
    ours.load_state_dict(state, strict=True, assign=True)
    ours.eval()
    reference = network(config)
    reference.load_state_dict(state)
    reference.eval()
    x = torch.rand(1, 1, 40, 48, 40, generator=torch.Generator().manual_seed(3))  # the fixture's images
    assert output_count(config) == 1
    with torch.no_grad():
        assert_close(ours(x), reference(x), "output")


@pytest.mark.parametrize("config,shape", [c[1:] for c in CASES if not c[0].startswith("vit")][::2] +
                         [(densenet(), (1, 24, 20)), (resnet("SEResNet"), (1, 18, 18))])
def test_cam_parts_compose_to_the_network(config, shape):
    model = build_network(config, "model.json")
    randomise(model, 5)
    model.eval()
    x = torch.randn(2, *shape)
    levels = [None, 1, 2, 99] if config["name_"] == "CNN" else [None]
    with torch.no_grad():
        expected = model(x)
        for level in levels:
            trunk, head = cam_parts(model, level)
            features = trunk(x)
            assert features.dim() == x.dim(), "the trunk must end on a spatial feature map"
            assert_close(head(features.clone()), expected, f"head(trunk(x)) at level {level}")
            assert_close(to_torchscript(CamModel(trunk, head))(x), expected, f"scripted cut at level {level}")


def test_cam_parts_refuses_vit_and_a_level_outside_cnn():
    with pytest.raises(MapsInterpretError, match="ViT has none"):
        cam_parts(build_network(vit(), "model.json"), None)
    with pytest.raises(MapsInterpretError, match="leave --level_grad_cam unset"):
        cam_parts(build_network(resnet(), "model.json"), 2)


GOOD_CNN = cnn([1, 12, 12], {"channels": [2, 2]})
BAD = [
    ({"name_": "UNet"}, "is not an image classifier or regressor"),
    ({"name_": "MyNet"}, "cannot be rebuilt"),
    ({"channels": [2]}, "network.name_ is missing"),
    ({**GOOD_CNN, "conv_args": {"kernel_size": 3}}, "conv_args.channels' is missing"),
    ({**GOOD_CNN, "dropout": 0.1}, "unknown field(s) dropout"),
    ({**GOOD_CNN, "num_outputs": None}, "num_outputs must be a positive integer"),
    ({**GOOD_CNN, "conv_args": {"channels": [2], "act": "swish"}}, "'swish' is not one of"),
    ({**GOOD_CNN, "conv_args": {"channels": [2], "norm": "group"}}, "GroupNorm needs num_groups"),
    ({**GOOD_CNN, "conv_args": {"channels": [2], "norm": "layer"}}, "'layer' is not one of"),
    ({**GOOD_CNN, "conv_args": {"channels": [2, 2], "pooling_indices": [0, 2]}}, "pooling_indices must be"),
    ({**GOOD_CNN, "conv_args": {"channels": [2, 2], "pooling_indices": [0, 1],
                                "pooling": [["max", {"kernel_size": 2}]]}}, "lists 1 poolings for 2"),
    ({**GOOD_CNN, "conv_args": {"channels": [2, 2], "kernel_size": [3, 3, 3]}}, "lists 3 values but there are 2"),
    ({**GOOD_CNN, "conv_args": {"channels": [2] * 6}}, "in_shape is too small"),
    ({**GOOD_CNN, "conv_args": {"channels": [2], "adn_ordering": "NNA"}}, "adn_ordering must be"),
    ({**GOOD_CNN, "conv_args": {"channels": [2, 2], "act": ["prelu", {"bogus": 1}]}}, "cannot be built from its config"),
    (resnet(block_type="bottleneck", n_features=[4, 6]), "divisible by bottleneck_reduction=4"),
    (resnet(n_res_blocks=[1]), "must have the same, non-zero length"),
    (resnet("SEResNet", se_reduction=8), "must be >= se_reduction=8"),
    (resnet(init_conv_size=[3, 3, 3]), "init_conv_size must have 2 values"),
    (vit(patch_size=5), "must be divisible by patch_size"),
    (vit(num_heads=3), "divisible by num_heads=3"),
    (vit(pos_embed_type="sincos", embedding_dim=18, num_heads=3), "sincos position embedding"),
    (densenet(dropout=2), "dropout must be null or a number in [0, 1]"),
    ({"name_": "ResNet18", "num_outputs": 2, "output_act": None, "pretrained": False, "in_channels": 1},
     "unknown field(s) in_channels"),
]


@pytest.mark.parametrize("config,message", BAD, ids=[m for _, m in BAD])
def test_bad_configs_give_one_line_errors(config, message):
    with pytest.raises(MapsInterpretError) as error:
        build_network(config, "/maps/model.json")
    text = str(error.value)
    assert "\n" not in text and text.startswith("/maps/model.json: ") and message in text, text
    if "cannot be rebuilt" in text:
        assert "model.torchscript.pt next to model.pt" in text


def test_clinicadl2_also_refuses_the_bad_configs():
    """The configs refused above (bar unknown names) are configs 2.0 itself refuses: no valid model is refused."""
    for config, message in BAD[3:]:
        with pytest.raises(Exception):
            network(config)
            pytest.fail(f"ClinicaDL 2.0 builds the config refused with {message!r}")


def test_output_count():
    assert output_count(GOOD_CNN) == 2
    assert output_count({"name_": "ViTB16", "num_outputs": 5}) == 5
    with pytest.raises(MapsInterpretError, match="num_outputs is None"):
        output_count({"name_": "ResNet", "num_outputs": None}, "/maps/model.json")
