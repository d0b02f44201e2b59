"""What checkpoints cost, and what a 2-rank torchrun job (Gloo, CPU) gives against one process.

    python benchmarks/distributed.py [--sessions 400] [--shape 48 56 48] [--batch_size 2] [--repeats 3]
                                     [--out bench-out]
Runs the CLI on a synthetic MAPS (2 splits sharing one pass, random weights), alternating within each repeat:
  - `--checkpoint_every 0` (only on signals), `100` (the default) and `10`, one process, `-np 2`;
  - torchrun with 2 ranks (`-np 1` each, one intra-op thread each as torchrun sets) against the same command
    in one process (`-np 2`, 2 intra-op threads).
Also times one checkpoint of full-size sums in-process (two models' 169x208x179 float32 sums: snapshot, then
save), to scale the default interval's cost to full-size runs. Prints a Markdown table; writes
OUT/distributed.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def run(command: list[str], cwd: Path, env: dict | None = None) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return wall


def full_size_checkpoint_seconds(repeats: int = 5) -> float:
    """One checkpoint of two models' full-size sums: the snapshot (stack of the engine's sums) and the save."""
    from maps_interpret.runner.checkpoints import Checkpoint
    from maps_interpret.engine.partials import Partial

    sums = [torch.rand(1, 1, 169, 208, 179) for _ in range(2)]
    times = []
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Checkpoint(Path(folder), 0, 1, {"options": {}, "passes": [], "models": {}})
        for _ in range(repeats):
            start = time.perf_counter()
            states = [Partial([0], [10], torch.stack([s[0]])).state() for s in sums]
            checkpoint.save(0, 10, states)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=400)
    parser.add_argument("--shape", type=int, nargs=3, default=[48, 56, 48])
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    args = parser.parse_args()
    from maps_interpret.synthetic import build_demo

    root = args.out / "distributed-data"
    shutil.rmtree(root, ignore_errors=True)
    build_demo(root, shape=tuple(args.shape), n_train=4, n_test=args.sessions // 2, trained=False)
    sessions = len((root / "data" / "test.tsv").read_text().splitlines()) - 1
    base = ["maps", "test"]
    options = ["--no-gpu", "--batch_size", str(args.batch_size), "-on"]
    one = [sys.executable, "-m", "maps_interpret"]
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "maps_interpret"]
    run(one + base + ["warmup", "--participants_tsv", "data/test.tsv", "--caps_directory", "data/caps", *options],
        root)  # the data group, the page cache
    variants = {
        "one process, --checkpoint_every 0": (one + base + ["c0", *options, "-np", "2", "--checkpoint_every", "0"], None),
        "one process, --checkpoint_every 100 (default)": (one + base + ["c100", *options, "-np", "2"], None),
        "one process, --checkpoint_every 10": (one + base + ["c10", *options, "-np", "2", "--checkpoint_every", "10"], None),
        "torchrun, 2 Gloo ranks (-np 1, 1 thread each)": (two + base + ["gloo", *options, "-np", "1"],
                                                          {**os.environ, "OMP_NUM_THREADS": "1"}),
    }
    walls: dict[str, list[float]] = {name: [] for name in variants}
    for repeat in range(args.repeats):
        for name, (command, env) in variants.items():
            walls[name].append(run(command, root, env))
        print(f"repeat {repeat}: " + ", ".join(f"{k}: {v[-1]:.1f} s" for k, v in walls.items()), file=sys.stderr)
    checkpoint = full_size_checkpoint_seconds()
    median = {name: statistics.median(values) for name, values in walls.items()}
    batches = -(-sessions // args.batch_size)
    reference = median["one process, --checkpoint_every 0"]
    lines = [f"CPU, {os.cpu_count()} cores; torch {torch.__version__}; {sessions} sessions of "
             f"{'x'.join(map(str, args.shape))}, 2 models (splits) in one pass, batch {args.batch_size} "
             f"({batches} batches); medians of {args.repeats} alternating runs (process start to exit)", "",
             "| variant | wall s | vs one process, no checkpoint |", "|---|---|---|"]
    lines += [f"| {name} | {value:.2f} | {value / reference:.3f} |" for name, value in median.items()]
    lines += ["", f"One checkpoint of two models' full-size (169x208x179) sums, in-process: {checkpoint * 1000:.0f} ms "
                  "(snapshot + atomic save; in a run it is written by the background writer)."]
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "distributed.md").write_text(text + "\n")
    (args.out / "distributed.json").write_text(json.dumps({"walls": walls, "checkpoint_s": checkpoint,
                                                           "sessions": sessions, "batches": batches}, indent=1))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
