"""Stopping a run on request: SIGTERM (a scheduler's time limit, `kill`, torchrun stopping the ranks),
SIGUSR1 (SLURM's `--signal` warning before the limit) and SIGINT (Ctrl-C).

Before a run has anything to keep (planning, opening its folder) a signal stops it at once (`Stopped`, or
KeyboardInterrupt for Ctrl-C). From then on (`deferred()`: the passes, writing the results, the sanity check,
figures, publishing) the signal is only recorded, and the run stops at its next safe point (`check()`, as
`Stopped` whatever the signal, its checkpoint kept): after the batch in hand with every model (with a checkpoint
of every finished batch), while it waits for a batch, between the steps of writing and publishing, each of which
its checkpoint records.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Iterator, Optional

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
_state = {"deferring": 0, "requested": None}


class Stopped(BaseException):
    """The run was asked to stop by `signum`; `checkpoint` says where its progress was kept, if anywhere."""

    def __init__(self, signum: int, checkpoint: Optional[str] = None):
        super().__init__(signum)
        self.signum, self.checkpoint = signum, checkpoint

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _handler(signum, frame) -> None:
    if _state["requested"] is not None or _state.get("finished"):  # torchrun and SLURM may both signal a rank: once is enough
        return
    if _state["deferring"]:
        _state["requested"] = signum
        return
    _state["requested"] = signum
    raise _at_once(signum)


def _at_once(signum: int) -> BaseException:
    """What a signal raises before the run has anything to keep: Ctrl-C is Python's own KeyboardInterrupt."""
    return KeyboardInterrupt() if signum == signal.SIGINT else Stopped(signum)


def install() -> None:
    """Handlers for the whole process (the CLI calls this; the Python API leaves signals to its caller)."""
    _state["requested"], _state["finished"] = None, False
    for signum in SIGNALS:
        signal.signal(signum, _handler)


def finished() -> None:
    """The run's outcome is settled (written, or its error agreed by every rank): a signal from now on (torchrun
    stopping the other ranks once one has exited) must not turn it into another."""
    _state["finished"] = True


def requested() -> Optional[int]:
    """The signal received while deferring, if any."""
    return _state["requested"]


def check() -> None:
    """A safe point: stop now if a signal was received while deferring. Whatever the signal (Ctrl-C too), the
    run stops as `Stopped`: what it has done is kept, and the CLI says where."""
    pending = _state["requested"]
    if pending is not None and _state["deferring"] and not _state.get("finished"):
        raise Stopped(pending)


@contextmanager
def deferred() -> Iterator[None]:
    """Signals received inside are recorded (`requested`) instead of raised; one received before is raised."""
    pending = _state["requested"]
    if pending is not None:
        raise _at_once(pending)
    _state["deferring"] += 1
    try:
        yield
    finally:
        _state["deferring"] -= 1
