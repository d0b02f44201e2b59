"""Stopped at any moment, nothing lost: a stop signal while a batch is awaited, a publishing that fails half-way,
a replace that cannot finish; each ends with what was done kept and `--continue` finishing the run with the maps of
an uninterrupted one, bit for bit."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from maps_interpret.cli import main
from maps_interpret.output.staging import STAGING_DIRNAME, Staging

GROUP = ["--participants_tsv", "data/test.tsv", "--caps_directory", "data/caps"]
OPTIONS = ["--no-gpu", "-np", "0", "--batch_size", "1", "--save_individual", "--statistics"]


def maps_of(root, name: str) -> dict:
    return {str(p.relative_to(root / "maps")).replace(f"interpret-{name}", "X"): torch.load(p, weights_only=True)
            for p in sorted((root / "maps").glob(f"split-*/best-*/test/interpret-{name}/*.pt"))}


def assert_same(ours: dict, theirs: dict) -> None:
    assert sorted(ours) == sorted(theirs) and ours
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key


@pytest.fixture
def reference(demo) -> dict:
    assert main(["maps", "test", "ref", *GROUP, *OPTIONS]) == 0
    return maps_of(demo, "ref")


def test_a_signal_while_a_batch_is_awaited_keeps_every_finished_batch(demo, reference, monkeypatch, capsys):
    """--checkpoint_every 0 ("only when stopped"): SIGTERM arrives while the third batch is being read. The run
    stops with a checkpoint of the two finished batches (nothing lost), and --continue ends as a run that never
    stopped."""
    from maps_interpret.runner import passes

    real = passes.make_batches

    def slow_third(*args, **kwargs):
        for number, batch in enumerate(real(*args, **kwargs)):
            if number == 2:
                os.kill(os.getpid(), signal.SIGTERM)  # during the read of batch 3
            yield batch

    monkeypatch.setattr(passes, "make_batches", slow_third)
    assert main(["maps", "test", "wait", *OPTIONS, "--checkpoint_every", "0"]) == 128 + signal.SIGTERM
    assert "stopped by SIGTERM; the progress was checkpointed in" in capsys.readouterr().err
    state = json.loads((demo / "maps" / STAGING_DIRNAME / "test-wait" / "checkpoint-0.json").read_text())
    assert state["passes"]["0"]["done"] == 2
    monkeypatch.setattr(passes, "make_batches", real)
    assert main(["maps", "test", "wait", *OPTIONS, "--checkpoint_every", "0", "--continue"]) == 0
    assert_same(maps_of(demo, "wait"), reference)
    assert not (demo / "maps" / STAGING_DIRNAME).exists()


def first_published_then_continued(demo, reference, monkeypatch, real, name: str) -> None:
    """Only split-0's folder is in place; with `real` publishing back, --continue completes the run exactly."""
    assert (demo / f"maps/split-0/best-loss/test/interpret-{name}").is_dir()
    assert not (demo / f"maps/split-1/best-loss/test/interpret-{name}").exists()
    monkeypatch.setattr(Staging, "publish", staticmethod(real))
    assert main(["maps", "test", name, *OPTIONS, "--continue"]) == 0
    assert_same(maps_of(demo, name), reference)
    assert not (demo / "maps" / STAGING_DIRNAME).exists()


def test_a_publishing_that_fails_half_way_is_completed_by_continue(demo, reference, monkeypatch, capsys):
    real, calls = Staging.publish, []

    def second_fails(staged, final, replace):
        calls.append(final)
        if len(calls) == 2:
            raise OSError(13, "Permission denied", str(final))
        real(staged, final, replace)

    monkeypatch.setattr(Staging, "publish", staticmethod(second_fails))
    assert main(["maps", "test", "half", *OPTIONS]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "writing maps/split-1/best-loss/test/interpret-half failed (Permission denied); the folders already in " \
           "place are kept: free space or fix permissions; the progress is kept in" in err
    first_published_then_continued(demo, reference, monkeypatch, real, "half")


def test_a_folder_moved_but_not_recorded_counts_as_published(demo, reference, monkeypatch):
    """A kill between a folder's rename and its record: the staged folder is gone and the folder in place, so
    --continue publishes the others instead of refusing the one it finds."""
    from maps_interpret.runner.checkpoints import Checkpoint

    class Killed(BaseException):
        pass

    def killed(self, pass_index, job_index):
        raise Killed

    real_mark, real_close = Checkpoint.mark_published, Staging.close
    monkeypatch.setattr(Checkpoint, "mark_published", killed)
    monkeypatch.setattr(Staging, "close", lambda self, keep: self.release())  # a killed run removes nothing
    with pytest.raises(Killed):
        main(["maps", "test", "moved", *OPTIONS])
    assert (demo / "maps/split-0/best-loss/test/interpret-moved").is_dir()
    monkeypatch.setattr(Checkpoint, "mark_published", real_mark)
    monkeypatch.setattr(Staging, "close", real_close)
    assert main(["maps", "test", "moved", *OPTIONS, "--continue"]) == 0
    assert_same(maps_of(demo, "moved"), reference)


def test_a_replace_that_cannot_finish_puts_the_old_folder_back(tmp_path, monkeypatch):
    final, staged = tmp_path / "interpret-x", tmp_path / "staged"
    final.mkdir()
    (final / "old.pt").write_text("old")
    staged.mkdir()
    (staged / "new.pt").write_text("new")
    real, calls = os.replace, []

    def second_fails(source, destination):
        calls.append(destination)
        if len(calls) == 2:
            raise OSError(5, "Input/output error")
        real(source, destination)

    monkeypatch.setattr(os, "replace", second_fails)
    with pytest.raises(OSError):
        Staging.publish(staged, final, replace=True)
    monkeypatch.setattr(os, "replace", real)
    assert sorted(p.name for p in final.iterdir()) == ["old.pt"] and (staged / "new.pt").is_file()
    Staging.publish(staged, final, replace=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["interpret-x"]  # no old folder set aside is left
    assert (final / "new.pt").read_text() == "new"


def test_a_liveness_record_keeps_runs_on_other_nodes_safe(tmp_path, caplog):
    """Where flock is local to a node (Lustre localflock, NFS nolock), a run on another node holds no lock that
    this node sees: its liveness record, refreshed every minute, keeps its folder from being taken or removed."""
    import socket
    import time

    from maps_interpret.output import liveness

    root = tmp_path / STAGING_DIRNAME
    mine = Staging(tmp_path, "test-mine")
    mine.open(keep_checkpoint=False, discard_checkpoint=False)
    record = liveness.read(liveness.path(root, "test-mine"))
    assert record["host"] == socket.gethostname() and record["pid"] == os.getpid()
    before = record["heartbeat"]
    mine._heartbeat.beat()
    assert liveness.read(liveness.path(root, "test-mine"))["heartbeat"] >= before
    mine.close(keep=False)
    assert not liveness.path(root, "test-mine").exists()

    def elsewhere(key: str, age: float) -> None:
        (root / key).mkdir(parents=True, exist_ok=True)
        (root / f"{key}.lock").write_text("")
        liveness.path(root, key).write_text(json.dumps(
            {"host": "node-7", "pid": 4242, "started": time.time() - 3600, "heartbeat": time.time() - age}))

    elsewhere("test-live", 30)
    elsewhere("test-dead", liveness.STALE + 60)
    with pytest.raises(FileExistsError, match=r"in use by a run on another node \(host node-7, pid 4242, last "
                                              r"heartbeat 30 s ago\)"):
        Staging(tmp_path, "test-live").open(keep_checkpoint=False, discard_checkpoint=False)
    other = Staging(tmp_path, "test-other")
    with caplog.at_level("INFO"):
        other.open(keep_checkpoint=False, discard_checkpoint=False)
    assert (root / "test-live").is_dir() and "belongs to a live run on another node (host node-7" in caplog.text
    assert not (root / "test-dead").exists() and not liveness.path(root, "test-dead").exists()
    other.close(keep=False)
    taken = Staging(tmp_path, "test-live")  # its record goes stale: the folder can be taken
    liveness.path(root, "test-live").write_text(json.dumps({"host": "node-7", "pid": 1, "started": 0, "heartbeat": 0}))
    taken.open(keep_checkpoint=False, discard_checkpoint=False)
    assert liveness.read(liveness.path(root, "test-live"))["host"] == socket.gethostname()
    taken.close(keep=False)


def test_merging_parts_across_file_systems_copies_what_it_cannot_link(demo, reference, monkeypatch):
    """--merge_parts hard-links the parts' individual maps; where the file system cannot (EXDEV: another file
    system, EPERM...), it copies them: the same files."""
    import errno

    for part in (0, 1):
        assert main(["maps", "test", "parts", *OPTIONS, "--num_parts", "2", "--part_id", str(part)]) == 0

    def no_links(source, destination):
        raise OSError(errno.EXDEV, "Invalid cross-device link", str(source))

    monkeypatch.setattr(os, "link", no_links)
    assert main(["maps", "test", "parts", *OPTIONS, "--num_parts", "2", "--merge_parts"]) == 0
    merged = maps_of(demo, "parts")
    for key, value in reference.items():
        if "mean_" in key or "std_" in key:  # parts add two sums: summation order (tests/test_distributed.py)
            assert (merged[key] - value).abs().max() <= 1e-6 * value.abs().max(), key
        else:
            assert torch.equal(merged[key], value), key


def test_ctrl_c_while_folders_are_published_keeps_the_checkpoint_and_says_so(demo, reference, monkeypatch, capsys):
    """Ctrl-C after the first folder is in place: the run stops before the next one, says where its progress is
    (not "no partial result", which a folder in place would belie), and --continue publishes the rest."""
    real = Staging.publish

    def interrupted(staged, final, replace):
        real(staged, final, replace)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(Staging, "publish", staticmethod(interrupted))
    assert main(["maps", "test", "ctrlc", *OPTIONS]) == 128 + signal.SIGINT
    err = capsys.readouterr().err
    assert "stopped by SIGINT; the progress was checkpointed in" in err and "no partial result" not in err
    first_published_then_continued(demo, reference, monkeypatch, real, "ctrlc")
