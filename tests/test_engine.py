"""The C++ engine against its pure-PyTorch twin (reference.py), on random models and inputs."""

from __future__ import annotations

import threading

import pytest
import torch

from maps_interpret.engine import EngineError
from maps_interpret.models.conv import conv4_fc3, conv5_fc3
from maps_interpret.models.export import load_torchscript, to_torchscript
from reference import ReferenceEngine, reference_gradients

from helpers import DEVICES, engine_counts, engine_sums, make_engine, with_trained_batchnorm

# Same kernels on both sides, so CPU results agree to float rounding of the reduction order at most.
RTOL = 1e-6


def random_model(builder, input_size, outputs=3, seed=0):
    torch.manual_seed(seed)
    return with_trained_batchnorm(builder(input_size, output_size=outputs, dropout=0.5))


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = RTOL) -> bool:
    return (a.cpu() - b.cpu()).abs().max().item() <= rtol * max(b.abs().max().item(), 1e-30)


CASES = [
    pytest.param(conv5_fc3, (1, 17, 12, 9), id="conv5-3d-odd"),
    pytest.param(conv4_fc3, (2, 16, 14, 20), id="conv4-3d-2ch"),
    pytest.param(conv5_fc3, (3, 33, 20), id="conv5-2d-rgb"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("builder,input_size", CASES)
def test_maps_and_sums_equal_the_reference(builder, input_size, device):
    model = random_model(builder, input_size)
    engine = make_engine(to_torchscript(random_model(builder, input_size)), device=device, target=2)
    twin = ReferenceEngine(model, device=device, target=2)
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(3, *input_size, generator=generator), [0, 4, 0]),
               (torch.randn(2, *input_size, generator=generator), [4, 1]),
               (torch.randn(1, *input_size, generator=generator), [0])]
    for batch, ids in batches:
        ours = engine.accumulate(batch, ids, return_maps=True)
        theirs = twin.accumulate(batch, ids, return_maps=True)
        assert ours.shape == batch.shape and ours.dtype == torch.float32
        assert ours.device.type == device
        assert close(ours, theirs)
    assert engine_counts(engine) == twin.counts() == {0: 3, 1: 1, 4: 2}
    for element, mean in twin.means().items():
        assert close(engine.means()[element], mean)
        assert close(engine_sums(engine)[element], twin.sums()[element])


@pytest.mark.parametrize("device", DEVICES)
def test_reserved_element_ids_give_the_same_sums(device):
    """Sums allocated once from the plan's ids equal sums grown id by id; ids never seen are not reported,
    and an id nobody reserved still gets its own row."""
    scripted = to_torchscript(random_model(conv5_fc3, (1, 9, 8, 7)))
    grown = make_engine(scripted, device=device)
    reserved = make_engine(scripted, device=device, element_ids=[5, 0, 3, 9])
    generator = torch.Generator().manual_seed(2)
    for ids in ([3, 0, 3], [5], [0, 7]):
        batch = torch.randn(len(ids), 1, 9, 8, 7, generator=generator)
        grown.accumulate(batch, ids)
        reserved.accumulate(batch, ids)
    assert engine_counts(reserved) == engine_counts(grown) == {0: 2, 3: 2, 5: 1, 7: 1}
    for element, total in engine_sums(grown).items():
        assert torch.equal(engine_sums(reserved)[element], total)
    for element, mean in grown.means().items():
        assert torch.equal(reserved.means()[element], mean)
    late = make_engine(scripted, device=device)
    late.accumulate(torch.randn(1, 1, 9, 8, 7), [0])
    with pytest.raises(EngineError, match="maps were already added"):
        late._core.reserve([1])


def test_gradient_is_of_the_target_node_only():
    model = random_model(conv5_fc3, (1, 8, 8, 8), outputs=2)
    x = torch.randn(2, 1, 8, 8, 8)
    grads = [make_engine(to_torchscript(model), target=t).accumulate(x, [0, 0], return_maps=True) for t in (0, 1)]
    assert not close(grads[0], grads[1])
    # Numerical check of d out[:, 1] / d x at one voxel of sample 0 (float64 copy of the model).
    model64 = model.double()
    x64 = x.double()
    eps = 1e-6
    bumped = x64.clone()
    bumped[0, 0, 3, 4, 5] += eps
    with torch.no_grad():
        slope = (model64(bumped)[0, 1] - model64(x64)[0, 1]) / eps
    assert abs(slope.item() - grads[1][0, 0, 3, 4, 5].item()) <= 1e-4 * grads[1].abs().max().item()


def test_samples_do_not_mix_in_a_batch():
    model = random_model(conv5_fc3, (1, 10, 10, 10))
    x = torch.randn(4, 1, 10, 10, 10)
    together = make_engine(to_torchscript(model)).accumulate(x, [0] * 4, return_maps=True)
    alone = torch.cat([reference_gradients(model, x[i:i + 1], 0) for i in range(4)])
    assert close(together, alone, rtol=1e-5)


def test_no_maps_returned_unless_asked_and_inputs_untouched():
    model = random_model(conv5_fc3, (1, 8, 8, 8))
    scripted = to_torchscript(model)
    engine = make_engine(scripted)
    x = torch.randn(2, 1, 8, 8, 8)
    copy = x.clone()
    assert engine.accumulate(x, [0, 0]) is None
    assert torch.equal(x, copy) and not x.requires_grad
    assert all(p.grad is None for p in scripted.parameters())  # the engine works on its own copy
    assert engine_counts(engine) == {0: 2}


def test_zero_fraction_is_counted_on_request():
    model = random_model(conv5_fc3, (1, 8, 8, 8))
    x = torch.randn(2, 1, 8, 8, 8)
    assert make_engine(to_torchscript(model)).zero_fraction() is None
    engine = make_engine(to_torchscript(model), count_zeros=True)
    maps = engine.accumulate(x, [0, 0], return_maps=True)
    assert engine.zero_fraction() == pytest.approx((maps == 0).float().mean().item())


def test_loads_a_torchscript_file(tmp_path):
    model = random_model(conv5_fc3, (1, 8, 8, 8))
    path = tmp_path / "model.pt"
    to_torchscript(model).save(str(path))
    x = torch.randn(2, 1, 8, 8, 8)
    from_file = make_engine(path).accumulate(x, [0, 0], return_maps=True)
    from_module = make_engine(load_torchscript(path)).accumulate(x, [0, 0], return_maps=True)
    assert torch.equal(from_file, from_module)
    assert close(from_file, reference_gradients(model, x, 0))


def test_threads_share_one_engine_safely():
    model = random_model(conv5_fc3, (1, 8, 8, 8))
    engine = make_engine(to_torchscript(model))
    batches = [torch.randn(2, 1, 8, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    threads = [threading.Thread(target=engine.accumulate, args=(b, [0, 1])) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    twin = ReferenceEngine(model)
    for b in batches:
        twin.accumulate(b, [0, 1])
    assert engine_counts(engine) == {0: 6, 1: 6}
    assert close(engine_sums(engine)[0], twin.sums()[0], rtol=1e-5)  # order of the sum may differ


@pytest.mark.parametrize("kwargs,batch,ids,message", [
    ({"target": 3}, torch.randn(1, 1, 8, 8, 8), [0], "target node 3 is out of range: the model has 3 output"),
    ({}, torch.randn(2, 1, 8, 8, 8), [0], "got 1 element ids for a batch of 2"),
    ({}, torch.zeros(1, 1, 8, 8, 8, dtype=torch.int64), [0], "floating-point"),
    ({}, torch.randn(8, 8), [0] * 8, "a batch must be (B, C, *spatial)"),
])
def test_errors_are_one_line(kwargs, batch, ids, message):
    engine = make_engine(to_torchscript(random_model(conv5_fc3, (1, 8, 8, 8))), **kwargs)
    with pytest.raises(EngineError) as error:
        engine.accumulate(batch, ids)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_device_and_options_are_checked():
    scripted = to_torchscript(random_model(conv5_fc3, (1, 8, 8, 8)))
    with pytest.raises(EngineError, match="unsupported device 'mps'|Expected one of"):
        make_engine(scripted, device="mps")
    with pytest.raises(ValueError, match="METHOD 'deconvolution' is not supported: choose one of gradients"):
        make_engine(scripted, method="deconvolution")
    with pytest.raises(ValueError, match="amp 'float64' is not one of"):
        make_engine(scripted, amp="float64")
    if not torch.cuda.is_available():
        with pytest.raises(EngineError, match="no CUDA GPU is visible"):
            make_engine(scripted, device="cuda")
    with pytest.raises(TypeError):
        make_engine(object())


AMP = [pytest.param("cpu", torch.bfloat16, id="cpu-bf16")] + [
    pytest.param("cuda", dtype, id=f"cuda-{dtype}", marks=[pytest.mark.cuda, pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA GPU")]) for dtype in (torch.bfloat16, torch.float16)]


@pytest.mark.parametrize("device,dtype", AMP)
def test_amp_maps_are_float32_and_close(device, dtype):
    """Mixed precision: float32 maps, the fused and plain exports agree, underflow is counted. Maps of a
    random model correlate ~0.95 with float32 ones (random ReLU networks are sensitive to rounding); the
    0.99 criterion on a mean map is measured by benchmarks/run.py --amp."""
    from maps_interpret.models.fast import fuse_blocks

    model = random_model(conv5_fc3, (1, 40, 48, 40), outputs=2)
    x = torch.randn(4, 1, 40, 48, 40)
    exact = make_engine(to_torchscript(model), device=device).accumulate(x, [0] * 4, return_maps=True).cpu()
    engine = make_engine(to_torchscript(fuse_blocks(model)), device=device, amp=str(dtype).split(".")[-1])
    mixed = engine.accumulate(x, [0] * 4, return_maps=True).cpu()
    assert mixed.dtype == torch.float32 and 0 <= engine.zero_fraction() < 0.5
    correlation = torch.corrcoef(torch.stack([exact.flatten(), mixed.flatten()]))[0, 1].item()
    assert correlation > 0.9, correlation


def test_loader_refuses_a_core_built_for_another_torch_or_with_broken_streams():
    """The import-time checks of engine/core.py: the real core passes; a core compiled against another torch,
    one whose C++ streams cannot format numbers (a static libstdc++ copy: seen on a GPU image), or one whose
    errors do not arrive as EngineError, is refused with the rebuild command."""
    from types import SimpleNamespace

    from maps_interpret import _core
    from maps_interpret.engine.core import _check_build

    assert _core.format_check(12345) == "n=12345 x=0.5"
    with pytest.raises(_core.EngineError, match="^n=12345 x=0.5$"):
        _core.raise_check(12345)
    _check_build(_core)

    def raises(error):
        def check(n):
            raise error
        return check

    good = dict(built_against=lambda: torch.__version__, format_check=lambda n: f"n={n} x=0.5",
                raise_check=raises(_core.EngineError("n=12345 x=0.5")), EngineError=_core.EngineError)
    _check_build(SimpleNamespace(**good))
    with pytest.raises(ImportError, match=r"compiled against torch 1\.0\.0 .*rebuild it: pip install"):
        _check_build(SimpleNamespace(**{**good, "built_against": lambda: "1.0.0"}))
    with pytest.raises(ImportError, match=r"got 'n=' for 12345.*static copy of libstdc\+\+.*-static-libstdc\+\+"):
        _check_build(SimpleNamespace(**{**good, "format_check": lambda n: "n="}))
    with pytest.raises(ImportError, match=r"does not raise its errors as EngineError \(got 'RuntimeError: n='\)"):
        _check_build(SimpleNamespace(**{**good, "raise_check": raises(RuntimeError("n="))}))
    with pytest.raises(ImportError, match=r"does not raise its errors as EngineError \(got None\)"):
        _check_build(SimpleNamespace(**{**good, "raise_check": lambda n: None}))
