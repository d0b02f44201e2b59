"""What a run leaves for a later one: checkpoints (`--continue`) and finished parts (`--merge_parts`).

A checkpoint belongs to one rank of one run folder (output/staging.py): per pass, how many of the rank's
elements have been added (in ClinicaDL's session-major order), the partial sums of each model over them
(partials.Partial), its state ("running", "computed": summed over the ranks, "written": every folder's files in
staging) and which of its jobs' folders are published; and the run's steps done once (figures drawn). It is
written atomically: the sums files first, then the JSON that names them (the generation before stays valid until
it is replaced). Individual maps go through the same background writer before the JSON, so every element the
checkpoint counts has its map on disk.

The run's fingerprint (the options that change the maps, the sessions of each pass, each model file's
sha256) is stored with it; a run that differs is refused, naming what differs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import RESULT_OPTIONS
from ..engine.partials import Partial
from ..errors import MapsInterpretError
from ..maps import sha256
from ..output import writers
from ..output.staging import CHECKPOINT_PREFIX, PART_MARKER, has_checkpoint

VERSION = 2  # 2: --noise_tunnel among the result options
READABLE = (1, 2)  # a version-1 checkpoint or part was made without a noise tunnel (`upgraded`)


def fingerprint(plan) -> dict:
    """What a checkpoint must agree with to be resumed: the options that change the maps (config.RESULT_OPTIONS),
    the sessions of each pass, each model file's sha256."""
    return {
        "options": dict(plan.settings.result_options),
        "passes": [[[s.participant_id, s.session_id, str(s.tensor_path)] for s in data_pass.sessions]
                   for data_pass in plan.passes],
        "models": {f"{job.model_path.parent.parent.name}/{job.model_path.parent.name}": sha256(job.model_path)
                   for job in plan.jobs},
    }


def upgraded(state: dict) -> dict:
    """A version-1 checkpoint or part as version 2 reads it: its run had no --noise_tunnel."""
    if state.get("version") == 1:
        state["fingerprint"]["options"].setdefault("noise_tunnel", False)
        state["version"] = VERSION
    return state


def differences(old: dict, new: dict) -> list[str]:
    """What differs between two fingerprints, in the user's words. Options recorded by one only are the
    parameters of a method (or noise tunnel) the other did not use: METHOD or --noise_tunnel says so."""
    out = [f"{RESULT_OPTIONS.get(key, key)} (was {old['options'][key]!r}, now {value!r})"
           for key, value in new["options"].items() if key in old["options"] and old["options"][key] != value]
    if old["passes"] != new["passes"]:
        out.append("the sessions of the data group")
    models = sorted(set(old["models"]) | set(new["models"]))
    out += [f"model {name}" for name in models if old["models"].get(name) != new["models"].get(name)]
    return out


class Checkpoint:
    """One rank's checkpoint in a run folder."""

    def __init__(self, run_dir: Path, rank: int, world: int, fingerprint_: dict, persist: bool = True):
        self.run_dir = Path(run_dir)
        self.rank, self.world, self.fingerprint = rank, world, fingerprint_
        # False: the record lives in memory only (--merge_parts: a killed merge is redone from the parts, which
        # stay intact until it ends, so it must leave nothing a later run would take for a run to resume)
        self.persist = persist
        self.path = self.run_dir / f"{CHECKPOINT_PREFIX}-{rank}.json"
        # pass -> {"done", "state", "sums": [file per job], "generation", "published": [job indices]}
        self.passes: dict[int, dict] = {}
        self.steps: list[str] = []  # the run's steps done once: "figures"

    def load(self) -> bool:
        """Reads this rank's checkpoint, if any; refuses one of another run. Returns whether there was one."""
        if not self.path.is_file():
            return False
        try:
            state = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise MapsInterpretError(f"cannot read checkpoint {self.path} ({error}): add --overwrite_name to "
                                     "discard it and start over") from None
        if state.get("version") not in READABLE:
            raise MapsInterpretError(f"{self.path} was written by another version of maps-interpret: add "
                                     "--overwrite_name to discard it and start over")
        state = upgraded(state)
        if state["world"] != self.world:
            raise MapsInterpretError(
                f"the interrupted run had {state['world']} rank(s), this one has {self.world}: resume it with the "
                f"same number of ranks (torchrun --nproc_per_node x --nnodes), or add --overwrite_name to start over")
        changed = differences(state["fingerprint"], self.fingerprint)
        if changed:
            raise MapsInterpretError(
                f"--continue: this run differs from the interrupted one in {', '.join(changed)}; rerun it with the "
                "interrupted run's options, or add --overwrite_name (without --continue) to start over")
        self.passes = {int(p): value for p, value in state["passes"].items()}
        self.steps = list(state.get("steps", []))
        return True

    def state_of(self, pass_index: int) -> str:
        return self.passes.get(pass_index, {}).get("state", "new")

    def published(self, pass_index: int, n_jobs: int) -> set[int]:
        """The jobs of a pass whose folders are in place (a version-1 checkpoint recorded whole passes)."""
        entry = self.passes.get(pass_index, {})
        return set(range(n_jobs)) if entry.get("state") == "published" else set(entry.get("published", []))

    def done(self, pass_index: int) -> int:
        return self.passes.get(pass_index, {}).get("done", 0)

    def partials(self, pass_index: int, n_jobs: int) -> list[Partial]:
        files = self.passes.get(pass_index, {}).get("sums")
        if not files:
            return [Partial.empty() for _ in range(n_jobs)]
        return load_sums(self.run_dir, files)

    def save(self, pass_index: int, done: int, partials: list[dict], state: str = "running") -> None:
        """Writes `partials` (Partial.state() of each model, CPU) and the JSON naming them; then drops the
        pass's previous sums files. Called from the background writer, after the maps queued before it."""
        entry = self.passes.get(pass_index, {})
        generation = entry.get("generation", 0) + 1
        files = []
        for job, partial in enumerate(partials):
            name = f"sums-r{self.rank}-p{pass_index}-j{job}-g{generation}.pt"
            writers.save_state(partial, self.run_dir / name)
            files.append(name)
        old = entry.get("sums", [])
        self.passes[pass_index] = {**entry, "done": done, "state": state, "sums": files, "generation": generation}
        self.write()
        for name in old:
            (self.run_dir / name).unlink(missing_ok=True)

    def mark(self, pass_index: int, state: str) -> None:
        self._entry(pass_index)["state"] = state
        self.write()

    def mark_published(self, pass_index: int, job_index: int) -> None:
        """Recorded right after the folder's rename: a resumed run publishes the others only."""
        entry = self._entry(pass_index)
        entry["published"] = sorted({*entry.get("published", []), job_index})
        self.write()

    def mark_step(self, step: str) -> None:
        self.steps = sorted({*self.steps, step})
        self.write()

    def _entry(self, pass_index: int) -> dict:
        return self.passes.setdefault(pass_index, {"done": 0, "sums": [], "generation": 0})

    def write(self) -> None:
        if not self.persist:
            return
        writers.write_json(self.path, {"version": VERSION, "world": self.world, "rank": self.rank,
                                       "fingerprint": self.fingerprint, "steps": self.steps,
                                       "passes": {str(p): v for p, v in sorted(self.passes.items())}})


def write_part(checkpoint: Checkpoint, part_id: int, num_parts: int, sessions: dict[int, int]) -> None:
    """A finished part's marker: it names the sums files its checkpoint already holds, each pass's sums merged
    over the part's ranks (state "computed")."""
    passes = {str(pass_index): {"sums": entry["sums"], "sessions": sessions[pass_index]}
              for pass_index, entry in sorted(checkpoint.passes.items())}
    writers.write_json(checkpoint.run_dir / PART_MARKER, {
        "version": VERSION, "part_id": part_id, "num_parts": num_parts, "fingerprint": checkpoint.fingerprint,
        "passes": passes})


def read_part(run_dir: Path, fingerprint_: dict, part_id: int, num_parts: int) -> dict:
    """A finished part's marker, checked against this run; its sums files are read by `part_partials`."""
    marker = run_dir / PART_MARKER
    if not marker.is_file():
        hint = ("it was interrupted: rerun it with --continue" if has_checkpoint(run_dir)
                else "run it first")
        raise MapsInterpretError(f"part {part_id} of {num_parts} is not finished ({marker} is missing): {hint} "
                                 f"(--num_parts {num_parts} --part_id {part_id})")
    state = json.loads(marker.read_text(encoding="utf-8"))
    if state.get("version") not in READABLE:
        raise MapsInterpretError(f"{marker} was written by another version of maps-interpret: recompute part "
                                 f"{part_id} (--num_parts {num_parts} --part_id {part_id} --overwrite_name)")
    if state["part_id"] != part_id or state["num_parts"] != num_parts:
        raise MapsInterpretError(f"{marker} is not part {part_id} of {num_parts} of this run")
    state = upgraded(state)
    changed = differences(state["fingerprint"], fingerprint_)
    if changed:
        raise MapsInterpretError(f"--merge_parts: part {part_id} was computed with other settings ({', '.join(changed)}); "
                                 "merge with the parts' options, or recompute the part")
    return state


def part_partials(run_dir: Path, state: dict, pass_index: int) -> list[Partial]:
    return load_sums(run_dir, state["passes"][str(pass_index)]["sums"])


def load_sums(run_dir: Path, files: list[str]) -> list[Partial]:
    """The partial sums of each job, from the files a checkpoint or a part names (tensors only)."""
    return [Partial.from_state(torch.load(run_dir / name, weights_only=True)) for name in files]
