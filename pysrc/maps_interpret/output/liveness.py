"""A liveness record beside each run's lock: which host and process hold a run folder, since when, and a
heartbeat refreshed every minute while the run lives.

The lock itself is an flock, which the kernel releases when its process dies, however it dies. On a cluster file
system mounted with node-local locks (Lustre `localflock`, NFS `nolock`), an flock taken on one node is
invisible on another: a run starting there would take a live run's key, or remove its folder as abandoned. The
record closes that gap: a run folder whose record names another host with a heartbeat younger than STALE is
treated as alive whatever the flock says. A run that ends (or stops on a signal) removes its record; one that is
killed leaves it, stale after STALE.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Optional

from .writers import atomic_write_text, unlink_quietly

HEARTBEAT = 60.0  # seconds between refreshes of a live run's record
STALE = 600.0  # a record on another host older than this is a dead run's


def path(root: Path, key: str) -> Path:
    return Path(root) / f"{key}.alive"


def read(record_path: Path) -> Optional[dict]:
    try:
        record = json.loads(Path(record_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and {"host", "pid", "heartbeat"} <= set(record) else None


def alive_elsewhere(record: Optional[dict], now: Optional[float] = None) -> bool:
    """Whether a record says a run lives on another host (where this host's flock cannot see it)."""
    if record is None or record["host"] == socket.gethostname():
        return False  # here the flock is the truth
    return (time.time() if now is None else now) - float(record["heartbeat"]) < STALE


def describe(record: dict, now: Optional[float] = None) -> str:
    age = (time.time() if now is None else now) - float(record["heartbeat"])
    return f"host {record['host']}, pid {record['pid']}, last heartbeat {age:.0f} s ago"


class Heartbeat:
    """This run's record, written now and refreshed every HEARTBEAT seconds by a daemon thread until `stop`."""

    def __init__(self, record_path: Path):
        self.path = Path(record_path)
        self.started = time.time()
        self._stop = threading.Event()
        self.beat()
        self._thread = threading.Thread(target=self._run, name="maps-interpret-heartbeat", daemon=True)
        self._thread.start()

    def beat(self) -> None:
        atomic_write_text(self.path, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                                 "started": self.started, "heartbeat": time.time()}))

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT):
            try:
                self.beat()
            except OSError:  # a full disk must not kill the run here; the next beat tries again
                pass

    def stop(self) -> None:
        """The refreshes end and the record goes: the run no longer lives."""
        self._stop.set()
        self._thread.join(timeout=5)
        unlink_quietly(self.path)
