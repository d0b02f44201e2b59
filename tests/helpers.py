"""Helpers shared by the tests (conftest.py holds the pytest fixtures)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURE_NAME = "clinicadl-1.6.1"
# The CUDA case carries the `cuda` marker, so `pytest -m cuda` on a GPU machine runs exactly the CUDA tests.
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU")])]


def fixture_root() -> Path | None:
    """$MAPS_INTERPRET_FIXTURES when set (and only it), else shared/fixtures inside or beside the checkout."""
    given = os.environ.get("MAPS_INTERPRET_FIXTURES")
    candidates = [given] if given else [REPO / "shared" / "fixtures" / FIXTURE_NAME,
                                        REPO.parent / "shared" / "fixtures" / FIXTURE_NAME]
    for candidate in candidates:
        if candidate and (Path(candidate) / "maps_image_cls_clean" / "maps.json").is_file():
            return Path(candidate)
    return None


def fixture2_root() -> Path | None:
    """The ClinicaDL 2.0.0 fixture: $MAPS_INTERPRET_FIXTURES2, else beside the 1.6.1 one (../shared/fixtures)."""
    given = os.environ.get("MAPS_INTERPRET_FIXTURES2")
    first = fixture_root()
    candidates = [given] if given else [REPO / "shared" / "fixtures" / "clinicadl-2.0.0",
                                        REPO.parent / "shared" / "fixtures" / "clinicadl-2.0.0",
                                        *([first.parent / "clinicadl-2.0.0"] if first else [])]
    for candidate in candidates:
        if candidate and (Path(candidate) / "maps_cnn_image_cls" / "model.json").is_file():
            return Path(candidate)
    return None


def working_copy(source: Path, tmp_path: Path, monkeypatch) -> Path:
    """A writable copy of a demo built once for several tests; the working directory is its root."""
    root = tmp_path / "demo"
    shutil.copytree(source, root)
    monkeypatch.chdir(root)
    return root


def tree_digest(path: Path) -> dict[str, str]:
    """Every file and folder under `path` with a hash of its content, to prove a MAPS unchanged."""
    out = {}
    for entry in sorted(Path(path).rglob("*")):
        rel = str(entry.relative_to(path))
        out[rel] = hashlib.sha256(entry.read_bytes()).hexdigest() if entry.is_file() else "dir"
    return out


def assert_close_to_reference(ours: torch.Tensor, reference: torch.Tensor, what: str, rtol: float = 1e-5) -> None:
    """Equal within `rtol` of the reference map's largest absolute value."""
    assert ours.shape == reference.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(reference.shape)}"
    scale = reference.abs().max().item()
    error = (ours.float() - reference.float()).abs().max().item()
    assert error <= rtol * scale, f"{what}: max error {error:.3g} > {rtol} x {scale:.3g}"


def with_trained_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters (eval-mode BatchNorm then matters), eval mode."""
    for module in model.modules():
        if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.1)
    return model.eval()


def make_engine(model, device: str = "cpu", element_ids=None, count_zeros=None, **settings):
    """An engine of `model` (a ScriptModule or a TorchScript path) with settings made from keywords as the
    in-memory API makes them (settings.engine_settings: method, target, target_mode, parameters...)."""
    from maps_interpret.engine import Engine
    from maps_interpret.settings import engine_settings

    return Engine(model, engine_settings(**settings), device=device, element_ids=element_ids, count_zeros=count_zeros)


def engine_counts(engine) -> dict[int, int]:
    """Maps summed per element id so far."""
    state = engine.state()
    return dict(zip(state.get("ids", []), state.get("counts", [])))


def engine_sums(engine) -> dict[int, torch.Tensor]:
    """The float32 sum per element id so far."""
    state = engine.state()
    return dict(zip(state["ids"], state["sums"].unbind(0))) if state else {}


def splitmix(a: int, b: int) -> int:
    """The core's seed mixing (csrc/methods/noise_tunnel.cpp), to regenerate its noise here."""
    mask = (1 << 64) - 1
    z = (a * 0x9E3779B97F4A7C15 + b + 0x632BE59BD9B4E019) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def core_noises(seed: int, sample_seeds: list[int], copies: int, shape, device: str = "cpu") -> list[torch.Tensor]:
    """The standard normal noise the tunnel draws: copy k of sample i is the k-th draw of a generator (on the
    device) seeded with splitmix(seed, sample_seeds[i]). Returns one (B, ...) tensor per copy."""
    generators = [torch.Generator(device=device).manual_seed(splitmix(seed, s)) for s in sample_seeds]
    per_sample = [[torch.randn(shape, generator=g, device=device) for _ in range(copies)] for g in generators]
    return [torch.stack([per_sample[i][k] for i in range(len(sample_seeds))]) for k in range(copies)]


def run_with_sanity_check_and_evaluation(root: Path, monkeypatch, name: str, method: list[str],
                                         shape=(24, 28, 24)) -> tuple[Path, dict]:
    """A small untrained demo in `root`, one run of `method` (the METHOD and its options) named `name` with the
    sanity check, the evaluation and individual maps; returns split 0's folder and interpret.json's method."""
    import json

    from maps_interpret.cli import main
    from maps_interpret.synthetic import build_demo

    build_demo(root, shape=shape, n_train=4, n_test=2, trained=False)
    monkeypatch.chdir(root)
    assert main(["maps", "test", name, *method, "--sanity_check", "--sanity_sessions", "1", "--evaluate",
                 "--evaluation_steps", "3", "--save_individual", "--participants_tsv", "data/test.tsv",
                 "--caps_directory", "data/caps", "--no-gpu", "-np", "0", "--selection_metrics", "loss"]) == 0
    folder = root / "maps" / "split-0" / "best-loss" / "test" / f"interpret-{name}"
    assert (folder / "sanity_check.json").is_file() and (folder / "evaluation_summary.tsv").is_file()
    return folder, json.loads((folder / "interpret.json").read_text())["method"]
