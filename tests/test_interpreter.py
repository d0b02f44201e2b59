"""The in-memory API (`maps_interpret.Interpreter`): a MAPS model loaded once, then maps of tensors in memory for
every method of the table; the same maps as the command, bit for bit, because the command uses the same object;
one-line errors for what a notebook user gets wrong. And `--noise_tunnel`, the noise tunnel over any method."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import DEVICES, with_trained_batchnorm
from maps_interpret import Interpreter
from maps_interpret.cli import main
from maps_interpret.data.caps import load_tensor
from maps_interpret.engine import EngineError
from maps_interpret.methods import METHODS
from maps_interpret.models.conv import conv5_fc3
from maps_interpret.models.export import to_torchscript
from maps_interpret.synthetic import tensor_path
from reference import (reference_grad_cam, reference_gradients, reference_input_x_gradient,
                       reference_integrated_gradients, reference_lrp, reference_occlusion)

SHAPE = (1, 12, 14, 12)


def close(ours: torch.Tensor, reference: torch.Tensor, rtol: float = 1e-5) -> bool:
    scale = reference.abs().max().item()
    return ours.shape == reference.shape and (ours.cpu() - reference.cpu()).abs().max().item() <= rtol * scale


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(5)
    return with_trained_batchnorm(conv5_fc3(SHAPE, output_size=2, dropout=0.0))


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.rand((3, *SHAPE), generator=torch.Generator().manual_seed(6))


@pytest.mark.parametrize("device", DEVICES)
def test_every_method_of_the_table_on_tensors_in_memory(model, batch, device):
    interpreter = Interpreter(model, device)
    expected = {
        "gradients": reference_gradients(model, batch, 1),
        "input-x-gradient": reference_input_x_gradient(model, batch, 1),
        "integrated-gradients": reference_integrated_gradients(model, batch, 1, 8),
        "grad-cam": reference_grad_cam(model, batch, 1, None, "published"),
        "grad-cam++": reference_grad_cam(model, batch, 1, None, "plusplus"),
        "occlusion": reference_occlusion(model, batch, 1, 5, 4),
        "lrp": reference_lrp(model, batch, 1),
    }
    for name in METHODS:
        parameters = ({"n_steps": 8} if name == "integrated-gradients" else
                      {"occlusion_size": 5, "occlusion_stride": 4} if name == "occlusion" else {})
        maps = interpreter.attribute(batch.to(device), method=name, target=1, **parameters)
        assert maps.dtype == torch.float32 and maps.device.type == device
        if name == "occlusion":  # drops of the outputs: the outputs' float rounding, not the drops' scale
            assert torch.allclose(maps.cpu(), expected[name], atol=1e-6), name
        elif name in expected:
            assert close(maps, expected[name]), name
        else:  # smoothgrad: reproducible, and noise-free it is the gradient
            assert torch.equal(maps, interpreter.attribute(batch, method=name, target=1))
            assert close(interpreter.attribute(batch, method=name, target=1, noise_level=0.0, n_samples=2),
                         expected["gradients"])
    assert torch.equal(interpreter.attribute(batch, method="grad-cam", target=1, compat="clinicadl"),
                       interpreter.attribute(batch, method="grad-cam", target=1, compat="clinicadl"))
    assert close(interpreter.attribute(batch, method="grad-cam", target=1, compat="clinicadl"),
                 reference_grad_cam(model, batch, 1, None, "clinicadl"))


def test_the_callers_parameters_keep_requires_grad(batch):
    """Every export (fused, cam, lrp, staged) shares the caller's parameters: none may freeze them (a user who
    interprets a model between training steps trains it on afterwards)."""
    torch.manual_seed(0)
    model = conv5_fc3(tuple(batch.shape[1:]), 2, 0.0)
    interpreter = Interpreter(model)
    for name in METHODS:
        interpreter.attribute(batch, method=name, target=1, **({"occlusion_size": 6} if name == "occlusion" else {}))
    assert all(parameter.requires_grad for parameter in model.parameters())


def test_targets_per_sample_and_predicted(model, batch):
    interpreter = Interpreter(model)
    nodes = {t: interpreter.attribute(batch, target=t) for t in (0, 1)}
    per_sample = interpreter.attribute(batch, target=[1, 0, 1])
    for row, node in enumerate([1, 0, 1]):
        assert torch.equal(per_sample[row], nodes[node][row])
    with torch.no_grad():
        classes = model(batch).argmax(1).tolist()
    predicted = interpreter.attribute(batch, target="predicted")
    for row, node in enumerate(classes):
        assert torch.equal(predicted[row], nodes[node][row])


def test_noise_tunnel_wraps_any_method(model, batch):
    interpreter = Interpreter(model)
    plain = interpreter.attribute(batch, method="input-x-gradient", target=1)
    tunnelled = interpreter.attribute(batch, method="input-x-gradient", target=1, noise_tunnel=True, n_samples=3,
                                      seeds=[4, 5, 6])
    assert not close(tunnelled, plain, rtol=1e-2)  # the noise did something
    assert torch.equal(tunnelled, interpreter.attribute(batch, method="input-x-gradient", target=1,
                                                        noise_tunnel=True, n_samples=3, seeds=[4, 5, 6]))
    quiet = interpreter.attribute(batch, method="integrated-gradients", target=1, n_steps=4, noise_tunnel=True,
                                  noise_level=0.0, n_samples=1)
    assert torch.equal(quiet, interpreter.attribute(batch, method="integrated-gradients", target=1, n_steps=4))


def test_a_torchscript_model_and_the_engine_errors(model, batch):
    interpreter = Interpreter(to_torchscript(model))
    assert close(interpreter.attribute(batch, target=1), reference_gradients(model, batch, 1))
    with pytest.raises(EngineError, match="target node 2 is out of range: the model has 2 output nodes"):
        interpreter.attribute(batch, target=2)
    with pytest.raises(EngineError, match="target node 5 is out of range"):
        interpreter.attribute(batch, target=[0, 5, 1])
    with pytest.raises(EngineError, match="target node -1 is out of range"):
        interpreter.attribute(batch, target=[0, -1, 1])
    with pytest.raises(EngineError, match="got 2 targets for a batch of 3"):
        interpreter.attribute(batch, target=[0, 1])
    with pytest.raises(EngineError, match="a batch must hold floating-point values"):
        interpreter.attribute(batch.long())


def test_settings_errors_name_the_value(model, batch):
    interpreter = Interpreter(model)
    for options, message in ((dict(method="deconvolution"), "METHOD 'deconvolution' is not supported: choose one of gradients"),
                             (dict(n_steps=0, method="integrated-gradients"), "--n_steps must be at least 1"),
                             (dict(target="label"), "target must be an output node, a node per sample or 'predicted'"),
                             (dict(amp="float64"), "amp 'float64' is not one of")):
        with pytest.raises(ValueError, match=message):
            interpreter.attribute(batch, **options)
    with pytest.raises(ValueError, match="knows no preprocessing"):
        interpreter.preprocess(batch[0])


def test_a_failing_forward_pass_is_one_line(model):
    from maps_interpret.errors import first_line

    with pytest.raises(EngineError) as error:
        Interpreter(model).attribute(torch.rand(2, 1, 40, 40, 40))
    assert first_line(error.value).startswith("in the model's forward pass: RuntimeError: mat1 and mat2 shapes")


def test_the_command_and_the_api_give_the_same_maps(demo):
    """A batch preprocessed by `Interpreter.preprocess` gives, bit for bit, the individual maps the command wrote
    for the same sessions in a batch of the same size: the command runs the same object."""
    assert main(["maps", "test", "x", "integrated-gradients", "--n_steps", "4", "--target_node", "1",
                 "--participants_tsv", "data/test.tsv", "--caps_directory", "data/caps", "--no-gpu", "-np", "0",
                 "--batch_size", "3", "--save_individual", "--selection_metrics", "accuracy"]) == 0
    interpreter = Interpreter.from_maps("maps", split=1, selection_metric="accuracy")
    sessions = [("sub-TE01", "ses-M000"), ("sub-TE01", "ses-M012"), ("sub-TE02", "ses-M000")]
    images = [load_tensor(tensor_path(demo / "data" / "caps", p, s)) for p, s in sessions]
    batch = torch.stack([interpreter.preprocess(image) for image in images])
    maps = interpreter.attribute(batch, method="integrated-gradients", target=1, n_steps=4)
    folder = demo / "maps" / "split-1" / "best-accuracy" / "test" / "interpret-x"
    for row, (participant, session) in enumerate(sessions):
        assert torch.equal(maps[row], torch.load(folder / f"{participant}_{session}_image-0_map.pt"))


def test_from_maps_names_a_missing_model(demo):
    from maps_interpret.errors import MapsInterpretError

    with pytest.raises(MapsInterpretError, match="best-f1/model.pth.tar does not exist"):
        Interpreter.from_maps("maps", split=0, selection_metric="f1")


def test_noise_tunnel_from_the_command(demo, capsys):
    group = ["--participants_tsv", "data/test.tsv", "--caps_directory", "data/caps", "--no-gpu", "-np", "0"]
    assert main(["maps", "test", "t", "integrated-gradients", "--noise_tunnel", "--n_samples", "2", "--n_steps",
                 "3", "--seed", "7", *group]) == 0
    record = json.loads((demo / "maps/split-0/best-loss/test/interpret-t/interpret.json").read_text())
    assert record["method"] == {"name": "integrated-gradients", "target_node": 0, "abs": False, "noise_tunnel": True,
                                "n_steps": 3, "baseline": 0.0, "chunk_size": 0, "n_samples": 2, "noise_level": 0.1,
                                "seed": 7}
    plain = demo / "maps/split-0/best-loss/test/interpret-p"
    assert main(["maps", "test", "p", "integrated-gradients", "--n_steps", "3", "--no-gpu", "-np", "0"]) == 0
    assert not torch.equal(torch.load(plain / "mean_image-0_map.pt"),
                           torch.load(demo / "maps/split-0/best-loss/test/interpret-t/mean_image-0_map.pt"))
    assert main(["maps", "test", "s", "smoothgrad", "--noise_tunnel", "--no-gpu"]) == 2
    assert "smoothgrad already averages over noisy copies: remove --noise_tunnel" in capsys.readouterr().err
    assert not (demo / "maps/split-0/best-loss/test/interpret-s").exists()


def test_targets_as_numpy_or_tensors_and_keywords_that_are_no_parameters(model, batch):
    import numpy as np

    interpreter = Interpreter(model)
    node = interpreter.attribute(batch, target=1)
    assert torch.equal(interpreter.attribute(batch, target=np.int64(1)), node)
    assert torch.equal(interpreter.attribute(batch, target=torch.tensor(1)), node)
    assert torch.equal(interpreter.attribute(batch, target=torch.tensor([1, 1, 1])), node)
    assert torch.equal(interpreter.attribute(batch, target=np.array([1, 1, 1])), node)
    with pytest.raises(ValueError, match="unknown method parameter 'statistics'"):
        interpreter.attribute(batch, statistics=True)


def test_engines_kept_between_calls_are_few(model, batch):
    """Each engine holds a copy of the model on the device: a loop over settings keeps the last few only."""
    from maps_interpret.interpreter import ENGINES_KEPT

    interpreter = Interpreter(model)
    for seed in range(ENGINES_KEPT + 3):
        interpreter.attribute(batch[:1], method="smoothgrad", n_samples=1, seed=seed)
    assert len(interpreter._engines) == ENGINES_KEPT
    assert [dict(s.parameters)["seed"] for s in interpreter._engines] == list(range(3, ENGINES_KEPT + 3))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_cuda_policy_holds_during_a_call_only(model, batch):
    """The engine's policy (IEEE float32, cuDNN autotuning) must not change the caller's process after a call."""
    before = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
              torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
    Interpreter(model, "cuda").attribute(batch.cuda(), target=1)
    after = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
    assert after == before
    with pytest.raises(EngineError, match="target node 5 is out of range"):
        Interpreter(model, "cuda").attribute(batch.cuda(), target=[0, 5, 1])


def test_the_noise_tunnel_s_maps_do_not_depend_on_the_batch(demo):
    """Each sample's noise comes from its own seed (its names): the same maps, up to the rounding of another
    batch composition, whatever the batch size."""
    group = ["--participants_tsv", "data/test.tsv", "--caps_directory", "data/caps"]
    common = ["input-x-gradient", "--noise_tunnel", "--n_samples", "2", "--no-gpu", "-np", "0", "--save_individual"]
    assert main(["maps", "test", "b1", *common, "--batch_size", "1", *group]) == 0
    assert main(["maps", "test", "b3", *common, "--batch_size", "3"]) == 0
    folder = demo / "maps" / "split-0" / "best-loss" / "test"
    files = sorted(p.name for p in (folder / "interpret-b1").glob("sub-*.pt"))
    assert len(files) == 4  # the fixture's test group: 3 participants, one with 2 sessions
    for name in files:
        assert close(torch.load(folder / "interpret-b3" / name), torch.load(folder / "interpret-b1" / name)), name


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic_maps_are_the_same_run_after_run(model, batch, device):
    """--deterministic: copies summed sample by sample instead of by index_add_ (atomic additions on CUDA),
    torch's deterministic kernels on CUDA; two fresh interpreters give equal maps for every method, within float
    rounding of the default ones."""
    runs = [Interpreter(model, device) for _ in range(2)]
    for name in METHODS:
        parameters = {"n_steps": 5, "chunk_size": 4} if name == "integrated-gradients" else \
            {"n_samples": 3, "chunk_size": 2} if name == "smoothgrad" else \
            {"occlusion_size": 6, "chunk_size": 5} if name == "occlusion" else {}
        first, second = (r.attribute(batch.to(device), method=name, target=1, deterministic=True, **parameters)
                         for r in runs)
        assert torch.equal(first, second), name
        default = runs[0].attribute(batch.to(device), method=name, target=1, **parameters)
        assert close(first, default, rtol=1e-5), name


def test_the_deterministic_twin_of_a_global_average_pool():
    from maps_interpret.models.deterministic import GlobalMean, deterministic_twin
    from maps_interpret.models.secnn import SEBlock

    block = SEBlock(16).eval()
    twin = deterministic_twin(block)
    assert isinstance(twin.avg_pooling_3D, GlobalMean) and isinstance(block.avg_pooling_3D, torch.nn.AdaptiveAvgPool3d)
    x = torch.randn(2, 16, 5, 6, 7)
    with torch.no_grad():
        assert torch.allclose(twin(x), block(x), rtol=1e-6, atol=1e-7)
    plain = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3))
    assert deterministic_twin(plain) is plain
