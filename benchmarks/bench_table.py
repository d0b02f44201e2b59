"""What the benchmark scripts share: the device's name for a table's heading, the variants timed in alternation,
and the table printed and written."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Callable


def device_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name(0) if device.startswith("cuda") else f"CPU, {os.cpu_count()} cores"


def publish(lines: list[str], out: Path, filename: str) -> None:
    """Prints the Markdown lines and writes them to OUT/filename."""
    text = "\n".join(lines)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / filename).write_text(text + "\n")


def alternate(variants: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Each variant's median seconds over `repeats` rounds, the variants run one after the other in each round
    (a busy machine then slows them alike)."""
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in seconds.items()}
