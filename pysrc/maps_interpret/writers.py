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
    """A TSV written by pandas as ClinicaDL writes a group's data.tsv (tables.tsv_text), atomically."""
    from .tables import tsv_text

    atomic_write_text(path, tsv_text(columns, rows))


def save_tensor(tensor, path: Path) -> None:
    """A `.pt` holding exactly this tensor: cloned so a view never drags its whole batch along."""
    import torch

    save_state(tensor.detach().to("cpu").clone(memory_format=torch.contiguous_format), path)


def save_state(state, path: Path) -> None:
    """Any torch-serialisable object (a tensor, a dict of CPU tensors), streamed to a temporary file of the
    destination folder, then renamed."""
    import torch

    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def save_nifti(volume, path: Path, affine=None, header=None) -> None:
    """A float32 NIfTI-1 file (gzip when the name ends in .gz) of `volume` (a numpy array), with `affine` as
    both its sform and qform (identity by default) and the rest of `header` (a source image's) if given."""
    import nibabel as nib
    import numpy as np

    path = Path(path)
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    header = header.copy() if header is not None else None
    image = nib.Nifti1Image(np.asarray(volume, dtype=np.float32), affine, header)
    image.set_data_dtype(np.float32)
    image.header.set_slope_inter(1.0, 0.0)  # a source's scaling would rescale the map's values
    image.header["cal_min"] = image.header["cal_max"] = 0  # nor its display window clip them
    if header is not None:  # keep the source's codes (e.g. MNI-152 space) for the new affine
        image.set_sform(affine, int(header["sform_code"]) or 2)
        image.set_qform(affine, int(header["qform_code"]) or 1)
    suffix = ".nii.gz" if path.name.endswith(".gz") else ".nii"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    try:
        nib.save(image, tmp)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def save_map(map_, stem: Path, nifti: bool, placement=None) -> None:
    """A map as `<stem>.pt` and, with `nifti`, `<stem>.nii.gz`: in its source image's space with the
    `placement` (space.Placement), else the layout ClinicaDL users know with an identity affine."""
    stem = Path(stem)
    save_tensor(map_, stem.with_name(stem.name + ".pt"))
    if nifti:
        if placement is None:
            volume, affine, header = nifti_array(map_).numpy(), None, None
        else:
            (volume, affine), header = placement.nifti(map_), placement.source.header
        save_nifti(volume, stem.with_name(stem.name + ".nii.gz"), affine, header)


def nifti_array(map_):
    """A map (C, *spatial) as NIfTI data without a placement: the spatial axes first; several channels (rgb
    slices) go to the 4th axis, after a singleton z for 2D maps."""
    if map_.shape[0] == 1:
        return map_[0]
    channels_last = map_.movedim(0, -1)
    return channels_last.unsqueeze(2) if map_.dim() == 3 else channels_last


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
    """A run's folder inside the MAPS, `.maps-interpret-staging/<key>`: interpretation folders being built
    (moved into place whole once computed) and the run's checkpoints (`--continue`).

    One run owns a key at a time: it holds an flock on `<key>.lock` beside the folder (released by the
    kernel when the process dies, however it dies). On opening, folders of other keys that nobody holds
    and that hold no checkpoint are what killed runs left: they are removed. A folder with a checkpoint is
    kept until a run `--continue`s it or discards it (`--overwrite_name`). The run decides at the end
    whether its folder goes (success, error) or stays (interrupted with a checkpoint, finished part).
    Other ranks of a torchrun job write into the same folder (same key) without opening it.
    """

    def __init__(self, maps_path: Path, key: str):
        self.root = Path(maps_path) / STAGING_DIRNAME
        self.key = key
        self.run_dir = self.root / key
        self._lock = None

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
        self._lock = handle
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
                log.info("removing %s, left by a run that was killed", folder)
                shutil.rmtree(folder, ignore_errors=True)

    def close(self, keep: bool) -> None:
        """Removes the run folder unless `keep`; releases the key."""
        if not keep:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            _unlink_quietly(str(self.root / f"{self.key}.lock"))
        self.release()
        try:
            self.root.rmdir()  # only when no other run uses it
        except OSError:
            pass

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def job_dir(self, pass_index: int, job_index: int) -> Path:
        path = self.run_dir / f"pass-{pass_index}-job-{job_index}"
        path.mkdir(parents=True, exist_ok=True)
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


CHECKPOINT_PREFIX = "checkpoint"
PART_MARKER = "part.json"


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


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
