"""Readers of a pass's sessions: `-np` threads of this process (the default) or DataLoader worker processes
that hand each session over in shared memory."""

from __future__ import annotations

import logging
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Optional

from torch.utils.data import DataLoader

from .dataset import SessionDataset, SessionItem

log = logging.getLogger("maps_interpret")
SHARED_MEMORY = Path("/dev/shm")
PREFETCH_FACTOR = 2  # sessions each loader worker prepares ahead (torch's default)


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
