"""Every write into a MAPS goes through here, and every write is atomic: data goes to a temporary file
in the destination folder, then `os.replace` puts it in place. An interrupted run never leaves a
truncated file. Interpretation folders are built in a staging area inside the MAPS (same file system)
and moved into place whole when their computation has finished."""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

log = logging.getLogger(__name__)

STAGING_DIRNAME = ".maps-interpret-staging"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=4) + "\n")


def write_tsv(path: Path, columns: list[str], rows: Iterable[dict[str, str]]) -> None:
    lines = ["\t".join(columns)]
    lines += ["\t".join(str(row.get(column, "")) for column in columns) for row in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")


def save_tensor(tensor, path: Path) -> None:
    """A `.pt` holding exactly this tensor: cloned so a view never drags its whole batch along; streamed
    to a temporary file of the destination folder, then renamed."""
    import torch

    path = Path(path)
    compact = tensor.detach().to("cpu").clone(memory_format=torch.contiguous_format)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(compact, handle)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def save_nifti(volume, path: Path, affine=None) -> None:
    """A float32 NIfTI-1 file (gzip when the name ends in .gz) of `volume` (a numpy array)."""
    import nibabel as nib
    import numpy as np

    path = Path(path)
    image = nib.Nifti1Image(np.asarray(volume, dtype=np.float32),
                            np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64))
    suffix = ".nii.gz" if path.name.endswith(".gz") else ".nii"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    try:
        nib.save(image, tmp)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def remove_tree(path: Path) -> None:
    """Removes a folder of results: first renamed out of sight (atomic), then deleted."""
    path = Path(path)
    if not path.exists():
        return
    trash = path.with_name(f".{path.name}.removing-{os.getpid()}-{time.monotonic_ns()}")
    os.replace(path, trash)
    shutil.rmtree(trash)


class BackgroundWriter:
    """Writes files on one background thread while the next batch computes.

    At most `depth` writes wait (bounded memory: the caller blocks when the queue is full). A failed write
    is raised in the caller's thread at the next `submit` or at `close`; after a failure the remaining
    writes are dropped, never left waiting, so nothing hangs.
    """

    _STOP = object()

    def __init__(self, depth: int = 8):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="maps-interpret-writer", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            task = self._queue.get()
            if task is self._STOP:
                return
            if self._error is None:
                function, args = task
                try:
                    function(*args)
                except BaseException as error:  # reported to the caller, which stops the run
                    self._error = error

    def _raise_pending(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def submit(self, function: Callable, *args) -> None:
        self._raise_pending()
        self._queue.put((function, args))

    def close(self) -> None:
        """Waits for every queued write, then raises the first failure, if any."""
        self._queue.put(self._STOP)
        self._thread.join()
        self._raise_pending()

    def __enter__(self) -> "BackgroundWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # the run failed already: stop writing, keep the original error
            self._error = self._error or exc
            self._queue.put(self._STOP)
            self._thread.join()


class Staging:
    """Temporary interpretation folders inside the MAPS, moved into place on success.

    A run that fails or is interrupted removes its staging folder; only a killed process leaves one, named
    after host, pid and time, which a later run on the same host removes once that pid is gone.
    """

    def __init__(self, maps_path: Path):
        self.root = Path(maps_path) / STAGING_DIRNAME
        self.run_dir = self.root / f"{socket.gethostname()}-{os.getpid()}-{time.strftime('%Y%m%dT%H%M%S')}"
        self._count = 0

    def __enter__(self) -> "Staging":
        for folder in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            host, _, rest = folder.name.rpartition("-")[0].rpartition("-")
            pid = int(rest) if rest.isdigit() else None
            if host == socket.gethostname() and pid is not None and not _alive(pid):
                log.info("removing %s, left by a run that was killed", folder)
                shutil.rmtree(folder, ignore_errors=True)
            else:
                log.warning("%s is used by another run (or by a killed run on another host); it is left alone",
                            folder)
        self.run_dir.mkdir(parents=True)
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.run_dir, ignore_errors=True)
        try:
            self.root.rmdir()  # only when no other run uses it
        except OSError:
            pass

    def new_dir(self) -> Path:
        self._count += 1
        path = self.run_dir / f"job-{self._count}"
        path.mkdir()
        return path

    @staticmethod
    def publish(staged: Path, final: Path, replace: bool) -> None:
        """Moves a finished folder to `final`. An existing `final` is replaced only if `replace`,
        and only now that its successor is complete."""
        final.parent.mkdir(parents=True, exist_ok=True)
        if not final.exists():
            os.replace(staged, final)
            return
        if not replace:
            raise FileExistsError(f"{final} appeared during the run; it was left untouched")
        old = final.with_name(f".{final.name}.replaced-{os.getpid()}-{time.monotonic_ns()}")
        os.replace(final, old)
        os.replace(staged, final)
        shutil.rmtree(old)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
