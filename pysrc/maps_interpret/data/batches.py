"""The batches of a pass, as the command makes them (`make_batches`): ClinicaDL's session-major order, formed
by the readers, by `rebatch`, or on the device; `prefetch` forms them ahead in a thread (GPU runs)."""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from queue import Empty, Full, Queue
from typing import Callable, Iterable, Iterator, Optional, TypeVar

import torch

from ..errors import MapsInterpretError
from .dataset import Batch, SessionDataset, SessionItem
from .device import DevicePreprocess
from .readers import session_items

T = TypeVar("T")


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


def prefetch(items: Iterable[T], depth: int, stop: Optional[Callable[[], object]] = None) -> Iterator[T]:
    """`items`, produced up to `depth` ahead by a background thread; depth 0 is `items` itself. On a GPU the
    main thread only queues device work, so receiving the workers' tensors and copying them into pinned
    batches (GIL released) overlaps the device's compute instead of delaying it. Errors of the producer are
    raised here, in order; closing this generator early stops the producer after its current item. `stop`:
    polled while an item is awaited; when it returns something true the items end there (a stop signal need
    not wait for a slow read). Pass an iterator made in the calling thread (`iter(loader)`): a DataLoader's
    workers must start from the main thread, where torch watches them for crashes."""
    if depth <= 0:
        yield from items
        return
    queue: Queue = Queue(maxsize=depth)
    done = threading.Event()
    end = object()

    def put(entry) -> bool:
        while not done.is_set():
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
                item, error = queue.get(timeout=0.2)
            except Empty:
                if stop is not None and stop():
                    return
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
        done.set()
        thread.join(timeout=1.0)
