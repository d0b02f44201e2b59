"""`interpret.json`: where a folder of maps came from, written into every `interpret-<NAME>/` folder with its
maps (before the folder is moved into place): the tool and torch, the device, every resolved option, the
method's parameters, the model file and its sha256, the sessions and elements, the files, the time taken."""

from __future__ import annotations

import datetime
import platform
from dataclasses import fields
from pathlib import Path

import torch

from . import __version__
from .checkpoints import sha256

FILE = "interpret.json"
METHOD_PARAMETERS = {
    "gradients": (), "input-x-gradient": (), "grad-cam": ("level_grad_cam", "compat"),
    "smoothgrad": ("n_samples", "noise_level", "seed", "chunk_size"),
    "integrated-gradients": ("n_steps", "baseline", "chunk_size"),
}


def _plain(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def provenance(plan, data_pass, job, folder: Path, seconds: float, ranks: int, resumed_elements: int = 0) -> dict:
    config = plan.config
    device = torch.device(plan.device)
    n_elements = data_pass.n_elements
    return {
        "tool": {"name": "maps-interpret", "version": __version__},
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "device": {"type": device.type, "name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                                                 else platform.processor() or platform.machine()),
                   "cpu_capability": torch.backends.cpu.get_cpu_capability(), "ranks": ranks,
                   "parts": config.num_parts},
        "options": {f.name: _plain(getattr(config, f.name)) for f in fields(config)},
        "method": {"name": config.method, "target_node": config.target_node, "abs": config.abs,
                   **{name: _plain(getattr(config, name)) for name in METHOD_PARAMETERS[config.method]}},
        "model": {"split": job.split, "selection_metric": job.metric, "file": str(job.model_path),
                  "sha256": sha256(job.model_path)},
        "data_group": config.data_group,
        "mode": plan.maps.mode,
        "n_sessions": len(data_pass.sessions),
        "element_ids": list(data_pass.element_ids),
        "n_elements": n_elements,
        "outputs": sorted(p.name for p in Path(folder).iterdir() if p.name != FILE),
        "elapsed_seconds": round(seconds, 3),
        "images_per_second": round(n_elements / seconds, 3) if seconds > 0 else None,
        "resumed_elements": resumed_elements,  # done by an interrupted run before --continue
        "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
