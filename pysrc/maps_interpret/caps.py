"""CAPS folders: where each session's tensor lives, and the dataset that feeds the engine.

Each session's image tensor is read once; `elements.py` cuts it into the elements of the MAPS' mode, each
preprocessed by `transforms.Preprocess`; `rebatch` forms ClinicaDL's session-major batches, `prefetch`
forms them ahead in a thread (GPU runs).
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from queue import Empty, Full, Queue
from typing import Iterable, Iterator, Optional, Sequence, TypeVar

import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from .errors import MapsInterpretError, first_line
from .transforms import Preprocess

T = TypeVar("T")
log = logging.getLogger("maps_interpret")
SHARED_MEMORY = Path("/dev/shm")
PREFETCH_FACTOR = 2  # sessions each loader worker prepares ahead (torch's default)

# CAPS sub-folder of each preprocessing under deeplearning_prepare_data/<mode>_based/.
PREPROCESSING_FOLDERS = {"t1-linear": "t1_linear", "flair-linear": "flair_linear", "pet-linear": "pet_linear",
                         "dwi-dti": "dwi_dti", "custom": "custom"}


def check_caps(caps: Path) -> Path:
    """ClinicaDL's sanity check: a CAPS folder exists and is not a BIDS folder."""
    if not caps.is_dir():
        raise MapsInterpretError(f"CAPS folder {caps} does not exist")
    bids_like = sorted(p.name for p in caps.iterdir() if p.name.startswith("sub-"))
    if bids_like:
        raise MapsInterpretError(f"{caps} has sub-* folders at its root ({', '.join(bids_like[:3])}): this looks "
                                 "like a BIDS folder; a CAPS keeps subjects under subjects/")
    return caps


def _case_insensitive(pattern: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in pattern)


def _find(folder: Path, pattern: str) -> list[Path]:
    return sorted(folder.glob("**/" + _case_insensitive(pattern))) if folder.is_dir() else []


def image_tensor_path(caps: Path, participant: str, session: str, prep: dict) -> Path:
    """The `.pt` tensor of one session: next to the NIfTI found by the MAPS' file pattern in
    deeplearning_prepare_data/image_based/, or, without NIfTI, the `.pt` matching the same pattern."""
    try:
        pattern = prep["file_type"]["pattern"]
    except (KeyError, TypeError):
        raise MapsInterpretError("maps.json: preprocessing_dict.file_type.pattern is missing; "
                                 "the MAPS does not say which CAPS files it was trained on") from None
    session_dir = caps / "subjects" / participant / session
    niftis = _find(session_dir, pattern)
    if len(niftis) > 1:
        raise MapsInterpretError(f"{session_dir}: {len(niftis)} files match {pattern} "
                                 f"({', '.join(p.name for p in niftis[:3])}); keep one")
    if niftis:
        folder = PREPROCESSING_FOLDERS.get(prep.get("preprocessing"), prep.get("preprocessing", ""))
        path = (session_dir / "deeplearning_prepare_data" / "image_based" / folder
                / niftis[0].name.replace(".nii.gz", ".pt"))
        if not path.is_file():
            raise MapsInterpretError(f"{path} does not exist: extract the tensors with `clinicadl prepare-data "
                                     f"image {caps} {prep.get('preprocessing')}`")
        return path
    tensor_pattern = pattern.replace(".nii.gz", ".pt")
    tensors = _find(session_dir, tensor_pattern)
    if len(tensors) == 1:
        return tensors[0]
    if len(tensors) > 1:
        raise MapsInterpretError(f"{session_dir}: {len(tensors)} tensors match {tensor_pattern} "
                                 f"({', '.join(p.name for p in tensors[:3])}); keep one")
    raise MapsInterpretError(f"no image of {participant} {session} in {caps}: nothing matches {pattern} "
                             f"or {tensor_pattern} under {session_dir}")


@dataclass(frozen=True)
class Session:
    participant_id: str
    session_id: str
    tensor_path: Path  # the session's image tensor (element files, if any, are named after it)


def find_sessions(caps: dict[str, Path], rows: Sequence[dict], prep: dict) -> list[Session]:
    """Resolves every session's image tensor before anything is computed or written. `caps` maps cohort
    names to CAPS folders ({"single": caps} outside multi-cohort groups)."""
    for folder in caps.values():
        check_caps(folder)
    sessions = []
    for row in rows:
        cohort = row.get("cohort") or "single"
        if cohort not in caps:
            raise MapsInterpretError(f"{row['participant_id']} {row['session_id']} belongs to cohort {cohort!r}, "
                                     f"which the group's CAPS list does not name ({', '.join(sorted(caps))})")
        path = image_tensor_path(caps[cohort], row["participant_id"], row["session_id"], prep)
        sessions.append(Session(row["participant_id"], row["session_id"], path))
    return sessions


def load_tensor(path: Path, mmap: bool = False) -> torch.Tensor:
    try:
        value = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # unreadable, truncated, or a pickle that is not plain tensors
        raise MapsInterpretError(f"cannot read tensor {path}: {type(error).__name__}: {first_line(error)}") from None
    if not isinstance(value, torch.Tensor):
        raise MapsInterpretError(f"{path} holds a {type(value).__name__}, not a tensor")
    if not value.is_floating_point():
        raise MapsInterpretError(f"{path} holds {value.dtype} values; expected floating-point image intensities")
    return value if mmap else value.to(torch.float32)


def check_element(x: torch.Tensor, input_size: tuple, path: Path) -> None:
    if tuple(x.shape) != input_size:
        raise MapsInterpretError(f"{path}: after preprocessing the element has shape {tuple(x.shape)} but the "
                                 f"model was trained on {input_size} (maps.json input_size)")
    if not torch.isfinite(torch.stack(torch.aminmax(x))).all():  # min/max propagate NaN; inf shows at an end
        raise MapsInterpretError(f"{path}: the preprocessed element holds NaN or infinite values (a constant "
                                 "image cannot be min-max normalised); exclude this session from the TSV")


@dataclass
class SessionItem:
    """All elements of one session, preprocessed: (E, C, *spatial), or the error that prevented it."""

    elements: Optional[torch.Tensor]
    element_ids: list[int]
    session_index: int
    error: Optional[str] = None


class SessionDataset(Dataset):
    """One item per session (its image is read once, whatever the number of elements); `rebatch` cuts
    the stream of elements into batches exactly as ClinicaDL's flat, session-major dataset does."""

    def __init__(self, sessions: Sequence[Session], layout, preprocess: Preprocess, input_size: Sequence[int],
                 element_ids: Sequence[int]):
        self.sessions = list(sessions)
        self.layout = layout
        self.preprocess = preprocess
        self.input_size = tuple(input_size)
        self.element_ids = list(element_ids)

    def __len__(self) -> int:
        return len(self.sessions)

    @property
    def item_bytes(self) -> int:
        """Size of one session's preprocessed elements (float32)."""
        return 4 * len(self.element_ids) * math.prod(self.input_size)

    def __getitem__(self, index: int) -> SessionItem:
        session = self.sessions[index]
        try:
            # In a loader worker the result goes to the main process through shared memory: allocating it
            # there from the start saves the copy torch would make when sending it (one per image).
            out = torch.empty((len(self.element_ids), *self.input_size))
            if get_worker_info() is not None:
                out.share_memory_()
            for target, (element, path) in zip(out, self._raw_elements(session)):
                value = self.preprocess(element, out=target)
                check_element(value, self.input_size, path)
                if value is not target:
                    target.copy_(value)
            return SessionItem(out, list(self.element_ids), index)
        except MapsInterpretError as error:
            return SessionItem(None, [], index, str(error))

    def _raw_elements(self, session: Session) -> Iterator[tuple[torch.Tensor, Path]]:
        """Each element of the session before preprocessing, with the file it comes from."""
        if self.layout.prepare_dl:
            for element in self.element_ids:
                path = self.layout.element_file(session.tensor_path, element)
                if not path.is_file():
                    raise MapsInterpretError(f"{path} does not exist (maps.json says prepare_dl: true): extract "
                                             f"the {self.layout.mode} tensors with `clinicadl prepare-data`")
                yield load_tensor(path), path
            return
        image = load_tensor(session.tensor_path)
        ids = self.layout.element_ids(tuple(image.shape))
        if ids != self.element_ids:
            raise MapsInterpretError(f"{session.tensor_path}: image of shape {tuple(image.shape)} gives "
                                     f"{len(ids)} {self.layout.mode}(s), the first image of the group "
                                     f"{len(self.element_ids)}; all images must have the same size")
        for element in ids:
            yield self.layout.extract(image, element), session.tensor_path


def shared_memory_free(path: Path = SHARED_MEMORY) -> Optional[int]:
    """Bytes free in the shared-memory file system, None where there is none to measure."""
    try:
        stat = os.statvfs(path)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def session_items(dataset: SessionDataset, n_proc: int) -> Iterator[SessionItem]:
    """The sessions in order, read by `n_proc` loader processes that hand each session over in shared memory;
    by `n_proc` threads instead when /dev/shm cannot hold what the processes keep in flight (64 MB in a
    container started without --shm-size or --ipc=host: torch would die there with a bus error); in this
    thread when `n_proc` is 0. Reading a tensor file and normalising it release the GIL, so threads still
    overlap the engine's work."""
    if n_proc <= 0:
        return (dataset[index] for index in range(len(dataset)))
    in_flight = (n_proc * PREFETCH_FACTOR + 2) * dataset.item_bytes  # workers' queue + what the main process holds
    free = shared_memory_free()
    if free is not None and in_flight > 0.8 * free:
        log.info("%s has %d MiB free, too little for %d loader process(es) (about %d MiB in flight): reading in "
                 "%d thread(s) instead; give a container --shm-size=1g or --ipc=host to use processes",
                 SHARED_MEMORY, free >> 20, n_proc, in_flight >> 20, n_proc)
        return _read_in_threads(dataset, n_proc, depth=n_proc * PREFETCH_FACTOR)
    return iter(DataLoader(dataset, batch_size=None, shuffle=False, num_workers=n_proc,
                           prefetch_factor=PREFETCH_FACTOR))


def _read_in_threads(dataset: SessionDataset, threads: int, depth: int) -> Iterator[SessionItem]:
    pool = ThreadPoolExecutor(threads, thread_name_prefix="maps-interpret-read")
    pending: deque = deque()
    try:
        for index in range(len(dataset)):
            if len(pending) >= depth:
                yield pending.popleft().result()
            pending.append(pool.submit(dataset.__getitem__, index))
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class Batch:
    images: torch.Tensor
    element_ids: list[int]
    session_index: list[int]


def rebatch(items: Iterable[SessionItem], batch_size: int, pin: bool = False) -> Iterator[Batch]:
    """Batches of `batch_size` elements over the session-major stream (the last one may be short); a
    session that failed to load raises its one-line error here, in the main process."""
    pending: list[tuple[torch.Tensor, int, int]] = []

    def emit(chunk):
        first = chunk[0][0]
        out = torch.empty((len(chunk), *first.shape), dtype=first.dtype, pin_memory=pin)
        torch.stack([element for element, _, _ in chunk], out=out)
        return Batch(out, [e for _, e, _ in chunk], [i for _, _, i in chunk])

    for item in items:
        if item.error is not None:
            raise MapsInterpretError(item.error)
        pending.extend(zip(item.elements.unbind(0), item.element_ids, [item.session_index] * len(item.element_ids)))
        while len(pending) >= batch_size:
            yield emit(pending[:batch_size])
            pending = pending[batch_size:]
    if pending:
        yield emit(pending)


def prefetch(items: Iterable[T], depth: int) -> Iterator[T]:
    """`items`, produced up to `depth` ahead by a background thread; depth 0 is `items` itself. On a GPU the
    main thread only queues device work, so receiving the workers' tensors and copying them into pinned
    batches (GIL released) overlaps the device's compute instead of delaying it. Errors of the producer are
    raised here, in order; closing this generator early stops the producer after its current item. Pass an
    iterator made in the calling thread (`iter(loader)`): a DataLoader's workers must start from the main
    thread, where torch watches them for crashes."""
    if depth <= 0:
        yield from items
        return
    queue: Queue = Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                queue.put(entry, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((end, None))
        except BaseException as error:  # handed to the consumer, raised there
            put((None, error))

    thread = threading.Thread(target=produce, name="maps-interpret-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            try:
                item, error = queue.get(timeout=1.0)
            except Empty:
                if thread.is_alive():
                    continue
                raise RuntimeError("the batch prefetching thread ended without a result") from None
            if error is not None:
                raise error
            if item is end:
                return
            yield item
    finally:
        # The producer stops at its next item; not waiting for it keeps Ctrl-C and SIGTERM prompt (a scheduler
        # kills soon after SIGTERM, and the staging folder must be removed first). It is a daemon thread.
        stop.set()
        thread.join(timeout=1.0)
