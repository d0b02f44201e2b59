"""One job cut in pieces gives the maps of one process: torchrun with 2 Gloo ranks on the CPU, and
--num_parts/--part_id computed separately then --merge_parts.

Stated tolerance: every batch of a shard holds the elements it holds in one process (shards are whole
batches), so individual maps are equal bit for bit; a mean is the sum of per-shard float32 sums instead of
one running sum, so it may differ by summation order: within 1e-6 of the map's largest |value| (float32's
epsilon is 1.2e-7; a few additions at most change by a few ulps)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import tree_digest
from maps_interpret.runner.run import element_shard
from maps_interpret.runner.distributed import shard
from maps_interpret.plan import DataPass
from maps_interpret.synthetic import PATTERN, build_demo, tensor_path
from maps_interpret.output.staging import STAGING_DIRNAME

pytestmark = pytest.mark.slow
TOLERANCE = 1e-6
OPTIONS = ["--no-gpu", "-np", "1", "--batch_size", "2", "--save_individual"]
PATCH = {"preprocessing": "t1-linear", "mode": "patch", "use_uncropped_image": False, "patch_size": 8,
         "stride_size": 6, "prepare_dl": False,
         "file_type": {"pattern": PATTERN, "description": "t1-linear", "needed_pipeline": "t1-linear"}}


def maps_interpret(root: Path, *args: str, ranks: int = 0) -> subprocess.CompletedProcess:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
                 "-m", "maps_interpret"] if ranks else [sys.executable, "-m", "maps_interpret"])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*launcher, "maps", *args], cwd=root, capture_output=True, text=True, env=env,
                          timeout=600)


def outputs(root: Path, name: str) -> dict[str, torch.Tensor]:
    found = {}
    for path in sorted((root / "maps").glob(f"split-*/best-*/test/interpret-{name}/*.pt")):
        key = str(path.relative_to(root / "maps")).replace(f"interpret-{name}", "interpret-X")
        found[key] = torch.load(path, weights_only=True)
    return found


def assert_same_maps(ours: dict, reference: dict) -> None:
    assert sorted(ours) == sorted(reference) and reference
    for key, value in reference.items():
        if key.rsplit("/", 1)[1].startswith(("mean_", "absmean_", "std_")):  # sums: summation order
            scale = value.abs().max().item()
            assert (ours[key] - value).abs().max().item() <= TOLERANCE * scale, key
        else:
            assert torch.equal(ours[key], value), key


@pytest.fixture(scope="module", params=["image", "patch"])
def demo(request, tmp_path_factory) -> tuple[Path, dict]:
    """A demo MAPS with its `test` group defined and a reference run (one process) named `one`."""
    root = tmp_path_factory.mktemp(f"distributed-{request.param}") / "demo"
    if request.param == "image":
        build_demo(root, shape=(20, 24, 20), n_train=4, n_test=7, trained=False)
    else:  # 4x4x3 = 27 patches per image: shards and batches start inside sessions
        build_demo(root, shape=(20, 22, 18), n_train=4, n_test=3, trained=False, preprocessing=PATCH,
                   input_size=(1, 8, 8, 8))
    result = maps_interpret(root, "test", "one", "--participants_tsv", "data/test.tsv", "--caps_directory",
                            "data/caps", *OPTIONS)
    assert result.returncode == 0, result.stderr
    return root, outputs(root, "one")


def test_shards_are_whole_batches_covering_every_element_once():
    for n_sessions, n_elements, batch, count in [(7, 1, 2, 2), (3, 27, 2, 2), (5, 3, 4, 3), (2, 1, 8, 4)]:
        data_pass = DataPass(caps={}, sessions=[None] * n_sessions, layout=None, element_ids=list(range(n_elements)))
        pieces = [element_shard(data_pass, batch, index, count) for index in range(count)]
        assert [i for piece in pieces for i in piece] == list(range(n_sessions * n_elements))
        assert all(piece.start % batch == 0 for piece in pieces)
        sizes = [len(shard(-(-n_sessions * n_elements // batch), i, count)) for i in range(count)]
        assert max(sizes) - min(sizes) <= 1


def test_torchrun_with_two_gloo_ranks_gives_the_maps_of_one_process(demo):
    root, reference = demo
    result = maps_interpret(root, "test", "two", *OPTIONS, ranks=2)
    assert result.returncode == 0, result.stderr
    assert "rank 1 of 2 (gloo)" in result.stderr
    assert_same_maps(outputs(root, "two"), reference)
    assert result.stdout.count("interpret-two") == 2  # rank 0 prints the folders, once each
    assert not (root / "maps" / STAGING_DIRNAME).exists()


def test_parts_then_merge_give_the_maps_of_one_process(demo):
    root, reference = demo
    parts = ["--num_parts", "3"]
    for part in (2, 0):
        result = maps_interpret(root, "test", "parts", *OPTIONS, *parts, "--part_id", str(part))
        assert result.returncode == 0, result.stderr
        assert "combine the parts with --merge_parts" in result.stderr
    assert outputs(root, "parts") == {}  # nothing published before the merge
    refused = maps_interpret(root, "test", "parts", *OPTIONS, *parts, "--merge_parts")
    assert refused.returncode == 1
    assert "part 1 of 3 is not finished" in refused.stderr and "--part_id 1" in refused.stderr
    other = maps_interpret(root, "test", "parts", *OPTIONS[:-1], *parts, "--merge_parts")
    assert other.returncode == 1 and "--save_individual (was True, now False)" in other.stderr
    result = maps_interpret(root, "test", "parts", *OPTIONS, *parts, "--part_id", "1")
    assert result.returncode == 0, result.stderr
    result = maps_interpret(root, "test", "parts", *OPTIONS, *parts, "--merge_parts")
    assert result.returncode == 0, result.stderr
    assert_same_maps(outputs(root, "parts"), reference)
    assert not (root / "maps" / STAGING_DIRNAME).exists()  # the parts are gone once merged


def test_a_failing_rank_stops_every_rank_and_leaves_the_maps_unchanged(demo, tmp_path):
    source, _ = demo
    root = tmp_path / "demo"
    shutil.copytree(source, root)
    participant, session = (root / "data" / "test.tsv").read_text().splitlines()[-1].split("\t")[:2]
    broken = tensor_path(root / "data" / "caps", participant, session)  # the last session: in rank 1's shard
    broken.write_bytes(b"not a tensor")
    before = tree_digest(root / "maps")
    result = maps_interpret(root, "test", "broken", *OPTIONS, ranks=2)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines()
             if line.startswith("maps-interpret: error: rank 1: cannot read tensor") and broken.name in line]
    assert len(lines) == 2, result.stderr  # both ranks end with the failing rank's one line
    assert tree_digest(root / "maps") == before


def test_new_group_under_torchrun_is_created_once(tmp_path):
    root = tmp_path / "demo"
    build_demo(root, shape=(16, 20, 16), n_train=4, n_test=3, trained=False)
    result = maps_interpret(root, "new", "x", "--participants_tsv", "data/test.tsv", "--caps_directory",
                            "data/caps", *OPTIONS, ranks=2)
    assert result.returncode == 0, result.stderr
    assert (root / "maps" / "groups" / "new" / "data.tsv").is_file()
    sessions = len((root / "data" / "test.tsv").read_text().splitlines()) - 1
    assert len(outputs_of_group(root, "new")) == 2 * (1 + sessions)  # 2 splits: the mean and each session's map


def outputs_of_group(root: Path, group: str) -> list[Path]:
    return sorted((root / "maps").glob(f"split-*/best-*/{group}/interpret-x/*.pt"))


def test_merge_parts_needs_the_number_of_parts(demo):
    root, _ = demo
    result = maps_interpret(root, "test", "one", *OPTIONS, "--merge_parts")
    assert result.returncode == 2 and "--merge_parts needs --num_parts K" in result.stderr


def test_smoothgrad_under_torchrun_gives_the_maps_of_one_process(demo):
    """Each sample's noise comes from its own seed: ranks change neither the noise nor the batches."""
    root, _ = demo
    smooth = ["smoothgrad", "--n_samples", "2", "--noise_level", "0.2"]
    assert maps_interpret(root, "test", "sg1", *smooth, *OPTIONS).returncode == 0
    result = maps_interpret(root, "test", "sg2", *smooth, *OPTIONS, ranks=2)
    assert result.returncode == 0, result.stderr
    assert_same_maps(outputs(root, "sg2"), outputs(root, "sg1"))


def test_group_statistics_under_torchrun_and_parts(demo):
    """The same merge routine (partials.merge: sums, and Chan's formula for Welford's mean and M2)."""
    root, _ = demo
    stats = ["--statistics", "--group_by", "diagnosis"]
    assert maps_interpret(root, "test", "st1", *stats, *OPTIONS).returncode == 0
    result = maps_interpret(root, "test", "st2", *stats, *OPTIONS, ranks=2)
    assert result.returncode == 0, result.stderr
    assert_same_maps(outputs(root, "st2"), outputs(root, "st1"))
    assert any("std_diagnosis-" in key for key in outputs(root, "st1"))
    for part in (0, 1):
        assert maps_interpret(root, "test", "st3", *stats, *OPTIONS, "--num_parts", "2", "--part_id",
                              str(part)).returncode == 0
    assert maps_interpret(root, "test", "st3", *stats, *OPTIONS, "--num_parts", "2", "--merge_parts").returncode == 0
    assert_same_maps(outputs(root, "st3"), outputs(root, "st1"))
    for name in ("st2", "st3"):  # the listing of who fell where, in session order, from every rank and part
        for table in ("subsets.tsv", "statistics.tsv"):
            theirs = root / "maps" / "split-0" / "best-loss" / "test" / f"interpret-{name}" / table
            assert theirs.read_text() == (theirs.parent.parent / "interpret-st1" / table).read_text(), (name, table)


def test_evaluation_under_torchrun_and_parts(demo):
    """--evaluate's rows travel with the partial sums (gathered over ranks, merged over parts, in order): the
    tables of one process, to the last digit."""
    root, _ = demo
    evaluate = ["--evaluate", "--evaluation_steps", "3", "--selection_metrics", "loss"]
    assert maps_interpret(root, "test", "ev1", *evaluate, *OPTIONS).returncode == 0
    result = maps_interpret(root, "test", "ev2", *evaluate, *OPTIONS, ranks=2)
    assert result.returncode == 0, result.stderr
    for part in (0, 1):
        assert maps_interpret(root, "test", "ev3", *evaluate, *OPTIONS, "--num_parts", "2", "--part_id",
                              str(part)).returncode == 0
    assert maps_interpret(root, "test", "ev3", *evaluate, *OPTIONS, "--num_parts", "2",
                          "--merge_parts").returncode == 0
    folder = root / "maps" / "split-0" / "best-loss" / "test"
    rows = len((folder / "interpret-ev1" / "evaluation.tsv").read_text().splitlines()) - 1
    individual = [k for k in outputs(root, "one") if k.startswith("split-0/best-loss/") and "/sub-" in k
                  and "image-space" not in k]  # the element maps, not their assembly into the image
    assert rows == len(individual) > 0  # one row per map
    for name in ("ev2", "ev3"):
        for table in ("evaluation.tsv", "evaluation_curves.tsv", "evaluation_summary.tsv"):
            ours = (folder / f"interpret-{name}" / table).read_text()
            assert ours == (folder / "interpret-ev1" / table).read_text(), (name, table)


def test_a_long_sanity_check_under_torchrun_never_meets_the_collective_time_limit(demo, tmp_path):
    """Rank 0 writes, checks and publishes while the other ranks wait for its outcome in the key-value store,
    polling, not in a collective: a sanity check longer than the ranks' time limit (here 4 s, for 30 minutes)
    ends well. Rank 0's check is slowed by a sitecustomize module (test code only)."""
    root, _ = demo
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('RANK') == '0':\n"
        "    import time\n"
        "    import maps_interpret.analysis.sanity as sanity\n"
        "    real = sanity.sanity_check\n"
        "    def slow(*args, **kwargs):\n"
        "        time.sleep(8)\n"
        "        return real(*args, **kwargs)\n"
        "    sanity.sanity_check = slow\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MAPS_INTERPRET_RANK_TIMEOUT": "4",
           "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "maps_interpret", "maps", "test", "slow", *OPTIONS, "--sanity_check",
                             "--sanity_sessions", "1", "--selection_metrics", "loss"], cwd=root, capture_output=True,
                            text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for split in (0, 1):
        assert (root / "maps" / f"split-{split}" / "best-loss" / "test" / "interpret-slow" /
                "sanity_check.json").is_file()


@pytest.mark.parametrize("method", [["occlusion", "--occlusion_size", "4", "--chunk_size", "16"], ["grad-cam++"],
                                    ["lrp", "--lrp_composite", "epsilon-alpha2-beta1-flat"]],
                         ids=["occlusion", "grad-cam++", "lrp"])
def test_the_forward_cam_and_rule_methods_under_torchrun_and_parts(demo, method):
    """Occlusion's stream of occluded copies, Grad-CAM++'s feature maps and LRP's rewritten network, with group
    statistics: torchrun and parts give the maps of one process."""
    root, _ = demo
    name = {"occlusion": "oc", "grad-cam++": "gp", "lrp": "lr"}[method[0]]
    common = [*method, "--statistics", "--group_by", "diagnosis", *OPTIONS]
    assert maps_interpret(root, "test", f"{name}1", *common).returncode == 0
    result = maps_interpret(root, "test", f"{name}2", *common, ranks=2)
    assert result.returncode == 0, result.stderr
    assert_same_maps(outputs(root, f"{name}2"), outputs(root, f"{name}1"))
    for part in (0, 1):
        assert maps_interpret(root, "test", f"{name}3", *common, "--num_parts", "2", "--part_id",
                              str(part)).returncode == 0
    assert maps_interpret(root, "test", f"{name}3", *common, "--num_parts", "2", "--merge_parts").returncode == 0
    assert_same_maps(outputs(root, f"{name}3"), outputs(root, f"{name}1"))
