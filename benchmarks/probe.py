"""The whole command when the model costs almost nothing: how close it comes to the read floor.

A TorchScript probe (average pooling to 4x4x4, one Linear layer) over full-size sessions (169x208x179, with
the strides `clinicadl prepare-data` writes), run as users run it, against one plain process that only
`torch.load`s the same files. Alternating, after a warm-up that brings the files into the page cache.

    python benchmarks/probe.py [--sessions 256] [--batch_size 8] [-np 2] [--repeats 3] [--out bench-out]
          [--variants threads:loader processes:loader ...] [--baseline DIR]
--baseline: also time an earlier build of the package installed in DIR (pip install --target DIR), run with
PYTHONPATH=DIR and the options it knows (no --reader, --preprocess_on).
Prints a table (and writes probe.md / probe.json under --out): images/s of each variant and its ratio to the
read floor.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

SHAPE = (169, 208, 179)
ARCHITECTURE = "Probe"  # not one ClinicaDL can rebuild: read from best-<metric>/model.torchscript.pt

FLOOR = """
import sys, time, torch
paths = sys.argv[1:]
start = time.perf_counter()
for path in paths:
    torch.load(path, weights_only=True)
print(len(paths) / (time.perf_counter() - start))
"""


class Probe(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.pool = torch.nn.AdaptiveAvgPool3d(4)
        self.fc = torch.nn.Linear(64, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(x).flatten(1))


def make_data(root: Path, n_sessions: int) -> dict:
    from maps_interpret.models import TORCHSCRIPT_FILE
    from maps_interpret.synthetic import (maps_parameters, prepare_data_layout, sessions, tensor_path, write_maps,
                                          write_tsv)

    paths = {"maps": root / "maps", "caps": root / "caps", "tsv": root / "sessions.tsv"}
    marker = root / "data.json"
    spec = {"sessions": n_sessions, "shape": SHAPE, "probe": 1}
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return paths
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    specs = sessions("PR", n_sessions)
    generator = torch.Generator().manual_seed(0)
    for spec_ in specs:  # random intensities: the reading, not the picture, is measured
        path = tensor_path(paths["caps"], spec_.participant_id, spec_.session_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(prepare_data_layout(100 * torch.rand((1, *SHAPE), generator=generator)), path)
    from maps_interpret.synthetic import write_caps

    write_caps(paths["caps"], [], SHAPE, seed=0)  # the CAPS' extraction description
    write_tsv(paths["tsv"], specs)
    params = maps_parameters((1, *SHAPE), caps_directory=str(paths["caps"].resolve()), tsv_path="", n_splits=0)
    params["architecture"] = ARCHITECTURE
    torch.manual_seed(0)
    write_maps(paths["maps"], params, {0: ([], [])},
               {(0, "loss"): {"model": {}, "epoch": 0, "name": ARCHITECTURE}})
    torch.jit.script(Probe().eval()).save(str(paths["maps"] / "split-0" / "best-loss" / TORCHSCRIPT_FILE))
    marker.write_text(json.dumps(spec))
    return paths


def session_files(caps: Path) -> list[str]:
    return sorted(str(p) for p in caps.glob("subjects/*/*/deeplearning_prepare_data/image_based/t1_linear/*.pt"))


def floor_rate(files: list[str]) -> float:
    out = subprocess.run([sys.executable, "-c", FLOOR, *files], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def command_rate(cli: list[str], n: int, pythonpath: str | None = None) -> tuple[float, float]:
    env = None if pythonpath is None else {**os.environ, "PYTHONPATH": pythonpath}
    start = time.perf_counter()
    result = subprocess.run(cli, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cli)} failed:\n{result.stderr[-3000:]}")
    loop = float(re.search(r"\(([\d.]+) s in the loops over batches\)", result.stderr).group(1))
    return n / wall, n / loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("-np", "--n_proc", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    parser.add_argument("--baseline", type=Path, help="an earlier build, installed with pip install --target")
    parser.add_argument("--variants", nargs="+", default=["threads:loader"], help="READER:PREPROCESS_ON pairs")
    args = parser.parse_args()
    data = make_data(args.out / "probe-data", args.sessions)
    files = session_files(data["caps"])
    assert len(files) == args.sessions, len(files)
    base = [sys.executable, "-m", "maps_interpret", str(data["maps"]), "probe"]
    options = ["--no-gpu", "-np", str(args.n_proc), "--batch_size", str(args.batch_size), "-v", "-on"]
    subprocess.run(base + ["warmup", "--participants_tsv", str(data["tsv"]), "--caps_directory", str(data["caps"]),
                           "--overwrite", *options], check=True, capture_output=True)  # data group; page cache
    rates: dict[str, list[float]] = {"floor": []}
    loops: dict[str, list[float]] = {}
    for repeat in range(args.repeats):
        rates["floor"].append(floor_rate(files))
        if args.baseline is not None:
            wall, loop = command_rate(base + ["baseline", *options], args.sessions, str(args.baseline.resolve()))
            rates.setdefault("baseline", []).append(wall)
            loops.setdefault("baseline", []).append(loop)
        for variant in args.variants:
            reader, place = variant.split(":")
            name = f"{reader}-{place}"
            wall, loop = command_rate(base + [name, *options, "--reader", reader, "--preprocess_on", place],
                                      args.sessions)
            rates.setdefault(variant, []).append(wall)
            loops.setdefault(variant, []).append(loop)
        print(f"repeat {repeat}: " + ", ".join(f"{k} {v[-1]:.1f}/s" for k, v in rates.items()), file=sys.stderr)
    median = {name: statistics.median(values) for name, values in rates.items()}
    device = f"CPU, {os.cpu_count()} cores ({platform.processor() or platform.machine()}), {torch.backends.cpu.get_cpu_capability()}"
    lines = [f"device: {device}; torch {torch.__version__}; {args.sessions} sessions of 1x{'x'.join(map(str, SHAPE))} "
             f"(prepare-data strides), TorchScript probe (avg-pool + Linear), gradients, --no-gpu -np {args.n_proc} "
             f"--batch_size {args.batch_size}; medians of {args.repeats} alternating runs", "",
             "| variant | images/s (process start to exit) | loop images/s | / read floor |", "|---|---|---|---|",
             f"| read floor: one process, torch.load only | {median['floor']:.1f} | | 1.00 |"]
    if args.baseline is not None:
        lines.append(f"| baseline ({args.baseline}) | {median['baseline']:.1f} | "
                     f"{statistics.median(loops['baseline']):.1f} | {median['baseline'] / median['floor']:.2f} |")
    for variant in args.variants:
        reader, place = variant.split(":")
        lines.append(f"| maps-interpret --reader {reader} --preprocess_on {place} | {median[variant]:.1f} | "
                     f"{statistics.median(loops[variant]):.1f} | {median[variant] / median['floor']:.2f} |")
    text = "\n".join(lines)
    print(text)
    (args.out / "probe.md").write_text(text + "\n")
    (args.out / "probe.json").write_text(json.dumps({"rates": rates, "loops": loops, "device": device}, indent=1))


if __name__ == "__main__":
    main()
