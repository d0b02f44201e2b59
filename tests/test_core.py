"""The C++ core (`maps_interpret._core`) through its own interface: the method registry, typed parameters, the
noise tunnel over any method, the maps-only call, the subset keys, errors as exceptions and the released GIL.
Known answers come from the pure-PyTorch twins in reference.py."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from maps_interpret import _core  # after torch (imported above): torch registers the tensor types
from maps_interpret.models.conv import conv5_fc3
from maps_interpret.models.export import to_torchscript, to_torchscript_cam
from reference import (reference_grad_cam, reference_gradients, reference_input_x_gradient,
                                      reference_integrated_gradients, reference_smoothgrad)

from helpers import DEVICES, core_noises, with_trained_batchnorm

SHAPE = (1, 12, 14, 12)
STRIDE = _core.SUBSET_STRIDE
RTOL = 1e-5  # of each map's largest |value|: batch composition changes convolution rounding, not decisions
TUNNEL = {"n_samples": 3, "noise_level": 0.2, "seed": 7, "chunk_size": 2}
IG = {"n_steps": 5, "baseline": 0.1, "chunk_size": 4}


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(3)
    return with_trained_batchnorm(conv5_fc3(SHAPE, output_size=3, dropout=0.0))


@pytest.fixture(scope="module")
def scripted(model) -> torch.jit.ScriptModule:
    return to_torchscript(model)


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.rand((3, *SHAPE), generator=torch.Generator().manual_seed(4))


def options(method: str = "gradients", parameters: dict | None = None, **fields) -> _core.EngineOptions:
    out = _core.EngineOptions()
    out.method, out.parameters = method, dict(parameters or {})
    for name, value in fields.items():
        setattr(out, name, value)
    return out


def engine(scripted, method: str = "gradients", parameters: dict | None = None, **fields) -> _core.Engine:
    return _core.Engine(scripted._c, options(method, parameters, **fields))


def close(ours: torch.Tensor, reference: torch.Tensor, rtol: float = RTOL) -> bool:
    scale = reference.abs().max().item()
    return ours.shape == reference.shape and (ours.cpu() - reference.cpu()).abs().max().item() <= rtol * scale


# -- the interface ----------------------------------------------------------------------------------------------

def test_the_registry_lists_the_five_methods():
    assert _core.methods() == ["grad-cam", "gradients", "input-x-gradient", "integrated-gradients", "occlusion"]


def test_the_import_time_checks_are_unchanged():
    assert _core.format_check(12345) == "n=12345 x=0.5"
    assert _core.built_against().split("+")[0] == torch.__version__.split("+")[0]
    assert STRIDE == 1 << 20


def test_parameters_keep_their_python_types():
    """bool stays bool, int stays int (not a bool, not a float), float stays float: the typed accessors rely
    on it."""
    out = options(parameters={"flag": True, "count": 3, "level": 0.5, "name": "clinicadl", "zero": 0})
    assert out.parameters == {"flag": True, "count": 3, "level": 0.5, "name": "clinicadl", "zero": 0}
    assert [type(out.parameters[k]) for k in ("flag", "count", "level", "name", "zero")] == [bool, int, float, str, int]
    defaults = _core.EngineOptions()
    assert (defaults.device, defaults.method, defaults.parameters, defaults.noise_tunnel, defaults.target,
            defaults.target_mode, defaults.amp, defaults.group_by) == ("cpu", "gradients", {}, False, 0, "node",
                                                                      "none", "none")
    assert not (defaults.deterministic or defaults.count_zeros or defaults.abs or defaults.statistics)


def test_an_integer_is_accepted_where_a_number_is_asked(scripted, batch):
    parameters = {"n_steps": 2, "chunk_size": 0}
    as_int = engine(scripted, "integrated-gradients", {**parameters, "baseline": 1}).attribute(batch)
    as_float = engine(scripted, "integrated-gradients", {**parameters, "baseline": 1.0}).attribute(batch)
    assert torch.equal(as_int, as_float)
    zero = engine(scripted, "integrated-gradients", {**parameters, "baseline": 0.0}).attribute(batch)
    assert not close(as_int, zero, rtol=1e-3)


def test_engine_reports_its_device(scripted):
    assert engine(scripted).device == "cpu"


# -- errors -----------------------------------------------------------------------------------------------------

def _no_trunk(scripted, batch):
    return engine(scripted, "grad-cam", {"variant": "published"})


def _reserve_after_add(scripted, batch):
    core = engine(scripted)
    core.accumulate(batch, [0, 1, 2])
    core.reserve([5])


ERRORS = {
    "ids-count": (lambda s, b: engine(s).accumulate(b, [0]), "got 1 element ids for a batch of 3"),
    "target-node": (lambda s, b: engine(s, target=3).accumulate(b, [0, 0, 0]),
                    "target node 3 is out of range: the model has 3 output nodes (0..2)"),
    "target-node-attribute": (lambda s, b: engine(s, target=5).attribute(b), "target node 5 is out of range"),
    "target-node-tunnel": (lambda s, b: engine(s, "integrated-gradients", {**IG, **TUNNEL}, noise_tunnel=True,
                                               target=4).attribute(b), "target node 4 is out of range"),
    "targets-count": (lambda s, b: engine(s, target_mode="given").attribute(b, [0, 1]),
                      "got 2 targets for a batch of 3"),
    "unknown-method": (lambda s, b: engine(s, "deconvolution"),
                       "unknown attribution method 'deconvolution': use one of grad-cam, gradients, "
                       "input-x-gradient, integrated-gradients, occlusion"),
    "missing-parameter": (lambda s, b: engine(s, "integrated-gradients", {"baseline": 0.0, "chunk_size": 0}),
                          "integrated-gradients needs parameter 'n_steps' (an integer)"),
    "float-for-int": (lambda s, b: engine(s, "integrated-gradients", {**IG, "n_steps": 2.5}),
                      "integrated-gradients needs parameter 'n_steps' (an integer), got a number"),
    "bool-for-int": (lambda s, b: engine(s, "integrated-gradients", {**IG, "chunk_size": True}),
                     "integrated-gradients needs parameter 'chunk_size' (an integer), got a boolean"),
    "int-for-string": (lambda s, b: engine(s, "grad-cam", {"variant": 1}),
                       "grad-cam needs parameter 'variant' (a string), got an integer"),
    "tunnel-missing": (lambda s, b: engine(s, "gradients", {"n_samples": 2, "seed": 0, "chunk_size": 0},
                                           noise_tunnel=True),
                       "the noise tunnel needs parameter 'noise_level' (a number)"),
    "tunnel-string": (lambda s, b: engine(s, "input-x-gradient", {**TUNNEL, "seed": "7"}, noise_tunnel=True),
                      "the noise tunnel needs parameter 'seed' (an integer), got a string"),
    "grad-cam-variant": (lambda s, b: engine(s, "grad-cam", {"variant": "best"}), "unknown Grad-CAM variant 'best'"),
    "grad-cam-no-trunk": (_no_trunk, "grad-cam needs a model with `trunk` (input -> feature map) and `head`"),
    "from-file": (lambda s, b: _core.Engine.from_file("/nonexistent/model.pt", options()),
                  "/nonexistent/model.pt"),
    "reserve-after-add": (_reserve_after_add, "ElementSums.reserve: maps were already added"),
    "batch-dims": (lambda s, b: engine(s).attribute(torch.randn(8, 8)), "a batch must be (B, C, *spatial)"),
    "integer-batch": (lambda s, b: engine(s).accumulate(torch.zeros(1, *SHAPE, dtype=torch.int64), [0]),
                      "a batch must hold floating-point values"),
    "wrong-output": (lambda s, b: _core.Engine(torch.jit.script(torch.nn.Identity())._c, options()).attribute(b),
                     "the model must return one row of outputs per sample"),
    "device": (lambda s, b: engine(s, device="mps"), "unsupported device 'mps': use cpu, cuda or cuda:N"),
    "target-mode": (lambda s, b: engine(s, target_mode="best"), "unknown target mode 'best'"),
    "group-by": (lambda s, b: engine(s, group_by="site"), "unknown group_by 'site'"),
    "subsets-count": (lambda s, b: engine(s, group_by="given").accumulate(b, [0, 1, 2], False, [], [], [0]),
                      "got 1 subsets for a batch of 3"),
}


@pytest.mark.parametrize("case", ERRORS)
def test_errors_are_engine_errors_of_one_line(scripted, batch, case):
    call, message = ERRORS[case]
    with pytest.raises(_core.EngineError) as error:
        call(scripted, batch)
    text = str(error.value)
    assert isinstance(error.value, RuntimeError)
    assert message in text, text
    assert "\n" not in text and "Exception raised from" not in text, text


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible")
def test_a_cuda_device_without_a_gpu_is_refused(scripted):
    with pytest.raises(_core.EngineError, match="device 'cuda:1' was requested but no CUDA GPU is visible"):
        engine(scripted, device="cuda:1")


def test_a_failed_batch_adds_nothing(scripted, batch):
    """The subsets are checked before anything is added: the element sums stay as they were."""
    core = engine(scripted, group_by="given")
    core.accumulate(batch, [0, 1, 2], False, [], [], [0, 0, 1])
    with pytest.raises(_core.EngineError):
        core.accumulate(batch, [0, 1, 2], False, [], [], [0])
    assert core.counts() == [1, 1, 1] and core.last_subsets() == [0, 0, 1]


# -- maps -------------------------------------------------------------------------------------------------------

METHODS = {
    "gradients": ("gradients", {}, False),
    "input-x-gradient": ("input-x-gradient", {}, False),
    "integrated-gradients": ("integrated-gradients", IG, False),
    "tunnel-gradients": ("gradients", TUNNEL, True),
    "tunnel-integrated-gradients": ("integrated-gradients", {**IG, **TUNNEL}, True),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", METHODS)
def test_attribute_returns_the_accumulated_maps_and_keeps_no_sums(scripted, batch, case, device):
    method, parameters, tunnel = METHODS[case]
    fields = dict(noise_tunnel=tunnel, target_mode="given", abs=True, statistics=True, device=device)
    maps_only = engine(scripted, method, parameters, **fields)
    summing = engine(scripted, method, parameters, **fields)
    maps = maps_only.attribute(batch, [2, 0, 1], [5, 6, 7])
    assert maps.shape == batch.shape and maps.dtype == torch.float32 and maps.device.type == device
    assert torch.equal(maps, summing.accumulate(batch, [0, 1, 0], True, [2, 0, 1], [5, 6, 7]))
    assert (maps >= 0).all()  # abs
    assert maps_only.ids() == [] and maps_only.ids(True) == [] and maps_only.counts() == []
    with pytest.raises(_core.EngineError, match="no map has been accumulated yet"):
        maps_only.sums()
    assert summing.ids() == [0, 1] and summing.counts() == [2, 1]
    assert torch.equal(summing.sums()[0], maps[0] + maps[2])


@pytest.mark.parametrize("device", DEVICES)
def test_gradient_methods_equal_their_twins(model, scripted, batch, device):
    model = model.to(device)
    x = batch.to(device)
    assert close(engine(scripted, device=device, target=1).attribute(batch), reference_gradients(model, x, 1))
    assert close(engine(scripted, "input-x-gradient", device=device, target_mode="given").attribute(batch, [1, 0, 2]),
                 reference_input_x_gradient(model, x, [1, 0, 2]))
    assert close(engine(scripted, "integrated-gradients", IG, device=device, target=2).attribute(batch),
                 reference_integrated_gradients(model, x, 2, IG["n_steps"], baseline=IG["baseline"]))
    model.cpu()


@pytest.mark.parametrize("variant", ["published", "clinicadl"])
def test_grad_cam_equals_its_twin(model, batch, variant):
    core = _core.Engine(to_torchscript_cam(model, None)._c, options("grad-cam", {"variant": variant}, target=1))
    maps = core.attribute(batch)
    assert maps.shape == (3, 1, *SHAPE[1:])
    assert close(maps, reference_grad_cam(model, batch, 1, None, variant))


@pytest.mark.parametrize("device", DEVICES)
def test_the_tunnel_over_gradients_is_smoothgrad_with_the_same_noise(model, scripted, batch, device):
    seeds = [11, 12, 13]
    maps = engine(scripted, "gradients", TUNNEL, noise_tunnel=True, device=device).attribute(batch, [], seeds)
    noises = core_noises(TUNNEL["seed"], seeds, TUNNEL["n_samples"], SHAPE, device)
    expected = reference_smoothgrad(model.to(device), batch.to(device), 0, noises, TUNNEL["noise_level"])
    model.cpu()
    assert close(maps, expected)
    assert not close(maps, reference_gradients(model, batch, 0), rtol=1e-2)  # the noise did something


def test_the_tunnel_over_input_x_gradient_averages_it_at_the_noisy_inputs(model, scripted, batch):
    """Captum's NoiseTunnel: the mean over the noisy copies of (x + noise) * gradient at (x + noise), not the
    clean input times the mean gradient."""
    seeds = [3, 4, 5]
    maps = engine(scripted, "input-x-gradient", TUNNEL, noise_tunnel=True).attribute(batch, [], seeds)
    flat = batch.flatten(1)
    sigma = ((flat.amax(1) - flat.amin(1)) * TUNNEL["noise_level"]).view(-1, 1, 1, 1, 1)
    noisy = [batch + noise * sigma for noise in core_noises(TUNNEL["seed"], seeds, TUNNEL["n_samples"], SHAPE)]
    expected = torch.stack([reference_input_x_gradient(model, x, 0) for x in noisy]).mean(0)
    assert close(maps, expected)
    clean_times_smooth = batch * reference_smoothgrad(model, batch, 0, [(x - batch) / sigma for x in noisy],
                                                      TUNNEL["noise_level"])
    assert not close(maps, clean_times_smooth, rtol=1e-3)


def test_the_tunnel_without_noise_over_integrated_gradients_is_integrated_gradients(scripted, batch):
    ig = {"n_steps": 3, "baseline": 0.1, "chunk_size": 0}
    plain = engine(scripted, "integrated-gradients", ig).attribute(batch)
    # One copy, as many rows per call as the batch: the very same computation, bit for bit.
    tunnel = {**ig, "noise_level": 0.0, "seed": 7, "n_samples": 1}
    one = engine(scripted, "integrated-gradients", tunnel, noise_tunnel=True)
    assert torch.equal(one.attribute(batch, [], [1, 2, 3]), plain)
    several = engine(scripted, "integrated-gradients", {**tunnel, "n_samples": 2}, noise_tunnel=True)
    assert close(several.attribute(batch, [], [1, 2, 3]), plain)


def test_the_tunnel_seeds_samples_by_themselves(scripted, batch):
    """A sample's noise depends on (seed, its own seed) only: alone or in a batch, the same map when each row
    goes through the model on its own; without seeds, a sample is seeded by its index."""
    parameters = {**TUNNEL, "chunk_size": 1}
    together = engine(scripted, "gradients", parameters, noise_tunnel=True).attribute(batch, [], [21, 22, 23])
    alone = engine(scripted, "gradients", parameters, noise_tunnel=True).attribute(batch[1:2], [], [22])
    assert torch.equal(together[1], alone[0])
    by_index = engine(scripted, "gradients", parameters, noise_tunnel=True)
    assert torch.equal(by_index.attribute(batch), by_index.attribute(batch, [], [0, 1, 2]))
    assert not torch.equal(by_index.attribute(batch), together)
    with pytest.raises(_core.EngineError, match="the noise tunnel got 2 sample seeds for a batch of 3"):
        by_index.attribute(batch, [], [1, 2])


# -- sums -------------------------------------------------------------------------------------------------------

def test_subset_keys_are_one_above_the_subset_times_the_stride(scripted, batch):
    core = engine(scripted, group_by="given", statistics=True)
    first = core.accumulate(batch, [0, 4, 0], True, [], [], [0, 2, 0])
    second = core.accumulate(batch[:2], [4, 1], True, [], [], [2, 0])
    assert core.last_subsets() == [2, 0]
    assert core.ids(subsets=True) == [STRIDE + 0, STRIDE + 1, 3 * STRIDE + 4]
    assert core.counts(subsets=True) == [2, 1, 2]
    sums = core.sums(subsets=True)
    assert torch.equal(sums[0], first[0] + first[2])
    assert torch.equal(sums[1], second[1])
    assert torch.equal(sums[2], first[1] + second[0])
    assert core.ids() == [0, 1, 4] and core.counts() == [2, 1, 2]  # the element sums are kept apart
    assert core.welford_means(subsets=True).dtype == torch.float64 and core.m2(subsets=True).shape == sums.shape


def test_predicted_and_correct_subsets(model, scripted, batch):
    with torch.no_grad():
        predicted = model(batch).argmax(1).tolist()
    by_class = engine(scripted, group_by="predicted")
    by_class.accumulate(batch, [0, 1, 2])
    assert by_class.last_subsets() == predicted
    assert by_class.ids(subsets=True) == sorted((p + 1) * STRIDE + e for e, p in enumerate(predicted))
    labels = [predicted[0], (predicted[1] + 1) % 3, predicted[2]]
    correct = engine(scripted, group_by="correct")
    correct.accumulate(batch, [0, 1, 2], False, [], [], [], labels)
    assert correct.last_subsets() == [1, 0, 1]
    assert correct.ids(subsets=True) == [STRIDE + 1, 2 * STRIDE + 0, 2 * STRIDE + 2]


# -- threads ----------------------------------------------------------------------------------------------------

def test_calls_release_the_gil(scripted, batch):
    """While one thread is inside accumulate (C++), this thread keeps running Python: beats land in the middle
    of the call, which is impossible if the call held the GIL."""
    core = engine(scripted, "integrated-gradients", {"n_steps": 24, "baseline": 0.0, "chunk_size": 6})
    span = {}

    def work():
        span["start"] = time.perf_counter()
        core.accumulate(batch, [0, 1, 2])
        span["end"] = time.perf_counter()

    beats = []
    worker = threading.Thread(target=work)
    worker.start()
    while worker.is_alive():
        beats.append(time.perf_counter())
        time.sleep(0.0005)
    worker.join()
    start, end = span["start"], span["end"]
    middle = [t for t in beats if start + 0.25 * (end - start) < t < start + 0.75 * (end - start)]
    assert len(middle) >= 2, (end - start, len(beats))


def test_threads_on_two_engines_and_on_one_engine_give_the_serial_results(scripted, batch):
    serial = engine(scripted)
    for i in range(4):
        serial.accumulate(batch + i, [0, 1, 2])
    engines = [engine(scripted), engine(scripted)]
    shared = engine(scripted)

    def work(k):
        for i in range(k, 4, 2):
            engines[k].accumulate(batch + i, [0, 1, 2])
            shared.accumulate(batch + i, [0, 1, 2])

    threads = [threading.Thread(target=work, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert engines[0].counts() == engines[1].counts() == [2, 2, 2] and shared.counts() == serial.counts() == [4, 4, 4]
    assert close(engines[0].sums() + engines[1].sums(), serial.sums())
    assert close(shared.sums(), serial.sums())  # the order of the sum may differ
