"""A run's folder inside the MAPS (`.maps-interpret-staging/<key>`): interpretation folders being built, then
moved into place whole, and the run's checkpoints and finished parts, which a later run resumes or merges."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Optional

from . import liveness
from .writers import remove_temporaries, unlink_quietly

log = logging.getLogger(__name__)

STAGING_DIRNAME = ".maps-interpret-staging"
CHECKPOINT_PREFIX = "checkpoint"
PART_MARKER = "part.json"


class Staging:
    """A run's folder inside the MAPS, `.maps-interpret-staging/<key>`: interpretation folders being built
    (moved into place whole once computed) and the run's checkpoints (`--continue`).

    One run owns a key at a time: it holds an flock on `<key>.lock` beside the folder (released by the
    kernel when the process dies, however it dies) and keeps a liveness record `<key>.alive` (liveness.py: on
    a cluster file system an flock may be invisible from another node). On opening, folders of other keys that
    nobody holds, whose record names no live run on another host, and that hold no checkpoint are what killed
    runs left: they are removed. A folder with a checkpoint is
    kept until a run `--continue`s it or discards it (`--overwrite_name`). The run decides at the end
    whether its folder goes (success, error) or stays (interrupted with a checkpoint, finished part).
    Other ranks of a torchrun job write into the same folder (same key) without opening it.
    """

    def __init__(self, maps_path: Path, key: str):
        self.root = Path(maps_path) / STAGING_DIRNAME
        self.key = key
        self.run_dir = self.root / key
        self._lock = None
        self._heartbeat: Optional[liveness.Heartbeat] = None

    def open(self, keep_checkpoint: bool, discard_checkpoint: bool) -> bool:
        """Takes the key, clears what killed runs left; returns whether the run folder holds a checkpoint
        (kept when `keep_checkpoint`, removed when `discard_checkpoint`, else refused)."""
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        handle = open(self.root / f"{self.key}.lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise FileExistsError(f"{self.run_dir} is in use by another run of the same data group and NAME; "
                                  "wait for it to finish, or choose another NAME") from None
        alive = liveness.path(self.root, self.key)
        record = liveness.read(alive)
        if liveness.alive_elsewhere(record):  # the flock of a run on another node may not be visible here
            handle.close()
            raise FileExistsError(
                f"{self.run_dir} is in use by a run on another node ({liveness.describe(record)}); wait for it to "
                f"finish, or choose another NAME (if that run is dead, {alive} goes stale "
                f"{liveness.STALE / 60:.0f} minutes after its last heartbeat; remove it to go on at once)")
        self._lock = handle
        remove_temporaries(self.root, alive.name)  # a killed run's unfinished record
        self._heartbeat = liveness.Heartbeat(alive)
        self._remove_abandoned()
        resumable = has_checkpoint(self.run_dir)
        if resumable and not keep_checkpoint:
            if not discard_checkpoint:
                self.release()
                raise FileExistsError(
                    f"an interrupted run left a checkpoint in {self.run_dir}: add --continue to resume it, or "
                    "--overwrite_name to discard it and start over")
            log.info("discarding the checkpoint of an interrupted run in %s (--overwrite_name)", self.run_dir)
        if self.run_dir.exists() and not (resumable and keep_checkpoint):
            if not resumable:
                log.info("removing %s, left by a run that was killed", self.run_dir)
            shutil.rmtree(self.run_dir)
            resumable = False
        self.run_dir.mkdir(exist_ok=True)
        return resumable

    def _remove_abandoned(self) -> None:
        import fcntl

        for folder in sorted(self.root.iterdir()):
            if not folder.is_dir() or folder.name == self.key or folder.name.startswith("."):
                continue
            if has_checkpoint(folder):
                if (folder / PART_MARKER).is_file():
                    log.info("%s holds a finished part of a run (combine the parts with --merge_parts); left alone",
                             folder)
                else:
                    log.info("%s holds the checkpoint of an interrupted run (resume it with --continue); left alone",
                             folder)
                continue
            lock = self.root / f"{folder.name}.lock"
            if not lock.exists():  # a folder of an earlier version of maps-interpret: host-pid-time
                host, _, rest = folder.name.rpartition("-")[0].rpartition("-")
                if not (host == socket.gethostname() and rest.isdigit() and not _alive(int(rest))):
                    log.warning("%s is used by another run (or by a killed run on another host); it is left "
                                "alone", folder)
                    continue
                log.info("removing %s, left by a run that was killed", folder)
                shutil.rmtree(folder, ignore_errors=True)
                continue
            with open(lock, "a+") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # a live run
                record = liveness.read(liveness.path(self.root, folder.name))
                if liveness.alive_elsewhere(record):
                    log.info("%s belongs to a live run on another node (%s); left alone", folder,
                             liveness.describe(record))
                    continue
                log.info("removing %s, left by a run that was killed", folder)
                shutil.rmtree(folder, ignore_errors=True)
                unlink_quietly(liveness.path(self.root, folder.name))

    def close(self, keep: bool) -> None:
        """Removes the run folder unless `keep`; releases the key."""
        if not keep:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            unlink_quietly(self.root / f"{self.key}.lock")
        self.release()
        try:
            self.root.rmdir()  # only when no other run uses it
        except OSError:
            pass

    def release(self) -> None:
        """Gives the key back: the liveness record goes (the run no longer lives), then the lock."""
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def job_dir(self, pass_index: int, job_index: int) -> Path:
        path = self.run_dir / f"pass-{pass_index}-job-{job_index}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @staticmethod
    def publish(staged: Path, final: Path, replace: bool) -> None:
        """Moves a finished folder to `final`. An existing `final` is replaced only if `replace`, and only now
        that its successor is complete; if the successor cannot be put in place, the old folder is put back.
        Old folders that a killed run had set aside (`.<name>.replaced-*`) go once a successor is in place."""
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            if not replace:
                raise FileExistsError(f"{final} appeared during the run; it was left untouched")
            old = final.with_name(f".{final.name}.replaced-{os.getpid()}-{time.monotonic_ns()}")
            os.replace(final, old)
            try:
                os.replace(staged, final)
            except BaseException:
                os.replace(old, final)
                raise
        else:
            os.replace(staged, final)
        for old in final.parent.glob(f".{final.name}.replaced-*"):
            shutil.rmtree(old, ignore_errors=True)


def has_checkpoint(folder: Path) -> bool:
    """Whether a run folder holds something a later run needs: a checkpoint, or a finished part."""
    return folder.is_dir() and (any(folder.glob(f"{CHECKPOINT_PREFIX}-*.json")) or (folder / PART_MARKER).is_file())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
