"""What the benchmark scripts share: the device's name for a table's heading, and the table printed and written."""

from __future__ import annotations

import os
from pathlib import Path


def device_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name(0) if device.startswith("cuda") else f"CPU, {os.cpu_count()} cores"


def publish(lines: list[str], out: Path, filename: str) -> None:
    """Prints the Markdown lines and writes them to OUT/filename."""
    text = "\n".join(lines)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / filename).write_text(text + "\n")
