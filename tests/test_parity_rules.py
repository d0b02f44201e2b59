"""The rules that judge a map against ClinicaDL's references of several CPU kinds (tests/parity.py), fed
both kinds, so the logic that an AVX2 machine takes is tested on an AVX-512 one and the other way round."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from helpers import fixture_root
from parity import Comparison, cpu_capability, judge, reference_files, reference_sets

VALIDATION = "split-0/best-loss/validation/interpret-gradients_validation"


@pytest.fixture
def reference() -> torch.Tensor:
    return torch.randn(1, 20, 20, 20, generator=torch.Generator().manual_seed(0))


def flipped(reference: torch.Tensor) -> torch.Tensor:
    """What a flipped ReLU/max-pool decision does: one local block changes a lot, the rest is equal."""
    out = reference.clone()
    out[0, :5, :5, :10] *= 0.6  # 250 of 8000 voxels, by 40% of their value
    return out


def test_same_kind_is_strict_and_nothing_rescues_it(reference):
    avx512, avx2 = reference, flipped(reference)
    refs = {"AVX512": avx512, "AVX2": avx2}
    assert judge("a", avx512 + 1e-7, refs, "AVX512").rule == "same-kind"
    assert judge("b", avx2, refs, "AVX2").rule == "same-kind"
    # Equal to the other kind's map, but not to this kind's: refused, though it would pass as other-kind.
    with pytest.raises(AssertionError, match="against the AVX512 reference"):
        judge("c", avx2, refs, "AVX512")
    with pytest.raises(AssertionError, match="against the AVX2 reference"):
        judge("d", avx512, refs, "AVX2")


def test_other_kind_then_flip_when_this_kind_has_no_reference(reference):
    refs = {"AVX2": reference}
    verdict = judge("a", reference * (1 + 5e-6), refs, "AVX512")
    assert (verdict.rule, verdict.reference) == ("other-kind", "AVX2")
    verdict = judge("b", flipped(reference), refs, "AVX512")
    assert verdict.rule == "flip" and verdict.within > 0.96 and verdict.max_error > 0.05
    with pytest.raises(AssertionError, match="flips not allowed"):
        judge("c", flipped(reference), refs, "AVX512", allow_flip=False)
    # A machine of a kind no reference was made on (an ARM CPU, a GPU) goes by the same rules.
    assert judge("d", flipped(reference), refs, "DEFAULT").rule == "flip"


@pytest.mark.parametrize("defect", ["scaled by elements", "off by 1%", "sign", "another element", "abs",
                                    "another node", "shifted by a voxel", "half flipped"])
def test_defects_are_not_flips(reference, defect):
    other = torch.randn(1, 20, 20, 20, generator=torch.Generator().manual_seed(1))
    wrong = {"scaled by elements": reference / 4, "off by 1%": reference * 1.01, "sign": -reference,
             "another element": other, "abs": reference.abs(), "another node": reference + 0.5 * other,
             "shifted by a voxel": reference.roll(1, dims=3),
             "half flipped": torch.cat([reference[..., :10], reference[..., 10:] * 0.2], dim=-1)}[defect]
    with pytest.raises(AssertionError, match="neither within"):
        judge(defect, wrong, {"AVX2": reference}, "AVX512")


def test_comparison_of_constant_maps():
    zeros = torch.zeros(2, 3)
    assert Comparison.of(zeros + 1, zeros + 1).correlation == 1.0
    assert Comparison.of(torch.ones(2, 3), torch.arange(6.0).view(2, 3)).correlation == pytest.approx(0.0)


@pytest.mark.skipif(fixture_root() is None, reason="ClinicaDL fixture not found")
def test_clinicadl_against_itself_across_kinds(clinicadl_fixture):
    """ClinicaDL's own maps of the two kinds: each is same-kind on its machine, refused on the other, and
    passes the flip criterion against the other kind's (the criterion's justification)."""
    sets = reference_sets(clinicadl_fixture, "maps_image_cls")
    assert set(sets) == {"AVX512", "AVX2"}
    assert set(reference_sets(clinicadl_fixture, "maps_slice_reg")) == {"AVX2"}
    assert set(reference_sets(clinicadl_fixture, "maps_patch_cls")) == {"AVX2", "AVX512AMD"}
    for name in ("mean_image-0_map.pt", "sub-TR07_ses-M000_image-0_map.pt"):
        maps = {kind: torch.load(root / VALIDATION / name, weights_only=True) for kind, root in sets.items()}
        for kind, ours in maps.items():
            other = "AVX2" if kind == "AVX512" else "AVX512"
            assert judge(name, ours, maps, kind).rule == "same-kind"
            with pytest.raises(AssertionError):
                judge(name, ours, maps, other)
            verdict = judge(name, ours, {other: maps[other]}, kind)
            assert verdict.rule == "flip" and 0.85 < verdict.within < 0.9 and verdict.max_error > 0.01


def test_reference_sets_found_by_kind(tmp_path):
    for folder in ("maps_image_cls", "alternates/avx2/maps_image_cls", "alternates/neon/maps_other",
                   "alternates/avx512-amd/maps_image_cls"):
        (tmp_path / folder).mkdir(parents=True)
    sets = reference_sets(tmp_path, "maps_image_cls")
    assert sets == {"AVX512": tmp_path / "maps_image_cls", "AVX2": tmp_path / "alternates/avx2/maps_image_cls",
                    "AVX512AMD": tmp_path / "alternates/avx512-amd/maps_image_cls"}
    for root, name in ((sets["AVX512"], "a.pt"), (sets["AVX512"], "b.pt"), (sets["AVX2"], "a.pt"),
                       (sets["AVX512AMD"], "b.pt")):
        (root / name).write_bytes(b"")
    # A partial alternate set: the maps it lacks are the primary set's on its kind.
    assert reference_files(sets, "a.pt") == {"AVX512": sets["AVX512"] / "a.pt", "AVX2": sets["AVX2"] / "a.pt",
                                             "AVX512AMD": sets["AVX512"] / "a.pt"}
    assert reference_files(sets, "b.pt") == {"AVX512": sets["AVX512"] / "b.pt", "AVX2": sets["AVX512"] / "b.pt",
                                             "AVX512AMD": sets["AVX512AMD"] / "b.pt"}


def test_cpu_kind_names_the_vendor_of_avx512(monkeypatch):
    import parity

    monkeypatch.setattr(parity, "cpu_capability", lambda: "AVX512")
    for vendor, kind in (("GenuineIntel", "AVX512"), ("AuthenticAMD", "AVX512AMD"), ("HygonGenuine", "AVX512-HygonGenuine")):
        monkeypatch.setattr(parity, "cpu_vendor", lambda vendor=vendor: vendor)
        assert parity.cpu_kind() == kind
    monkeypatch.setattr(parity, "cpu_capability", lambda: "AVX2")
    assert parity.cpu_kind() == "AVX2"


@pytest.mark.skipif(cpu_capability() != "AVX512", reason="needs an AVX-512 CPU to limit torch to AVX2")
def test_cpu_capability_is_what_torch_dispatches():
    code = "import sys; sys.path.insert(0, 'tests'); from parity import cpu_capability; print(cpu_capability())"
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.stdout.strip() == "AVX2"


def test_ci_fails_without_the_fixture(tmp_path):
    """Under .ci/run (MAPS_INTERPRET_REQUIRE_FIXTURES=1) a missing fixture fails the run, it is not skipped."""
    env = {**os.environ, "MAPS_INTERPRET_REQUIRE_FIXTURES": "1", "MAPS_INTERPRET_FIXTURES": str(tmp_path / "none")}
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_maps.py"],
                            cwd=repo, env=env, capture_output=True, text=True)
    assert result.returncode == 3, result.stdout[-2000:]
    assert "MAPS_INTERPRET_REQUIRE_FIXTURES=1 but the ClinicaDL 1.6.1 fixture is not at" in result.stdout + result.stderr
    env.pop("MAPS_INTERPRET_REQUIRE_FIXTURES")
    skipped = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_maps.py"],
                             cwd=repo, env=env, capture_output=True, text=True)
    assert skipped.returncode == 0 and "skipped" in skipped.stdout
