"""Every file maps-interpret writes into a MAPS is written atomically: data goes to a temporary file in the
destination folder, then `os.replace` puts it in place. An interrupted run never leaves a truncated file.
Interpretation folders are built in a staging area inside the MAPS (staging.py) and moved into place whole."""

from __future__ import annotations

import json
import os
import queue
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        unlink_quietly(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=4) + "\n")


def write_tsv(path: Path, columns: list[str], rows: Iterable[dict[str, str]]) -> None:
    """A TSV written by pandas as ClinicaDL writes a group's data.tsv (tables.tsv_text), atomically."""
    from ..tables import tsv_text

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
        unlink_quietly(tmp)
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
        unlink_quietly(tmp)
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


TEMPORARY = (".tmp", ".tmp.nii", ".tmp.nii.gz")  # how the temporary files above end (their names start with ".")


def is_temporary(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(TEMPORARY)


def outputs(folder: Path, but: str) -> list[str]:
    """The files of a folder of results, as interpret.json lists them: all but `but` and the temporary files a
    killed writer may have left (they go before the folder is published)."""
    return sorted(p.name for p in Path(folder).iterdir() if p.name != but and not is_temporary(p))


def remove_temporaries(folder: Path, name: str = "") -> None:
    """The temporary files a killed writer left in `folder` (those of file `name` only, when given): before a
    staged folder is published, or when a run takes its key again."""
    for path in Path(folder).glob(f".{name}*"):
        if path.is_file() and is_temporary(path):
            unlink_quietly(path)


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


def unlink_quietly(path) -> None:
    """Removes a file if it is there (a temporary, a record): nothing to do if it is not, or cannot be."""
    try:
        os.unlink(path)
    except OSError:
        pass
