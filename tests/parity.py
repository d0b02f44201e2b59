"""How a map is judged against ClinicaDL's, when ClinicaDL's own maps depend on the machine that made them.

ClinicaDL 1.6.1's maps change with the CPU's vector instructions: oneDNN picks other convolution kernels on
an AVX-512 CPU than on an AVX2 one, and where a value sits at a ReLU or max-pool decision the rounding can
flip it (shared/fixtures/clinicadl-1.6.1/alternates/README.md). The fixture holds, per MAPS, one reference
set per CPU kind that made one. The rules, in order:

1. `same-kind`: a reference of the running CPU's kind (`cpu_kind`) exists; the map must be within 1e-5 of its maximum.
   No other rule can rescue it.
2. `other-kind`: no reference of this kind; the map is within 1e-5 of one of the references.
3. `flip`: no reference of this kind and none within 1e-5; the map passes the flip criterion against one.

The flip criterion (also the CUDA criterion: cuDNN is one more "kind"): at least 80% of the voxels within
1e-5 of the reference's maximum, and a Pearson correlation of at least 0.99; the size of the differences in
the remaining voxels is not bounded. Why, from the fixture's files:
- ClinicaDL against itself across the two kinds (image MAPS, the batch-size-1 command): the worst map,
  sub-TR07's, differs by 5.6% of its maximum in 11.1% of its voxels (88.9% within 1e-5), correlation 0.9992;
  the group mean 1.4%, 89.0% within, 0.99998. Every other map of that MAPS agrees within 1e-5.
- This project on AVX-512 against the AVX2-only patch MAPS: one patch of one image (best-accuracy,
  sub-TE02 patch-1) differs by 19% of its maximum in 7.5% of its voxels, correlation 0.9983; run with
  oneDNN and ATen limited to AVX2 (`AVX2_EMULATION`), the same command gives that reference within 7e-7,
  so the difference is the kernels' rounding. (The emulation is not a whole AVX2 machine: it gives the
  image MAPS' AVX-512 maps, not its AVX2 ones; so an emulated run is held to "within 1e-5 of one kind's
  reference", with no flip allowed, and never counts as same-kind.)
  A patch has 8,000 voxels against the image's 35,840, so one flipped unit weighs more: a bound on the
  size of the difference would measure the patch size, not a defect.
- A flip changes the gradient path through the receptive field of the flipped unit only, so the rest of the
  map is equal to rounding; the defects this must catch (a wrong normalisation, target node, division,
  element order or layer) change every voxel: `tests/test_parity_rules.py` shows each one failing.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Optional

import torch

TOLERANCE = 1e-5
FLIP_WITHIN = 0.80
FLIP_CORRELATION = 0.99

# The kind of CPU that made each MAPS of the fixture (its README and alternates/README.md); alternates/<kind>/
# hold the same commands re-run on another kind.
PRIMARY_KIND = {"maps_image_cls": "AVX512", "maps_slice_reg": "AVX2", "maps_patch_cls": "AVX2"}

# Environment that makes an AVX-512 CPU compute as an AVX2-only one: oneDNN's kernels (convolutions) and
# ATen's vectorised kernels (reductions, element-wise ops) limited to AVX2.
AVX2_EMULATION = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def cpu_capability() -> str:
    """The vector instructions torch dispatches its kernels to ("AVX512", "AVX2", "DEFAULT", ...)."""
    return torch.backends.cpu.get_cpu_capability().upper().replace("-", "")


def cpu_vendor() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


# CPU vendors whose AVX-512 kernels round otherwise than Intel's, as the fixture's alternates name them.
VENDOR_KINDS = {"AuthenticAMD": "AMD"}


def cpu_kind() -> str:
    """The running CPU's kind for the references: its capability, and for AVX-512 also whose it is. The
    AVX-512 reference was made on an Intel Xeon; on an AMD EPYC with AVX-512 (Zen 4) oneDNN picks other
    convolution kernels: the image MAPS' batch-size-1 maps come out as the AVX2 reference's (1.41e-2 from the
    AVX-512 one) and two patch maps as alternates/avx512-amd's. Its kind is "AVX512AMD" (the folder's name)."""
    capability = cpu_capability()
    vendor = cpu_vendor()
    if capability != "AVX512" or vendor == "GenuineIntel":
        return capability
    return capability + VENDOR_KINDS.get(vendor, f"-{vendor}")


def reference_sets(fixture: Path, maps_name: str) -> dict[str, Path]:
    """Kind -> root of the reference MAPS made on that kind (the primary set first)."""
    sets = {PRIMARY_KIND[maps_name]: fixture / maps_name}
    alternates = fixture / "alternates"
    if alternates.is_dir():
        for folder in sorted(alternates.iterdir()):
            if (folder / maps_name).is_dir():
                sets[folder.name.upper().replace("-", "")] = folder / maps_name
    return sets


def reference_files(sets: Mapping[str, Path], relative: str) -> dict[str, Path]:
    """Kind -> the reference of the map at `relative` in each set. An alternate set may hold only the maps that
    differ from the primary set's (alternates/README.md: avx512-amd keeps the 2 of 1048 that differ): a map it
    lacks is, on that kind, the primary one."""
    primary = next(iter(sets.values()))
    out = {}
    for kind, root in sets.items():
        path = root / relative if (root / relative).is_file() else primary / relative
        if path.is_file():
            out[kind] = path
    return out


@dataclass
class Comparison:
    max_error: float  # largest |ours - reference| / max |reference|
    within: float  # fraction of voxels within TOLERANCE of max |reference|
    correlation: float

    @classmethod
    def of(cls, ours: torch.Tensor, reference: torch.Tensor) -> "Comparison":
        ours, reference = ours.double().flatten(), reference.double().flatten()
        error = (ours - reference).abs() / reference.abs().max()
        if ours.std() == 0 or reference.std() == 0:
            correlation = 1.0 if torch.equal(ours, reference) else 0.0
        else:
            correlation = torch.corrcoef(torch.stack([ours, reference]))[0, 1].item()
        return cls(error.max().item(), (error <= TOLERANCE).double().mean().item(), correlation)

    @property
    def close(self) -> bool:
        return self.max_error <= TOLERANCE

    @property
    def flip(self) -> bool:
        return self.within >= FLIP_WITHIN and self.correlation >= FLIP_CORRELATION

    def __str__(self) -> str:
        return (f"max error {self.max_error:.3g} of the maximum, {self.within:.1%} of voxels within "
                f"{TOLERANCE:g}, correlation {self.correlation:.6f}")


@dataclass
class Verdict:
    what: str
    rule: str  # same-kind, other-kind or flip
    running: str
    reference: str  # the kind of the reference it passed against
    max_error: float
    within: float
    correlation: float


def judge(what: str, ours: torch.Tensor, references: Mapping[str, torch.Tensor], running: str,
          allow_flip: bool = True) -> Verdict:
    """The rule `ours` passes by (module docstring), or AssertionError saying why it passes none.
    `allow_flip=False` asks for 1e-5 against some reference (rules 1 and 2 only)."""
    assert references, f"{what}: no reference"
    for kind, reference in references.items():
        assert ours.shape == reference.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(reference.shape)} ({kind})"
    compared = {kind: Comparison.of(ours, reference) for kind, reference in references.items()}

    def verdict(rule: str, kind: str) -> Verdict:
        c = compared[kind]
        return Verdict(what, rule, running, kind, c.max_error, c.within, c.correlation)

    if running in compared:
        assert compared[running].close, f"{what}: against the {running} reference (this CPU's kind): {compared[running]}"
        return verdict("same-kind", running)
    for kind, comparison in compared.items():
        if comparison.close:
            return verdict("other-kind", kind)
    for kind, comparison in compared.items():
        if comparison.flip and allow_flip:
            return verdict("flip", kind)
    detail = "; ".join(f"{kind}: {c}" for kind, c in compared.items())
    raise AssertionError(f"{what}: no {running} reference, and neither within {TOLERANCE:g} nor "
                         f"{'a flip' if allow_flip else '(flips not allowed here) a flip'} "
                         f"(>= {FLIP_WITHIN:.0%} within, correlation >= {FLIP_CORRELATION}) of any: {detail}")


VERDICTS: list[Verdict] = []


def record(verdict: Verdict) -> Verdict:
    """Kept for the end-of-run summary (conftest.py); appended to $MAPS_INTERPRET_PARITY_REPORT if set."""
    VERDICTS.append(verdict)
    report: Optional[str] = os.environ.get("MAPS_INTERPRET_PARITY_REPORT")
    if report:
        with open(report, "a") as handle:
            handle.write(json.dumps(asdict(verdict)) + "\n")
    return verdict


def summary_lines() -> list[str]:
    if not VERDICTS:
        return []
    counts: dict[tuple[str, str], int] = {}
    for v in VERDICTS:
        counts[(v.running, v.rule)] = counts.get((v.running, v.rule), 0) + 1
    lines = ["ClinicaDL parity: " + ", ".join(f"{n} map(s) by {rule} on {running}"
                                              for (running, rule), n in sorted(counts.items()))]
    for v in VERDICTS:
        if v.rule == "flip":
            lines.append(f"  {v.rule} ({v.running} vs {v.reference} reference): {v.what}: max error "
                         f"{v.max_error:.3g}, {v.within:.1%} within {TOLERANCE:g}, correlation {v.correlation:.6f}")
    return lines
