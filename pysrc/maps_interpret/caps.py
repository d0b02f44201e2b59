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
from contextlib import nullcontext
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from queue import Empty, Full, Queue
from typing import Iterable, Iterator, Optional, Sequence, TypeVar

import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from .errors import MapsInterpretError, first_line
from .transforms import Preprocess, memory_order

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
    """The `.pt` tensor of one session (see `session_files`)."""
    return session_files(caps, participant, session, prep)[0]


def session_files(caps: Path, participant: str, session: str, prep: dict) -> tuple[Path, Optional[Path]]:
    """The `.pt` tensor of one session and the NIfTI image it was made from (None without one): the tensor
    is next to the NIfTI found by the MAPS' file pattern, in deeplearning_prepare_data/image_based/, or,
    without NIfTI, the `.pt` matching the same pattern. The NIfTI gives the maps their space (space.py)."""
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
        return path, niftis[0]
    tensor_pattern = pattern.replace(".nii.gz", ".pt")
    tensors = _find(session_dir, tensor_pattern)
    if len(tensors) == 1:
        return tensors[0], None
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
    label: Optional[str] = None  # its value in the group's label column (maps.json `label`), when asked for
    group: Optional[str] = None  # its value in the --group_by column, when asked for
    source_image: Optional[Path] = None  # the NIfTI the tensor was made from, if the CAPS still has it


def find_sessions(caps: dict[str, Path], rows: Sequence[dict], prep: dict,
                  label: Optional[str] = None, group: Optional[str] = None) -> list[Session]:
    """Resolves every session's image tensor before anything is computed or written. `caps` maps cohort
    names to CAPS folders ({"single": caps} outside multi-cohort groups); `label` names the column whose
    value each session carries (--target_node label)."""
    for folder in caps.values():
        check_caps(folder)
    sessions = []
    for row in rows:
        cohort = row.get("cohort") or "single"
        if cohort not in caps:
            raise MapsInterpretError(f"{row['participant_id']} {row['session_id']} belongs to cohort {cohort!r}, "
                                     f"which the group's CAPS list does not name ({', '.join(sorted(caps))})")
        path, nifti = session_files(caps[cohort], row["participant_id"], row["session_id"], prep)
        sessions.append(Session(row["participant_id"], row["session_id"], path,
                                None if label is None else row.get(label), None if group is None else row.get(group),
                                nifti))
    return sessions


def load_tensor(path: Path, mmap: bool = False) -> torch.Tensor:
    """The tensor of a `.pt` file, float32; with `mmap`, a view of the file's pages in whatever float dtype it
    holds (no read into a buffer of its own: the first copy out of it is the only one)."""
    try:
        try:
            value = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError as error:
            if not (mmap and "mmap" in str(error)):
                raise
            value, mmap = torch.load(path, map_location="cpu", weights_only=True), False  # legacy format
    except Exception as error:  # unreadable, truncated, or a pickle that is not plain tensors
        raise MapsInterpretError(f"cannot read tensor {path}: {type(error).__name__}: {first_line(error)}") from None
    if not isinstance(value, torch.Tensor):
        raise MapsInterpretError(f"{path} holds a {type(value).__name__}, not a tensor")
    if not value.is_floating_point():
        raise MapsInterpretError(f"{path} holds {value.dtype} values; expected floating-point image intensities")
    return value if mmap else value.to(torch.float32)


def shape_message(path: Path, shape: tuple, input_size: tuple) -> str:
    return (f"{path}: after preprocessing the element has shape {shape} but the model was trained on "
            f"{input_size} (maps.json input_size)")


def non_finite_message(path: Path) -> str:
    return (f"{path}: the preprocessed element holds NaN or infinite values (a constant image cannot be min-max "
            "normalised); exclude this session from the TSV")


def storage_order(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """`x` (N, ...)'s values as they lie in memory, as a contiguous tensor whose leading axis is still N (so
    that items concatenate along it), and the `order` with which `stored.permute(order)` is `x` again; a
    contiguous copy and the identity when the strides are no permutation of a contiguous layout. A GPU undoes
    the permutation far faster than a CPU core."""
    perm = memory_order(x)
    stored = x.permute(perm)
    if not stored.is_contiguous():
        return x.contiguous(), tuple(range(x.dim()))
    order = [0] * x.dim()
    for position, axis in enumerate(perm):
        order[axis] = position
    return stored, tuple(order)


@dataclass
class SessionItem:
    """One session: its preprocessed elements (E, C, *spatial); or, with `raw`, what was read for them (the
    image as (1, C, *spatial), or the E pre-extracted elements) in the order of the file's memory (see
    `order`), left to `DevicePreprocess`; or the error that prevented either."""

    elements: Optional[torch.Tensor]
    element_ids: list[int]
    session_index: int
    error: Optional[str] = None
    raw: bool = False
    order: tuple[int, ...] = ()  # raw items: `elements` is stored in memory order; permute(order) gives (N, C, ...)


class SessionDataset(Dataset):
    """One item per session (its image is read once, whatever the number of elements); `rebatch` cuts
    the stream of elements into batches exactly as ClinicaDL's flat, session-major dataset does.

    With `raw`, items hold the tensors as read (made contiguous) and the cuts, checks and normalisation
    happen later on the compute device (`DevicePreprocess`); otherwise here, in the loader worker."""

    def __init__(self, sessions: Sequence[Session], layout, preprocess: Preprocess, input_size: Sequence[int],
                 element_ids: Sequence[int], raw: bool = False):
        self.sessions = list(sessions)
        self.layout = layout
        self.preprocess = preprocess
        self.input_size = tuple(input_size)
        self.element_ids = list(element_ids)
        self.raw = raw

    def __len__(self) -> int:
        return len(self.sessions)

    @property
    def item_bytes(self) -> int:
        """Size of what one item hands over (float32): the preprocessed elements, or what was read."""
        elements = 4 * len(self.element_ids) * math.prod(self.input_size)
        if not self.raw or self.layout.prepare_dl or not self.sessions:
            return elements
        image = load_tensor(self.sessions[0].tensor_path, mmap=True)  # the header only
        return max(elements, 4 * image.numel())

    def __getitem__(self, index: int) -> SessionItem:
        return self.read_into(index)

    def read_into(self, index: int, out: Optional[torch.Tensor] = None) -> SessionItem:
        """Item `index`; its preprocessed elements are written into `out` (E, *input_size) when given (a
        batch's rows: `batches_in_threads`), else into a new tensor."""
        session = self.sessions[index]
        # In a loader worker the result goes to the main process through shared memory: writing it there
        # from the start saves the copy torch would make when sending it (one per image).
        shared = get_worker_info() is not None and out is None
        try:
            read, paths = self._read(session)
            if self.raw:  # a plain copy out of the file's pages: the transposition is left to the device
                stored, order = storage_order(read)
                out = torch.empty(stored.shape)
                if shared:
                    out.share_memory_()
                return SessionItem(out.copy_(stored), list(self.element_ids), index, raw=True, order=order)
            elements = read if self.layout.prepare_dl else self.layout.cut(read)
            shape = self.preprocess.output_shape(tuple(elements.shape[1:]))
            if shape != self.input_size:
                raise MapsInterpretError(shape_message(paths[0], shape, self.input_size))
            if out is None:
                out = torch.empty((len(self.element_ids), *self.input_size))
                if shared:
                    out.share_memory_()
            # Straight from the file's pages into `out`, in one pass (whatever the file's layout).
            values, bad = self.preprocess.batch(elements, out=out)
            if bool(bad.any()):
                raise MapsInterpretError(non_finite_message(paths[int(bad.nonzero()[0]) % len(paths)]))
            return SessionItem(values, list(self.element_ids), index)
        except MapsInterpretError as error:
            return SessionItem(None, [], index, str(error))

    def _read(self, session: Session) -> tuple[torch.Tensor, list[Path]]:
        """The session's image as (1, C, *spatial), or its pre-extracted elements (E, C, *spatial), with the
        file(s) they come from."""
        if self.layout.prepare_dl:
            paths, tensors = [], []
            for element in self.element_ids:
                path = self.layout.element_file(session.tensor_path, element)
                if not path.is_file():
                    raise MapsInterpretError(f"{path} does not exist (maps.json says prepare_dl: true): extract "
                                             f"the {self.layout.mode} tensors with `clinicadl prepare-data`")
                tensor = load_tensor(path, mmap=True)
                shape = self.preprocess.output_shape(tuple(tensor.shape))
                if shape != self.input_size:
                    raise MapsInterpretError(shape_message(path, shape, self.input_size))
                paths.append(path)
                tensors.append(tensor)
            return torch.stack(tensors).float(), paths
        image = load_tensor(session.tensor_path, mmap=True)
        if image.dtype != torch.float32:  # ClinicaDL's transforms run on float32 values
            image = image.float()
        ids = self.layout.element_ids(tuple(image.shape))
        if ids != self.element_ids:
            raise MapsInterpretError(f"{session.tensor_path}: image of shape {tuple(image.shape)} gives "
                                     f"{len(ids)} {self.layout.mode}(s), the first image of the group "
                                     f"{len(self.element_ids)}; all images must have the same size")
        return image.unsqueeze(0), [session.tensor_path]


def shared_memory_free(path: Path = SHARED_MEMORY) -> Optional[int]:
    """Bytes free in the shared-memory file system, None where there is none to measure."""
    try:
        stat = os.statvfs(path)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def session_items(dataset: SessionDataset, n_proc: int, reader: str = "threads",
                  batch_sessions: int = 1) -> Iterator[SessionItem]:
    """The sessions in order, read `n_proc` at a time, with enough read ahead that a batch of
    `batch_sessions` sessions is ready when the engines ask for it (fewer, and reading stalls while they
    compute); in this thread when `n_proc` is 0.

    `reader` "threads" (the default: measured 2x the rate of processes on 2 cores, BENCHMARKS.md; reading
    a memory-mapped tensor, copying and normalising it release the GIL) or "processes" (DataLoader workers
    that hand each session over in shared memory; threads instead when /dev/shm cannot hold what they keep
    in flight: 64 MB in a container started without --shm-size or --ipc=host, where torch would die with a
    bus error)."""
    if n_proc <= 0:
        return (dataset[index] for index in range(len(dataset)))
    ahead = batch_sessions + n_proc * PREFETCH_FACTOR
    if reader == "threads":
        return _read_in_threads(dataset, n_proc, depth=ahead)
    per_worker = -(-ahead // n_proc)
    in_flight = (n_proc * per_worker + 2) * dataset.item_bytes  # workers' queue + what the main process holds
    free = shared_memory_free()
    if free is not None and in_flight > 0.8 * free:
        log.info("%s has %d MiB free, too little for %d loader process(es) (about %d MiB in flight): reading in "
                 "%d thread(s) instead; give a container --shm-size=1g or --ipc=host to use processes",
                 SHARED_MEMORY, free >> 20, n_proc, in_flight >> 20, n_proc)
        return _read_in_threads(dataset, n_proc, depth=ahead)
    return iter(DataLoader(dataset, batch_size=None, shuffle=False, num_workers=n_proc,
                           prefetch_factor=per_worker))


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


def make_batches(dataset: SessionDataset, n_proc: int, reader: str, batch_size: int,
                 device: torch.device, skip: int = 0, limit: Optional[int] = None) -> Iterator["Batch"]:
    """The batches of a pass as the command makes them: raw items preprocessed on `device`
    (`DevicePreprocess`) when `dataset.raw`; else, for one element per session read in threads, straight
    into the batch (`batches_in_threads`); else items from `session_items` gathered by `rebatch` (pinned for
    a GPU). DataLoader processes start in the calling thread: call this from the main thread.

    `skip`: the first elements of the first session are left out before batching (a shard or a resumed run
    that starts inside a session: its batches are then those of the whole run); `limit`: at most that many
    elements in all."""
    device = torch.device(device)
    gpu = device.type == "cuda"
    if reader == "threads" and n_proc > 0 and not dataset.raw and len(dataset.element_ids) == 1:
        return _limited(batches_in_threads(dataset, n_proc, batch_size, pin=gpu), limit)  # skip is 0: one element
    batch_sessions = -(-batch_size // max(1, len(dataset.element_ids)))
    items = session_items(dataset, n_proc, reader, batch_sessions)
    if dataset.raw:
        return _limited(DevicePreprocess(dataset, device, batch_size, skip=skip)(items), limit)
    return _limited(rebatch(items, batch_size, pin=gpu, skip=skip), limit)


def _limited(batches: Iterator["Batch"], limit: Optional[int]) -> Iterator["Batch"]:
    """The batches up to `limit` elements in all (the last one cut if needed); then the source is closed."""
    if limit is None:
        yield from batches
        return
    try:
        while limit > 0:
            batch = next(batches, None)
            if batch is None:
                return
            if len(batch.element_ids) > limit:
                batch = Batch(batch.images[:limit], batch.element_ids[:limit], batch.session_index[:limit],
                              batch.ready)
            limit -= len(batch.element_ids)
            yield batch
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()


def batches_in_threads(dataset: SessionDataset, threads: int, batch_size: int, pin: bool = False,
                       ahead: int = 2) -> Iterator["Batch"]:
    """ClinicaDL's batches of a one-element-per-session dataset (image mode, preprocessed while read), each
    session read and preprocessed by one of `threads` threads straight into its row of the batch: no
    per-session buffer, no stacking in the main thread. `ahead` batches are read while one is used."""
    if dataset.raw or len(dataset.element_ids) != 1:
        raise ValueError("batches_in_threads reads image-mode datasets preprocessed while read")
    pool = ThreadPoolExecutor(threads, thread_name_prefix="maps-interpret-read")
    pending: deque = deque()
    n = len(dataset)

    def submit(first: int) -> None:
        indices = list(range(first, min(first + batch_size, n)))
        images = torch.empty((len(indices), *dataset.input_size), pin_memory=pin)
        futures = [pool.submit(dataset.read_into, index, images[row:row + 1]) for row, index in enumerate(indices)]
        pending.append((Batch(images, [dataset.element_ids[0]] * len(indices), indices), futures))

    try:
        first = 0
        while first < n or pending:
            while first < n and len(pending) <= ahead:
                submit(first)
                first += batch_size
            batch, futures = pending.popleft()
            for future in futures:  # in session order: the first failed session is the one reported
                item = future.result()
                if item.error is not None:
                    raise MapsInterpretError(item.error)
            yield batch
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class Batch:
    images: torch.Tensor
    element_ids: list[int]
    session_index: list[int]
    ready: Optional["torch.cuda.Event"] = None  # recorded on the stream that made `images` (GPU only)

    def wait(self) -> None:
        """Makes the current CUDA stream wait until `images` is ready, and keeps its memory from being reused
        before the work queued on that stream is done."""
        if self.ready is not None:
            stream = torch.cuda.current_stream(self.images.device)
            stream.wait_event(self.ready)
            self.images.record_stream(stream)


class DevicePreprocess:
    """Raw items (`SessionDataset(raw=True)`) to batches of preprocessed elements on `device`, in ClinicaDL's
    session-major order: the items of a batch are gathered in one host buffer (pinned for a GPU), sent with
    one copy, then cut, checked and normalised there (`layout.cut`, `Preprocess.batch`: the loader's values
    bit for bit). On a GPU this runs on a stream of its own, so copies and preprocessing overlap the models'
    work; each batch carries the event its consumer waits for (`Batch.wait`). Every model of a pass then
    uses the same device copy."""

    def __init__(self, dataset: SessionDataset, device: torch.device, batch_size: int, skip: int = 0):
        self.dataset = dataset
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.skip = skip  # elements of the first session(s) left out (see make_batches)

    def _path(self, session_index: int, element_position: int) -> Path:
        session = self.dataset.sessions[session_index]
        if self.dataset.layout.prepare_dl:
            return self.dataset.layout.element_file(session.tensor_path, self.dataset.element_ids[element_position])
        return session.tensor_path

    def _elements(self, group: list[SessionItem]) -> torch.Tensor:
        cuda = self.device.type == "cuda"
        raws = [item.elements for item in group]
        host = torch.empty((sum(r.shape[0] for r in raws), *raws[0].shape[1:]), pin_memory=cuda)
        torch.cat(raws, out=host)  # memory order kept: a plain copy
        order = group[0].order
        x = host.to(self.device, non_blocking=cuda).permute(order)  # the file's layout, undone on the device
        data = self.dataset
        elements = x if data.layout.prepare_dl else data.layout.cut(x)
        shape = data.preprocess.output_shape(tuple(elements.shape[1:]))
        if shape != data.input_size:
            raise MapsInterpretError(shape_message(self._path(group[0].session_index, 0), shape, data.input_size))
        values, bad = data.preprocess.batch(elements.contiguous())
        if bool(bad.any()):  # on a GPU, waits for this stream only
            position = int(bad.nonzero()[0])
            n = len(data.element_ids)
            raise MapsInterpretError(non_finite_message(self._path(group[position // n].session_index, position % n)))
        return values

    def __call__(self, items: Iterable[SessionItem]) -> Iterator[Batch]:
        stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        n = max(1, len(self.dataset.element_ids))
        pending: list[tuple[torch.Tensor, list[int], list[int]]] = []  # elements, ids, session indices
        group: list[SessionItem] = []

        def waiting() -> int:
            return sum(len(ids) for _, ids, _ in pending)

        skip = self.skip

        def flush() -> None:
            nonlocal skip
            if group:
                with torch.cuda.stream(stream) if stream is not None else nullcontext():
                    values = self._elements(group)
                ids = [e for item in group for e in item.element_ids]
                sessions = [item.session_index for item in group for _ in item.element_ids]
                dropped = min(skip, len(ids))
                skip -= dropped
                if dropped < len(ids):
                    pending.append((values[dropped:], ids[dropped:], sessions[dropped:]))
                group.clear()

        def take(count: int) -> Batch:
            parts, ids, sessions = [], [], []
            while len(ids) < count:
                values, chunk_ids, chunk_sessions = pending.pop(0)
                k = min(count - len(ids), len(chunk_ids))
                parts.append(values[:k])
                ids += chunk_ids[:k]
                sessions += chunk_sessions[:k]
                if k < len(chunk_ids):
                    pending.insert(0, (values[k:], chunk_ids[k:], chunk_sessions[k:]))
            with torch.cuda.stream(stream) if stream is not None else nullcontext():
                images = parts[0] if len(parts) == 1 else torch.cat(parts)
                ready = None
                if stream is not None:
                    ready = torch.cuda.Event()
                    ready.record(stream)
            return Batch(images, ids, sessions, ready)

        for item in items:
            if item.error is not None:
                raise MapsInterpretError(item.error)
            if group and (group[0].elements.shape[1:], group[0].order) != (item.elements.shape[1:], item.order):
                flush()  # one host buffer holds tensors of one shape and layout
            group.append(item)
            if waiting() + len(group) * n >= self.batch_size:
                flush()
            while waiting() >= self.batch_size:
                yield take(self.batch_size)
        flush()
        if waiting():
            yield take(waiting())


def rebatch(items: Iterable[SessionItem], batch_size: int, pin: bool = False, skip: int = 0) -> Iterator[Batch]:
    """Batches of `batch_size` elements over the session-major stream (the last one may be short), without
    its first `skip` elements; a session that failed to load raises its one-line error here, in the main
    process."""
    pending: list[tuple[torch.Tensor, int, int]] = []

    def emit(chunk):
        first = chunk[0][0]
        out = torch.empty((len(chunk), *first.shape), dtype=first.dtype, pin_memory=pin)
        torch.stack([element for element, _, _ in chunk], out=out)
        return Batch(out, [e for _, e, _ in chunk], [i for _, _, i in chunk])

    for item in items:
        if item.error is not None:
            raise MapsInterpretError(item.error)
        if item.raw:
            raise AssertionError("rebatch takes preprocessed items; raw ones go through DevicePreprocess")
        pending.extend(zip(item.elements.unbind(0), item.element_ids, [item.session_index] * len(item.element_ids)))
        if skip:
            dropped = min(skip, len(pending))
            pending, skip = pending[dropped:], skip - dropped
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
