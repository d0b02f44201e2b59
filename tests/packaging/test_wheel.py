"""The wheel (`make wheel`): what it holds and asks for, installed into fresh environments from
`make wheelhouse` only (no index): with the pinned torch it runs the demo as the development install does;
with another torch it is refused at install time, and, installed anyway (--no-deps), at the first command
with one line naming the torch to install."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
WHEELHOUSE = REPO / "build" / "wheelhouse"
PINNED = torch.__version__.split("+")[0]  # the development torch (requirements/torch.txt)
OTHER = "2.14.1"  # the stand-in's version


def the_wheel() -> Path:
    wheels = sorted((REPO / "dist").glob("maps_interpret-*.whl"))
    if len(wheels) != 1:
        pytest.fail(f"expected one wheel in dist/, found {len(wheels)}: run `make wheel`")
    return wheels[0]


def run(*command, check=True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(map(str, command))} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def new_env(path: Path) -> Path:
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    return path / "bin"


def offline_pip(bin_: Path, *args, links: Path = WHEELHOUSE, check=True):
    # --isolated: the machine's pip.conf (find-links to a local torch, extra indexes) must not help.
    return run(bin_ / "python", "-m", "pip", "--isolated", "install", "--no-index", "--find-links", links, *args,
               check=check)


def test_wheel_holds_the_core_and_asks_for_its_torch():
    wheel = the_wheel()
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(info).decode()
        tags = archive.read(info.replace("METADATA", "WHEEL")).decode()
        entry_points = archive.read(info.replace("METADATA", "entry_points.txt")).decode()
        build_info = archive.read("maps_interpret/_build_info.py").decode()
    assert any(n.startswith("maps_interpret/_core.") and n.endswith(".so") for n in names)
    assert "maps_interpret/_core.pyi" in names and "maps_interpret/py.typed" in names
    assert f"Requires-Dist: torch=={PINNED}\n" in metadata
    assert not any(line.startswith("Requires-Dist: torch") and "==" not in line for line in metadata.splitlines())
    assert f'TORCH_VERSION = "{torch.__version__}"' in build_info
    assert "maps-interpret = maps_interpret.cli.interpret:entry" in entry_points
    # The platform tag is what was built here: no manylinux claim that auditwheel has not checked.
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    assert f"Tag: {tag}-{tag}-linux_x86_64" in tags and "manylinux" not in tags + wheel.name


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh environment that has the pinned torch, then the wheel, both from the wheelhouse alone."""
    bin_ = new_env(tmp_path_factory.mktemp("wheel") / "env")
    offline_pip(bin_, f"torch=={PINNED}")
    offline_pip(bin_, the_wheel())
    return bin_


def demo_maps(python: Path, command: Path, root: Path) -> dict[str, torch.Tensor]:
    run(python, "-m", "maps_interpret.synthetic", "demo", root)
    run(command, "maps", "test", "demo", "gradients", "--participants_tsv", "data/test.tsv", "--caps_directory",
        "data/caps", "--save_individual", "--no-gpu", cwd=root)
    return {str(p.relative_to(root)): torch.load(p, weights_only=True)
            for p in sorted((root / "maps").glob("split-*/best-*/test/interpret-demo/*.pt"))}


def test_installed_wheel_runs_the_demo_like_the_development_install(installed, tmp_path):
    assert "INPUT_MAPS_DIRECTORY" in run(installed / "maps-interpret", "--help").stdout
    theirs = demo_maps(installed / "python", installed / "maps-interpret", tmp_path / "wheel")
    dev = Path(sys.executable).parent
    ours = demo_maps(dev / "python", dev / "maps-interpret", tmp_path / "dev")
    assert theirs.keys() == ours.keys() and any("split-1" in name for name in ours)
    for name, value in ours.items():
        assert torch.equal(theirs[name], value), name
    located = run(installed / "python", "-c", "import maps_interpret, sys; print(maps_interpret.__file__)").stdout
    assert located.startswith(str(installed.parent))  # the wheel's copy ran, not the checkout's


def standin_torch(folder: Path, version: str) -> Path:
    """A wheel named torch that is only a version number: enough to see what pip and the import check do."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"torch-{version}-py3-none-any.whl"
    info = f"torch-{version}.dist-info"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("torch/__init__.py", f'__version__ = "{version}"\n')
        archive.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n")
        archive.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr(f"{info}/RECORD", "")
    return wheel


def test_another_torch_is_refused_at_install_and_at_the_first_command(tmp_path):
    links = tmp_path / "links"  # the wheelhouse without any real torch, plus the stand-in
    links.mkdir()
    for wheel in WHEELHOUSE.glob("*.whl"):
        if not wheel.name.startswith("torch-"):
            (links / wheel.name).symlink_to(wheel)
    standin_torch(links, OTHER)
    bin_ = new_env(tmp_path / "env")
    offline_pip(bin_, f"torch=={OTHER}", links=links)

    refused = offline_pip(bin_, the_wheel(), links=links, check=False)
    assert refused.returncode != 0 and f"depends on torch=={PINNED}" in refused.stdout + refused.stderr, refused
    assert f"torch=={OTHER}" in run(bin_ / "python", "-m", "pip", "--isolated", "freeze").stdout  # left as it was

    offline_pip(bin_, "--no-deps", the_wheel(), links=links)
    offline_pip(bin_, "numpy", "nibabel", "tqdm", "argparse-dataclass", links=links)
    result = run(bin_ / "maps-interpret", "maps", "test", "x", "--no-gpu", cwd=tmp_path, check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"maps-interpret: error: maps-interpret was compiled against torch {PINNED} but torch {OTHER} is installed: "
        f"pip install torch=={PINNED} (the build for your CUDA version), or rebuild maps-interpret against this "
        "torch: pip install --no-build-isolation --force-reinstall --no-deps maps-interpret (or `make setup`)")
