"""`interpret.json`: where a folder of maps came from, written into every `interpret-<NAME>/` folder with its
maps (before the folder is moved into place): the tool and torch, the device, every option as given, the
method's parameters (those the method table says it reads), the model file and its sha256, the sessions and
elements, the files, the time taken."""

from __future__ import annotations

import datetime
import platform
from pathlib import Path

import torch

from .. import methods
from .._version import __version__
from ..maps import sha256
from .writers import outputs

FILE = "interpret.json"


def method_record(plan) -> dict:
    """The method, its target and every parameter and option it reads (methods.py)."""
    engine = plan.engine
    values = engine.values
    recorded = (*methods.reads(engine.row, engine.noise_tunnel), *engine.row.options)
    record = {"name": engine.method, "target_node": plan.settings.options["target_node"], "abs": engine.abs}
    if engine.noise_tunnel:
        record["noise_tunnel"] = True
    return {**record, **{name: values[name] for name in recorded}}


def provenance(plan, data_pass, job, folder: Path, seconds: float, ranks: int, resumed_elements: int = 0) -> dict:
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
                   "parts": plan.run.num_parts},
        "options": plan.settings.options,
        "method": method_record(plan),
        "model": {"split": job.split, "selection_metric": job.metric, "file": str(job.model_path),
                  "sha256": sha256(job.model_path)},
        "data_group": plan.output.data_group,
        "mode": plan.maps.mode,
        "n_sessions": len(data_pass.sessions),
        "element_ids": list(data_pass.element_ids),
        "n_elements": n_elements,
        "outputs": outputs(folder, but=FILE),
        "elapsed_seconds": round(seconds, 3),
        "images_per_second": round(n_elements / seconds, 3) if seconds > 0 else None,
        "resumed_elements": resumed_elements,  # done by an interrupted run before --continue
        "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
