"""`make test-container`: the project's Dockerfile built and run for real, with podman, offline.

No registry is reachable here, so a stand-in for the CUDA PyTorch base image is made first: Debian bookworm
(debootstrap) with Python 3.11 and the pinned torch CPU wheel in a venv that is first on PATH, as `python` is in
PyTorch's images. The project's Dockerfile is then built on it with `--build-arg BASE_IMAGE=...` and
`--build-arg WHEELS=build/wheelhouse` (pip never reaches an index). Every run uses `--network none` and the default
shared memory (64 MB). podman is installed and configured by this module, into a private store that is removed
at the end. Needs root (rootful podman), a few GB of disk, and several minutes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

from maps_interpret.synthetic import build_demo

REPO = Path(__file__).resolve().parents[2]
WHEELHOUSE = REPO / "build" / "wheelhouse"
PINNED = torch.__version__.split("+")[0]
OS_IMAGE = "localhost/maps-interpret-test/bookworm:minbase"
BASE_IMAGE = "localhost/maps-interpret-test/pytorch:standin"
IMAGE = "localhost/maps-interpret-test/maps-interpret:test"
TOOLS = {"podman": "podman", "runc": "runc", "debootstrap": "debootstrap"}  # command: Debian package
FULL_SIZE = (169, 208, 179)
STUDY_USER = 4321  # stands for the host user who owns a study (any uid but root's and the image's 1000)
DEV_BIN = Path(sys.executable).parent
TIMES: dict[str, float] = {}

STANDIN = f"""\
FROM {OS_IMAGE}
RUN --mount=type=bind,source=wheels,target=/wheels \\
    python3 -m venv /opt/venv && \\
    /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /wheels torch=={PINNED} numpy
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
"""


def run(*command, check=True, env=None, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True,
                            env={**os.environ, **(env or {})}, **kwargs)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(map(str, command))} failed ({result.returncode}):\n"
                    f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def timed(name: str, started: float) -> None:
    TIMES[name] = time.monotonic() - started
    print(f"[container test] {name}: {TIMES[name]:.0f} s", file=sys.stderr)


def install_tools() -> None:
    missing = sorted({package for command, package in TOOLS.items() if shutil.which(command) is None})
    if not missing:
        return
    if os.geteuid() != 0:
        pytest.fail(f"the container test needs root (rootful podman) to install {' '.join(missing)}: "
                    f"run it as root, or apt-get install -y {' '.join(missing)} first")
    apt = {"DEBIAN_FRONTEND": "noninteractive"}
    run("apt-get", "update", "-q", env=apt)
    run("apt-get", "install", "-y", "-q", *missing, env=apt)


def debian_mirror() -> str:
    """The machine's own Debian mirror (a proxy or snapshot where there is one), else the public one."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for source in sources:
        if source.is_file() and not source.name.endswith(".disabled-by-farm"):
            for uri in re.findall(r"(?:^URIs:\s*|^deb\s+(?:\[[^]]*\]\s+)?)(\S+)", source.read_text(), re.M):
                if "security" not in uri and "/debian" in uri:
                    return uri
    return "http://deb.debian.org/debian"


class Podman:
    """podman with this test's own configuration and store (CONTAINERS_CONF / CONTAINERS_STORAGE_CONF)."""

    def __init__(self, root: Path):
        self.root = root
        conf, storage = root / "containers.conf", root / "storage.conf"
        # podman's default ulimits exceed the hard limits of some machines (then every run fails), and crun
        # refuses hybrid cgroups: runc does not (../shared/notes/containers.md).
        conf.write_text('[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
                        '[engine]\nruntime = "runc"\n')
        storage.write_text(f'[storage]\ndriver = "overlay"\ngraphroot = "{root}/graph"\nrunroot = "{root}/run"\n')
        self.env = {"CONTAINERS_CONF": str(conf), "CONTAINERS_STORAGE_CONF": str(storage)}

    def __call__(self, *args, check=True, **kwargs) -> subprocess.CompletedProcess:
        return run("podman", *args, check=check, env=self.env, **kwargs)

    def remove_store(self) -> None:
        self("system", "reset", "--force", check=False)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def podman(tmp_path_factory):
    if not any(WHEELHOUSE.glob("torch-*.whl")):
        pytest.fail(f"no torch wheel in {WHEELHOUSE}: run `make wheelhouse` (or `make test-container`)")
    started = time.monotonic()
    install_tools()
    timed("install podman", started)
    engine = Podman(tmp_path_factory.mktemp("podman"))
    yield engine
    engine.remove_store()
    summary = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in TIMES.items())
    print(f"\n[container test] times: {summary}", file=sys.stderr)


@pytest.fixture(scope="module")
def image(podman, tmp_path_factory) -> str:
    """The project's image, built on the local stand-in for the PyTorch base image."""
    work = tmp_path_factory.mktemp("base")
    started = time.monotonic()
    rootfs = work / "rootfs"
    run("debootstrap", "--variant=minbase", "--include=python3,python3-venv,python3-dev", "bookworm", rootfs,
        debian_mirror())
    with subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE) as tar:
        podman("import", "-", OS_IMAGE, stdin=tar.stdout)
    shutil.rmtree(rootfs)
    timed("debootstrap + import", started)

    started = time.monotonic()
    context = work / "standin"
    (context / "wheels").mkdir(parents=True)
    for wheel in WHEELHOUSE.glob("*.whl"):
        if not wheel.name.startswith("maps_interpret-"):
            try:
                os.link(wheel, context / "wheels" / wheel.name)
            except OSError:  # another file system (a tmpfs /tmp)
                shutil.copy2(wheel, context / "wheels" / wheel.name)
    (context / "Containerfile").write_text(STANDIN)
    podman("build", "--pull=never", "-t", BASE_IMAGE, context)
    shutil.rmtree(context)
    timed("stand-in base image", started)

    started = time.monotonic()
    podman("build", "--pull=never", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
           "--build-arg", "WHEELS=build/wheelhouse", "-t", IMAGE, REPO)
    timed("project image", started)
    return IMAGE


def in_image(podman, image_name: str, code: str) -> str:
    return podman("run", "--rm", "--network", "none", "--entrypoint", "python", image_name, "-c", code).stdout


def maps_of(root: Path, name: str) -> dict[str, torch.Tensor]:
    found = sorted((root / "maps").glob(f"split-*/best-*/test/interpret-{name}/*.pt"))
    return {str(p.relative_to(root)): torch.load(p, weights_only=True) for p in found}


def owned_by(root: Path, uid: int) -> list[Path]:
    return [p for p in root.rglob("*") if p.stat().st_uid != uid or p.stat().st_gid != uid]


def test_image_keeps_its_base_torch_and_runs_the_console_script_as_a_non_root_user(podman, image):
    torch_of = "import torch; print(torch.__version__, torch.__file__)"
    assert in_image(podman, image, torch_of) == in_image(podman, BASE_IMAGE, torch_of)
    packages = in_image(podman, image, "import importlib.metadata as m; "
                                       "print(sorted(d.metadata['Name'].lower() for d in m.distributions()))")
    assert packages.count("'torch'") == 1 and "'maps-interpret'" in packages
    assert "'cmake'" not in packages and "'scikit-build-core'" not in packages  # build tools stayed behind
    config = podman("image", "inspect", "--format", "{{json .Config.Entrypoint}} {{.Config.User}}", image).stdout
    assert config.split() == ['["maps-interpret"]', "1000"]
    help_text = podman("run", "--rm", "--network", "none", image).stdout  # CMD: --help
    assert "INPUT_MAPS_DIRECTORY" in help_text


def test_demo_in_the_image_equals_the_host_run_and_belongs_to_the_caller(podman, image, tmp_path):
    demo = tmp_path / "demo"
    run(DEV_BIN / "python", "-m", "maps_interpret.synthetic", "demo", demo)
    host, study = tmp_path / "host", tmp_path / "study"
    shutil.copytree(demo, host)
    shutil.copytree(demo, study)
    arguments = ["maps", "test", "demo", "gradients", "--participants_tsv", "data/test.tsv",
                 "--caps_directory", "data/caps", "--save_individual", "--no-gpu"]
    run(DEV_BIN / "maps-interpret", *arguments, cwd=host)

    # The study belongs to a host user other than the image's; --user runs the job as that user.
    run("chown", "-R", f"{STUDY_USER}:{STUDY_USER}", study)
    started = time.monotonic()
    podman("run", "--rm", "--network", "none", "--user", f"{STUDY_USER}:{STUDY_USER}",
           "-v", f"{study}:/data", image, *arguments)
    timed("demo run", started)

    ours, theirs = maps_of(host, "demo"), maps_of(study, "demo")
    assert theirs.keys() == ours.keys()
    assert any("split-1" in name for name in ours) and any("sub-" in name for name in ours)  # individual maps too
    for name, value in ours.items():
        assert torch.equal(theirs[name], value), name
    assert owned_by(study, STUDY_USER) == []  # every file the job wrote belongs to the caller


def test_full_size_sessions_with_two_readers_in_default_shared_memory(podman, image, tmp_path):
    """Two readers at full size with 64 MB of /dev/shm: threads (the default) need none; processes would keep
    several sessions of 25 MB there, so the loader reads in threads instead, with the same maps."""
    study = tmp_path / "study"
    build_demo(study, shape=FULL_SIZE, n_train=2, n_test=3, trained=False)
    host = tmp_path / "host"
    shutil.copytree(study, host)
    arguments = ["maps", "test", "full", "gradients", "--participants_tsv", "data/test.tsv",
                 "--caps_directory", "data/caps", "-np", "2", "--batch_size", "2", "--no-gpu"]
    run(DEV_BIN / "maps-interpret", *arguments, cwd=host)

    run("chown", "-R", "1000:1000", study)  # owned by the image's default user: no --user needed
    started = time.monotonic()
    podman("run", "--rm", "--network", "none", "-v", f"{study}:/data", image, *arguments)  # threads (default)
    timed("full-size run", started)
    # The group exists now (the first run defined it): the same command without its definition.
    processes = ["maps", "test", "processes", "gradients", "-np", "2", "--batch_size", "2", "--no-gpu",
                 "--reader", "processes"]
    result = podman("run", "--rm", "--network", "none", "-v", f"{study}:/data", image, *processes)
    assert "reading in 2 thread(s) instead" in result.stderr  # 64 MB of /dev/shm: processes would die there
    assert "--shm-size=1g or --ipc=host" in result.stderr

    ours = maps_of(host, "full")
    assert ours
    for run_name in ("full", "processes"):
        theirs = maps_of(study, run_name)
        assert sorted(theirs) == sorted(name.replace("interpret-full", f"interpret-{run_name}") for name in ours)
        for name, value in ours.items():
            assert value.shape[-3:] == FULL_SIZE
            assert torch.equal(theirs[name.replace("interpret-full", f"interpret-{run_name}")], value), name
    assert owned_by(study, 1000) == []
    shutil.rmtree(study), shutil.rmtree(host)  # 1.8 GB (full-size tensors and models); pytest keeps 3 runs


def test_image_saved_as_an_oci_archive_for_apptainer(podman, image, tmp_path):
    archive = tmp_path / "maps-interpret.oci.tar"
    started = time.monotonic()
    podman("save", "--format", "oci-archive", "-o", archive, image)
    timed("oci-archive", started)
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert {"oci-layout", "index.json"} <= {name.removeprefix("./") for name in names}
    definition = (REPO / "apptainer" / "maps-interpret.def").read_text()
    assert re.search(r"^Bootstrap:\s*oci-archive\s*$", definition, re.M)
    assert re.search(rf"^From:\s*{re.escape(archive.name)}\s*$", definition, re.M)
    archive.unlink()
