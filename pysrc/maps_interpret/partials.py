"""Partial results of one model over some of a data group's sessions: per element id, how many maps were
added and their float32 sum. The one routine that combines them (`merge`) serves every way a run is cut:
ranks of torchrun, `--num_parts` parts, and the sessions before and after a `--continue`. Merging adds the
counts exactly and the sums in the order given, so a cut run differs from an uncut one by float32 summation
order only (tests/test_distributed.py states and checks the tolerance)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import torch


@dataclass
class Partial:
    ids: list[int]  # sorted element ids with at least one map
    counts: list[int]  # maps added per id
    sums: Optional[torch.Tensor]  # (len(ids), *map_shape) float32 sums; None when no map was added

    @classmethod
    def empty(cls) -> "Partial":
        return cls([], [], None)

    @classmethod
    def of_engine(cls, engine) -> "Partial":
        """What an engine has accumulated (its sums stay on its device)."""
        counts = engine.counts()
        if not counts:
            return cls.empty()
        sums = engine.sums()  # one (id, map) per id with a count, sorted: stacked anew (a snapshot)
        ids = sorted(counts)
        return cls(ids, [counts[i] for i in ids], torch.stack([sums[i] for i in ids]))

    @property
    def n_maps(self) -> int:
        return sum(self.counts)

    def to(self, device) -> "Partial":
        return Partial(list(self.ids), list(self.counts), None if self.sums is None else self.sums.to(device))

    def merge(self, other: "Partial") -> "Partial":
        """This partial's sums plus `other`'s, element by element (ids of either)."""
        if other.sums is None:
            return self
        if self.sums is None:
            return other
        if self.sums.shape[1:] != other.sums.shape[1:]:
            raise ValueError(f"cannot merge maps of shape {tuple(other.sums.shape[1:])} into maps of shape "
                             f"{tuple(self.sums.shape[1:])}")
        ids = sorted(set(self.ids) | set(other.ids))
        counts, rows = [], []
        mine, theirs = dict(zip(self.ids, range(len(self.ids)))), dict(zip(other.ids, range(len(other.ids))))
        device = self.sums.device
        for id_ in ids:
            a, b = mine.get(id_), theirs.get(id_)
            counts.append((self.counts[a] if a is not None else 0) + (other.counts[b] if b is not None else 0))
            if a is not None and b is not None:
                rows.append(self.sums[a] + other.sums[b].to(device))
            else:
                rows.append(self.sums[a] if a is not None else other.sums[b].to(device))
        return Partial(ids, counts, torch.stack(rows))

    def means(self) -> dict[int, torch.Tensor]:
        """Each element's mean map: its sum divided by its count (in float32, as the engine divides)."""
        if self.sums is None:
            return {}
        n = torch.tensor(self.counts, dtype=torch.float32, device=self.sums.device)
        means = self.sums / n.view(-1, *([1] * (self.sums.dim() - 1)))
        return dict(zip(self.ids, means.unbind(0)))

    def clinicadl_means(self, n_sessions: int, n_elements: int) -> dict[int, torch.Tensor]:
        """ClinicaDL 1.6.1's 'mean': every element's sum divided by sessions x elements per image."""
        if self.sums is None:
            return {}
        return {id_: total / (n_sessions * n_elements) for id_, total in zip(self.ids, self.sums.unbind(0))}

    def state(self) -> dict:
        """A plain dict for torch.save (CPU tensors)."""
        return {"ids": list(self.ids), "counts": list(self.counts),
                "sums": None if self.sums is None else self.sums.detach().cpu()}

    @classmethod
    def from_state(cls, state: dict) -> "Partial":
        sums = state["sums"]
        if (sums is None) != (not state["ids"]) or (sums is not None and sums.shape[0] != len(state["ids"])):
            raise ValueError("inconsistent partial sums")
        return cls(list(state["ids"]), list(state["counts"]), sums)


def merge_all(partials: Iterable[Partial]) -> Partial:
    """The partials added in the order given (rank or part order: deterministic)."""
    total = Partial.empty()
    for partial in partials:
        total = total.merge(partial)
    return total
