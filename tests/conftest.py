"""Pytest fixtures: the ClinicaDL 1.6.1 oracle (../shared/fixtures) and synthetic MAPS."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from helpers import fixture2_root, fixture_root, working_copy
from parity import summary_lines


REQUIRE = "MAPS_INTERPRET_REQUIRE_FIXTURES"  # set by .ci/run: the ClinicaDL oracle may not be skipped there


def pytest_sessionstart(session) -> None:
    """Under CI the ClinicaDL fixture is the oracle: its absence fails the run instead of skipping its tests."""
    if os.environ.get(REQUIRE) == "1" and fixture_root() is None:
        where = os.environ.get("MAPS_INTERPRET_FIXTURES") or "../shared/fixtures/clinicadl-1.6.1 (beside the checkout)"
        pytest.exit(f"{REQUIRE}=1 but the ClinicaDL 1.6.1 fixture is not at {where}: its parity tests cannot be "
                    "skipped here", returncode=3)
    if os.environ.get(REQUIRE) == "1" and fixture2_root() is None:
        pytest.exit(f"{REQUIRE}=1 but the ClinicaDL 2.0.0 fixture is not beside the 1.6.1 one (or at "
                    "$MAPS_INTERPRET_FIXTURES2): its reference tests cannot be skipped here", returncode=3)


def pytest_terminal_summary(terminalreporter) -> None:
    """Which rule each ClinicaDL map passed by (tests/parity.py)."""
    for line in summary_lines():
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def clinicadl_fixture() -> Path:
    root = fixture_root()
    if root is None:
        pytest.skip("ClinicaDL 1.6.1 fixture not found: set MAPS_INTERPRET_FIXTURES or place it in ../shared/fixtures")
    return root


@pytest.fixture
def fixture_workdir(clinicadl_fixture: Path, tmp_path: Path, monkeypatch) -> Path:
    """A writable copy of the fixture's data/ and clean MAPS, as the fixture README says to run it
    (from its root, because the MAPS store relative CAPS paths)."""
    shutil.copytree(clinicadl_fixture / "data", tmp_path / "data")
    shutil.copytree(clinicadl_fixture / "maps_image_cls_clean", tmp_path / "maps_image_cls")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def synthetic_demo(tmp_path_factory) -> Path:
    """A small synthetic CAPS + MAPS (two splits, random weights), built once. Its CAPS holds tensors only, as
    the ClinicaDL fixture's (test_space.py runs CAPS with their source NIfTI images)."""
    from maps_interpret.synthetic import build_demo

    root = tmp_path_factory.mktemp("synthetic") / "demo"
    build_demo(root, shape=(12, 14, 10), n_train=8, n_test=3, trained=False, nifti=False)
    return root


@pytest.fixture
def demo(synthetic_demo: Path, tmp_path: Path, monkeypatch) -> Path:
    """A writable copy of the synthetic demo; the working directory is its root."""
    return working_copy(synthetic_demo, tmp_path, monkeypatch)
