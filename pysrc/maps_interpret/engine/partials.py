"""Partial results of one model over some of a data group's sessions: per key (an element id, or a subset's
key), how many maps were added, their float32 sum and, with statistics, the float32 sum of |map| and
Welford's float64 mean and M2. The one routine that combines them (`merge`) serves every way a run is cut:
ranks of torchrun, `--num_parts` parts, and the sessions before and after a `--continue`. Merging adds the
counts exactly, the sums in the order given, and combines means and M2 with Chan et al.'s pairwise formula,
so a cut run differs from an uncut one by float summation order only (tests/test_distributed.py and
tests/test_partials.py state and check the tolerances).

Keys, as the engine sums them: element ids below SUBSET_STRIDE; the maps of subset s (--group_by) of element e
under (s + 1) * SUBSET_STRIDE + e (csrc/engine.h)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional

import torch

from .engine import SUBSET_STRIDE

STAT_FIELDS = ("abs_sums", "mean64", "m2")


def split_key(key: int) -> tuple[Optional[int], int]:
    """(subset or None for the whole group, element id)."""
    return (None, key) if key < SUBSET_STRIDE else (key // SUBSET_STRIDE - 1, key % SUBSET_STRIDE)


@dataclass
class Partial:
    ids: list[int]  # sorted keys with at least one map
    counts: list[int]  # maps added per key
    sums: Optional[torch.Tensor]  # (len(ids), *map_shape) float32 sums; None when no map was added
    stats: dict[str, torch.Tensor] = field(default_factory=dict)  # STAT_FIELDS, same rows (with statistics)
    members: list = field(default_factory=list)  # group_by: [participant, session, element, subset] per map, in order
    evaluations: list = field(default_factory=list)  # --evaluate: one dict of curves and measures per map, in order

    @classmethod
    def empty(cls) -> "Partial":
        return cls([], [], None)

    @classmethod
    def of_engine(cls, engine) -> "Partial":
        """What an engine has accumulated, per element and (with group_by) per subset; copies (a snapshot),
        on the engine's device."""
        whole = cls._of_state(engine.state())
        if engine.settings.group_by == "none":
            return whole
        return whole.merge(cls._of_state(engine.state(subsets=True)))

    @classmethod
    def _of_state(cls, state: dict) -> "Partial":
        if not state:
            return cls.empty()
        return cls(list(state["ids"]), list(state["counts"]), state["sums"].clone(),
                   {name: state[name].clone() for name in STAT_FIELDS if name in state})

    @property
    def n_maps(self) -> int:
        return sum(count for key, count in zip(self.ids, self.counts) if key < SUBSET_STRIDE)

    def to(self, device) -> "Partial":
        return Partial(list(self.ids), list(self.counts), None if self.sums is None else self.sums.to(device),
                       {name: value.to(device) for name, value in self.stats.items()}, list(self.members),
                       list(self.evaluations))

    def merge(self, other: "Partial") -> "Partial":
        """This partial plus `other`, key by key (keys of either)."""
        if other.sums is None:
            return self
        if self.sums is None:
            return Partial(other.ids, other.counts, other.sums, other.stats, self.members + other.members,
                           self.evaluations + other.evaluations)
        if self.sums.shape[1:] != other.sums.shape[1:]:
            raise ValueError(f"cannot merge maps of shape {tuple(other.sums.shape[1:])} into maps of shape "
                             f"{tuple(self.sums.shape[1:])}")
        if set(self.stats) != set(other.stats):
            raise ValueError("cannot merge partials with and without statistics")
        ids = sorted(set(self.ids) | set(other.ids))
        mine, theirs = {k: i for i, k in enumerate(self.ids)}, {k: i for i, k in enumerate(other.ids)}
        device = self.sums.device
        counts, sums, stats = [], [], {name: [] for name in self.stats}
        for key in ids:
            a, b = mine.get(key), theirs.get(key)
            if b is None or a is None:
                source, row = (self, a) if b is None else (other, b)
                counts.append(source.counts[row])
                sums.append(source.sums[row].to(device))
                for name in stats:
                    stats[name].append(source.stats[name][row].to(device))
                continue
            na, nb = self.counts[a], other.counts[b]
            counts.append(na + nb)
            sums.append(self.sums[a] + other.sums[b].to(device))
            if stats:
                stats["abs_sums"].append(self.stats["abs_sums"][a] + other.stats["abs_sums"][b].to(device))
                mean_a, mean_b = self.stats["mean64"][a], other.stats["mean64"][b].to(device)
                delta = mean_b - mean_a
                n = na + nb
                stats["mean64"].append(mean_a + delta * (nb / n))
                stats["m2"].append(self.stats["m2"][a] + other.stats["m2"][b].to(device) + delta * delta * (na * nb / n))
        return Partial(ids, counts, torch.stack(sums), {name: torch.stack(rows) for name, rows in stats.items()},
                       self.members + other.members, self.evaluations + other.evaluations)

    def _divide(self, values: torch.Tensor) -> torch.Tensor:
        n = torch.tensor(self.counts, dtype=values.dtype, device=values.device)
        return values / n.view(-1, *([1] * (values.dim() - 1)))

    def means(self) -> dict[int, torch.Tensor]:
        """Each key's mean map: its float32 sum divided by its count (in float32, as the engine divides)."""
        return {} if self.sums is None else dict(zip(self.ids, self._divide(self.sums).unbind(0)))

    def absmeans(self) -> dict[int, torch.Tensor]:
        """Each key's mean of |map| (statistics only)."""
        return {} if self.sums is None else dict(zip(self.ids, self._divide(self.stats["abs_sums"]).unbind(0)))

    def stds(self) -> dict[int, torch.Tensor]:
        """Each key's sample standard deviation (n - 1 in the denominator; 0 where a single map was added),
        computed in float64, returned in float32 (statistics only)."""
        if self.sums is None:
            return {}
        n = torch.tensor(self.counts, dtype=torch.float64, device=self.sums.device)
        shape = (-1, *([1] * (self.sums.dim() - 1)))
        variance = self.stats["m2"] / (n - 1).clamp(min=1).view(shape)
        return dict(zip(self.ids, variance.clamp(min=0).sqrt().float().unbind(0)))

    def clinicadl_means(self, n_sessions: int, n_elements: int) -> dict[int, torch.Tensor]:
        """ClinicaDL 1.6.1's 'mean': every element's sum divided by sessions x elements per image."""
        if self.sums is None:
            return {}
        return {key: total / (n_sessions * n_elements) for key, total in zip(self.ids, self.sums.unbind(0))}

    def state(self) -> dict:
        """A plain dict for torch.save (CPU tensors)."""
        return {"ids": list(self.ids), "counts": list(self.counts),
                "sums": None if self.sums is None else self.sums.detach().cpu(),
                **{name: value.detach().cpu() for name, value in self.stats.items()},
                "members": [list(member) for member in self.members], "evaluations": list(self.evaluations)}

    @classmethod
    def from_state(cls, state: dict) -> "Partial":
        sums = state["sums"]
        if (sums is None) != (not state["ids"]) or (sums is not None and sums.shape[0] != len(state["ids"])):
            raise ValueError("inconsistent partial sums")
        return cls(list(state["ids"]), list(state["counts"]), sums,
                   {name: state[name] for name in STAT_FIELDS if name in state}, list(state.get("members", [])),
                   list(state.get("evaluations", [])))


def merge_all(partials: Iterable[Partial]) -> Partial:
    """The partials added in the order given (rank or part order: deterministic)."""
    total = Partial.empty()
    for partial in partials:
        total = total.merge(partial)
    return total
