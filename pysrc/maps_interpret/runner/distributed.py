"""One job across processes and machines, launched by torchrun (or `srun` + torchrun): torch.distributed
with NCCL between GPUs and Gloo between CPUs. No scheduler of our own: torchrun starts the ranks and
stops them all when one dies; this module only lets them agree.

Rank 0 plans and checks (everything that reads the MAPS before computing) and broadcasts the plan; every
rank computes a contiguous, balanced shard of each pass's sessions (`shard`); the partial sums meet on rank
0 (`gather_partials`, added in rank order), which writes the means and publishes. Individual maps are
written by the rank that computed them. A rank that fails posts its error in torchrun's key-value store:
the others see it at their next batch (`failed`), stop, and every rank ends with that one-line error at the
next point where they agree (`agree`). Without torchrun nothing here runs; under torchrun with one rank the
process group is still made (a check of NCCL on one GPU).
"""

from __future__ import annotations

import datetime
import logging
import os
import signal
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, TypeVar

from .. import signals
from ..engine.partials import Partial
from ..errors import MapsInterpretError, first_line

log = logging.getLogger("maps_interpret")
T = TypeVar("T")
FAILED_KEY = "maps_interpret/failed"
OUTCOME_KEY = "maps_interpret/outcome"  # rank 0's writing and publishing: "ok", "stopped <signum>", "error <code>"
# A collective waits this long for a rank (the plan, the end of a pass); rank 0's writing, sanity check, figures
# and publishing are waited for without a limit (`wait_for_main`). $MAPS_INTERPRET_RANK_TIMEOUT in seconds.
TIMEOUT = datetime.timedelta(seconds=float(os.environ.get("MAPS_INTERPRET_RANK_TIMEOUT", 1800)))


def shard(n: int, index: int, count: int) -> range:
    """Positions of part `index` of `count` in a sequence of `n`: contiguous, sizes differing by at most
    one. Contiguous shards merged in order add the sums in nearly the order of one process."""
    return range(index * n // count, (index + 1) * n // count)


@dataclass
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: Optional[str] = None
    _store: Any = None

    launched: bool = False  # under torchrun (even with one rank: NCCL or Gloo is then initialised)

    @property
    def enabled(self) -> bool:
        return self.launched

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, gpu: bool) -> "Context":
        """The job's ranks as torchrun describes them in the environment; a single process otherwise."""
        if "TORCHELASTIC_RUN_ID" not in os.environ or "WORLD_SIZE" not in os.environ:
            return cls()  # not started by torchrun
        world = int(os.environ["WORLD_SIZE"])
        import torch
        import torch.distributed as dist

        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if gpu:
            if not torch.cuda.is_available():
                raise MapsInterpretError("no GPU is available: add --no-gpu to run the ranks on CPUs (Gloo)")
            if local_rank >= torch.cuda.device_count():
                raise MapsInterpretError(
                    f"rank {rank} is local rank {local_rank}, but this node has {torch.cuda.device_count()} GPU(s): "
                    "give torchrun --nproc_per_node no more than the GPUs of a node")
            torch.cuda.set_device(local_rank)
        # Our own client of the store torchrun's agent hosts (as torch's env:// rendezvous builds it), so that a
        # failing rank can post its error where the others look between batches.
        agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                              is_master=not agent and rank == 0, timeout=TIMEOUT)
        backend = "nccl" if gpu else "gloo"
        dist.init_process_group(backend, store=dist.PrefixStore("maps_interpret/pg", store), rank=rank,
                                world_size=world, timeout=TIMEOUT)
        log.info("rank %d of %d (%s%s)", rank, world, backend, f", cuda:{local_rank}" if gpu else "")
        return cls(rank, world, local_rank, backend, store, launched=True)

    def close(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    def settle(self, timeout: float = 60.0) -> None:
        """Waits (at most `timeout` s) until every rank has got here, so that no rank exits while another is
        still cleaning up or printing: torchrun stops the others as soon as one exits with an error."""
        if not self.enabled:
            return
        import time

        key = "maps_interpret/settled"
        self._store.add(key, 1)
        deadline = time.monotonic() + timeout
        while int(self._store.add(key, 0)) < self.world and time.monotonic() < deadline:
            time.sleep(0.01)

    def device(self, device: str) -> str:
        """This rank's device: its own GPU (the local rank's) under torchrun."""
        return f"cuda:{self.local_rank}" if self.enabled and device == "cuda" else device

    # -- agreeing ----------------------------------------------------------------------------------------------

    def fail(self, error: BaseException) -> None:
        """Posts this rank's error for the others (the first error posted wins)."""
        if self.enabled:
            message = f"rank {self.rank}: {_message(error)}"
            self._store.compare_set(FAILED_KEY, "", message)

    def failed(self) -> bool:
        """Whether a rank has posted an error (one round trip to the store: cheap next to a batch)."""
        return self.enabled and self._store.check([FAILED_KEY])

    def agree(self, error: Optional[BaseException]) -> None:
        """Every rank calls this at the same point: if any rank failed, every rank raises the same error."""
        if not self.enabled:
            if error is not None:
                raise error
            return
        import torch.distributed as dist

        if error is not None:
            self.fail(error)
        codes: list = [None] * self.world
        dist.all_gather_object(codes, None if error is None else getattr(error, "exit_code", 1))
        failed = [(rank, code) for rank, code in enumerate(codes) if code is not None]
        if failed or self._store.check([FAILED_KEY]):
            message = self._store.get(FAILED_KEY).decode()
            code = failed[0][1] if failed else 1
            raise (_Error2 if code == 2 else MapsInterpretError)(message)

    def on_main(self, function: Callable[[], T]) -> T:
        """`function()` run on rank 0 only, its result (or its error) given to every rank."""
        if not self.enabled:
            return function()
        import torch.distributed as dist

        value, error = None, None
        if self.is_main:
            try:
                value = function()
            except Exception as caught:  # noqa: BLE001  (every rank must hear of it, then raise it)
                error = caught
        self.agree(error)
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def wait_for_main(self, function: Callable[[], None]) -> None:
        """`function()` on rank 0; the other ranks wait for its outcome in the key-value store, polling, without
        a time limit (a collective would end after TIMEOUT: a long sanity check, many figures), and end as it
        ends: its error, or the signal that stopped it, becomes theirs."""
        if not self.enabled:
            function()
            return
        import time

        if self.is_main:
            try:
                function()
            except signals.Stopped as stop:
                self._store.set(OUTCOME_KEY, f"stopped {stop.signum}")
                raise
            except KeyboardInterrupt:
                self._store.set(OUTCOME_KEY, f"stopped {int(signal.SIGINT)}")
                raise
            except BaseException as error:
                self.fail(error)
                self._store.set(OUTCOME_KEY, f"error {getattr(error, 'exit_code', 1)}")
                raise
            self._store.set(OUTCOME_KEY, "ok")
            return
        while not self._store.check([OUTCOME_KEY]):
            time.sleep(0.2)
        outcome, _, value = self._store.get(OUTCOME_KEY).decode().partition(" ")
        if outcome == "stopped":
            raise signals.Stopped(int(value))
        if outcome == "error":
            raise (_Error2 if value == "2" else MapsInterpretError)(self._store.get(FAILED_KEY).decode())

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    # -- merging -------------------------------------------------------------------------------------------------

    def gather_partials(self, partials: Sequence[Partial]) -> Optional[list[Partial]]:
        """Rank 0: each model's partials of every rank, merged in rank order; other ranks: None."""
        if not self.enabled:
            return list(partials)
        import torch
        import torch.distributed as dist

        from ..engine.partials import merge_all

        meta: list = [None] * self.world
        dist.all_gather_object(meta, [(p.ids, p.counts, None if p.sums is None else tuple(p.sums.shape[1:]),
                                       sorted(p.stats), p.members, p.evaluations) for p in partials])
        device = torch.device(self.device("cuda")) if self.backend == "nccl" else torch.device("cpu")
        merged = []
        for job, partial in enumerate(partials):
            shapes = {m[job][2] for m in meta if m[job][2] is not None}
            if not shapes:  # no rank computed anything for this model (no session)
                merged.append(Partial.empty())
                continue
            if len(shapes) > 1:
                raise MapsInterpretError(f"ranks computed maps of different shapes: {sorted(shapes)}")
            shape = shapes.pop()
            ids = sorted({i for m in meta for i in m[job][0]})
            row = {id_: k for k, id_ in enumerate(ids)}
            fields = {"sums": torch.float32}
            for name in max((m[job][3] for m in meta), key=len):
                fields[name] = torch.float64 if name in ("mean64", "m2") else torch.float32
            gathered = {}
            for name, dtype in fields.items():  # dense, the same shape on every rank, as gather needs
                dense = torch.zeros((len(ids), *shape), dtype=dtype, device=device)
                mine = partial.sums if name == "sums" else partial.stats.get(name)
                if mine is not None:
                    dense[[row[i] for i in partial.ids]] = mine.to(device, dtype)
                gathered[name] = [torch.empty_like(dense) for _ in range(self.world)] if self.is_main else None
                dist.gather(dense, gathered[name], dst=0)
            if not self.is_main:
                continue
            parts = []
            for rank in range(self.world):
                rank_ids, rank_counts = meta[rank][job][0], meta[rank][job][1]
                if rank_ids:
                    rows = [row[i] for i in rank_ids]
                    parts.append(Partial(list(rank_ids), list(rank_counts), gathered["sums"][rank][rows],
                                         {name: gathered[name][rank][rows] for name in fields if name != "sums"},
                                         list(meta[rank][job][4]), list(meta[rank][job][5])))
            merged.append(merge_all(parts))
        return merged if self.is_main else None


class _Error2(MapsInterpretError):
    exit_code = 2


def _message(error: BaseException) -> str:
    if isinstance(error, MapsInterpretError):
        return first_line(error)
    return f"{type(error).__name__}: {first_line(error)}"
