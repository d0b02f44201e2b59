"""`--sanity_check`: Adebayo et al.'s cascading model-parameter randomisation (Sanity Checks for Saliency
Maps, NeurIPS 2018). A saliency method that explains the model must give other maps when the model's learned
parameters are destroyed; a map that survives the randomisation shows the input (edges, the brain's
outline), not what the network learned.

Layers (models/layers.py): the modules that hold parameters of their own or BatchNorm running statistics,
randomised from the output down. Step i re-initialises layer i on top of layers 1..i-1 (cumulative), each with its class's
own `reset_parameters` (torch's default initialisation) under a seed drawn from the layer's name only, in a
forked RNG: the global RNG is untouched and every run gives the same randomised networks. BatchNorm's
`reset_parameters` also resets its running statistics (mean 0, variance 1): the layer then only scales by
1/sqrt(1 + eps), which removes what training put in it.

After each step the network is exported and run as the main run runs it (same method, target, device,
batching and preprocessing) over the data group's first `--sanity_sessions` sessions (all with 0), and each
element's mean map is compared with the trained network's mean over the same sessions: Spearman's rank
correlation of |map| (Adebayo's measure), Pearson's r of the signed maps, and the Dice overlap of the top 10%
voxels by magnitude. Cost: one pass over those sessions per layer (one more when they are not the whole group,
for the trained network's mean over them).

Verdict (`verdict` below): an element fails when the Spearman correlation of |map| is still above THRESHOLD
once every layer is randomised; the check fails when any element does (a warning in the log, `verdict` in
sanity_check.json). A flat trained map (a Grad-CAM map the ReLU zeroed) cannot be compared: `undefined`.
"""

from __future__ import annotations

import io
import logging
import math
import zlib
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
from torch import nn
from tqdm import tqdm

from .. import signals
from ..errors import MapsInterpretError, first_line
from ..models.layers import layers
from ..output import writers
from .similarity import pearson, spearman, top_dice

log = logging.getLogger("maps_interpret")

TSV, PNG, SUMMARY = "sanity_check.tsv", "sanity_check.png", "sanity_check.json"
# Above this rank correlation of |map| with every layer randomised, the random network ranks the voxels almost
# as the trained one: the map does not depend on what was learned. The paper sets no number; on the demo MAPS
# gradients fall to about 0.2, input x gradient (which keeps the image's structure) to about 0.57 (docs/figures.md).
THRESHOLD = 0.9
TOP_FRACTION = 0.1  # dice_top10
SEED = 2018  # with each layer's name, the seed of its re-initialisation
MEASURES = ("spearman_abs", "pearson", "dice_top10")

MeanMaps = Callable[[nn.Module], dict[int, torch.Tensor]]  # a network -> each element's mean map


def layer_seed(name: str) -> int:
    return zlib.crc32(f"{SEED}/{name}".encode())


def reinitialise(name: str, module: nn.Module) -> None:
    """`module`'s own initialisation (BatchNorm: running statistics too), seeded by its name; the global RNG
    is left as it was."""
    # The parameters are on the CPU (load_model): only the CPU generator is seeded, inside a fork that restores
    # it (torch.manual_seed would also reseed, or queue a seed for, every CUDA generator).
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.random.default_generator.manual_seed(layer_seed(name))
        module.reset_parameters()


def cascade(model: nn.Module) -> Iterator[tuple[int, str]]:
    """Randomises `model` in place, one more layer at each step, output first; yields (layers randomised,
    the layer just randomised) after each step."""
    for step, (name, module) in enumerate(layers(model), 1):
        reinitialise(name, module)
        yield step, name


def _flat(map_: torch.Tensor) -> bool:
    """|map| is one value everywhere (a Grad-CAM map that the ReLU zeroed, say): it has no top voxels."""
    magnitude = map_.abs()
    return bool(magnitude.max() == magnitude.min())


def similarities(trained: torch.Tensor, randomised: torch.Tensor) -> dict[str, float]:
    """NaN where a measure is undefined: the correlations of a constant map, the Dice of a flat one (its top
    voxels would be picked by position)."""
    dice = math.nan if _flat(trained) or _flat(randomised) else top_dice(trained, randomised, TOP_FRACTION)
    return {"spearman_abs": spearman(trained.abs(), randomised.abs()), "pearson": pearson(trained, randomised),
            "dice_top10": dice}


def run_cascade(model: nn.Module, mean_maps: MeanMaps, trained: dict[int, torch.Tensor],
                progress: Optional[str] = None) -> list[dict]:
    """One row per (step, element): the similarity of the randomised network's mean map to `trained`'s.
    `model` is randomised in place; `mean_maps` computes a network's mean maps over the same sessions as
    `trained`. `progress`: a tqdm description (a bar on a terminal) and one log line per step."""
    rows = []
    total = len(layers(model))
    with tqdm(total=total, desc=progress, unit="layer", disable=None if progress else True, leave=False) as bar:
        for step, name in cascade(model):
            signals.check()  # one pass per layer: a stop need not wait for the others (the job is written again)
            means = mean_maps(model)
            for element in sorted(trained):
                rows.append({"step": step, "layer": name, "layers_randomised": step, "element": element,
                             **similarities(trained[element], means[element])})
            if progress:
                last = [row["spearman_abs"] for row in rows if row["step"] == step]
                log.info("%s: %d of %d layer(s) randomised (%s), Spearman |map| %s", progress, step, total, name,
                         ", ".join(f"{value:.3f}" for value in last[:4]) + (", ..." if len(last) > 4 else ""))
            bar.update(1)
    return rows


def verdict(rows: list[dict], trained: dict[int, torch.Tensor], threshold: float = THRESHOLD) -> dict:
    """Each element's Spearman |map| once every layer is randomised and its verdict: `fails` above
    `threshold`; `passes` below it, or when the random network's map is constant (NaN: it has changed);
    `undefined` when the trained map itself is flat (nothing to compare). The check fails when an element
    fails, is undefined when none fails but one is undefined, and passes otherwise."""
    last = max(row["step"] for row in rows)
    values = {row["element"]: row["spearman_abs"] for row in rows if row["step"] == last}
    elements = {}
    for element, value in sorted(values.items()):
        outcome = ("undefined" if _flat(trained[element]) else
                   "fails" if not math.isnan(value) and value > threshold else "passes")
        elements[str(element)] = {"spearman_abs": _number(value), "verdict": outcome}
    outcomes = {entry["verdict"] for entry in elements.values()}
    overall = next(o for o in ("fails", "undefined", "passes") if o in outcomes)
    return {"verdict": overall, "measure": "spearman_abs", "threshold": threshold, "layers": last,
            "elements": elements}


def _number(value: float) -> Optional[float]:
    return None if math.isnan(value) else round(value, 6)


def write_table(path: Path, rows: list[dict], mode: str, n_sessions: int) -> None:
    columns = ["step", "layer", "layers_randomised", f"{mode}_id", "n_sessions", *MEASURES]
    writers.write_tsv(path, columns, [
        {"step": str(row["step"]), "layer": row["layer"], "layers_randomised": str(row["layers_randomised"]),
         f"{mode}_id": str(row["element"]), "n_sessions": str(n_sessions),
         **{m: "nan" if math.isnan(row[m]) else f"{row[m]:.6f}" for m in MEASURES}} for row in rows])


def draw(path: Path, rows: list[dict], title: str, threshold: float = THRESHOLD) -> None:
    """The similarity curves (mean over elements; min-max band when there are several) against the number of
    layers randomised, the layers named on the axis; the verdict's threshold dashed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # files only: no window, pyplot's state untouched
    from matplotlib.figure import Figure

    steps = sorted({row["step"] for row in rows})
    names = [next(row["layer"] for row in rows if row["step"] == step) for step in steps]
    # Layer 0, the trained network compared with itself (1 by definition), shows where the curves start.
    rows = [{"step": 0, **{m: 1.0 for m in MEASURES}}, *rows]
    steps, names = [0, *steps], ["trained", *names]
    figure = Figure(figsize=(max(6.0, 0.35 * len(steps) + 2), 4.8), layout="constrained")
    axes = figure.add_subplot()
    for measure in MEASURES:
        values = [[row[measure] for row in rows if row["step"] == step and not math.isnan(row[measure])]
                  for step in steps]
        middle = [sum(v) / len(v) if v else math.nan for v in values]
        line, = axes.plot(steps, middle, marker="o", label=measure)
        if any(len(v) > 1 for v in values):
            axes.fill_between(steps, [min(v) if v else math.nan for v in values],
                              [max(v) if v else math.nan for v in values], color=line.get_color(), alpha=0.15)
    axes.axhline(threshold, color="grey", linestyle="--", linewidth=1, label=f"threshold ({threshold})")
    axes.axhline(0, color="black", linewidth=0.5)
    axes.set_ylim(-1.05, 1.05)
    axes.set_xticks(steps, [f"{s}: {n}" if s else n for s, n in zip(steps, names)], rotation=90, fontsize=7)
    axes.set_xlabel("layers randomised (from the output down)")
    axes.set_ylabel("similarity to the trained model's map")
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=8, loc="lower left")
    out = io.BytesIO()
    FigureCanvasAgg(figure).print_png(out)
    writers.atomic_write_bytes(path, out.getvalue())


def sanity_check(plan, data_pass, job, partial, folder: Path) -> dict:
    """Rank 0, a job's means written: the cascade over its group's first --sanity_sessions sessions, its
    files written into the (staging) `folder`; returns the verdict."""
    from ..models import load_model

    mode, method = plan.maps.mode, plan.engine.label
    count = len(data_pass.sessions)
    n = count if plan.sanity.sessions in (0, None) else min(plan.sanity.sessions, count)
    sessions = data_pass.sessions[:n]
    if n == count:  # the run's own means are over these very sessions (the ClinicaDL division left aside)
        elements = set(data_pass.element_ids)  # not the --group_by subsets' keys
        trained = {key: value for key, value in partial.means().items() if key in elements}
    else:
        trained = mean_maps(plan, data_pass, sessions, job, load_model(plan.maps, job.model_path))
    where = f"{plan.maps.split_name}-{job.split} best-{job.metric}"
    log.info("%s: sanity check over %d session(s), one pass per layer", where, n)
    rows = run_cascade(load_model(plan.maps, job.model_path),
                       lambda model: mean_maps(plan, data_pass, sessions, job, model), trained,
                       progress=f"sanity check {where}")
    write_table(folder / TSV, rows, mode, n)
    draw(folder / PNG, rows, f"Cascading randomisation: {where}, {method}, "
                             f"{plan.output.data_group} ({n} session(s))")
    result = {"n_sessions": n, **verdict(rows, trained)}
    writers.write_json(folder / SUMMARY, result)
    _report(result, where, method, mode)
    return result


def _report(result: dict, where: str, method: str, mode: str) -> None:
    def which(outcome: str) -> str:
        return ", ".join(e for e, entry in result["elements"].items() if entry["verdict"] == outcome)

    if result["verdict"] == "fails":
        log.warning("%s: the %s map does not depend on the model's parameters: it fails the sanity check "
                    "(Spearman |map| above %s with every layer randomised; %s %s)", where, method, THRESHOLD, mode,
                    which("fails"))
    elif result["verdict"] == "undefined":
        log.warning("%s: the trained model's mean %s map is constant (%s %s): the sanity check cannot compare "
                    "it; try another --target_node or method", where, method, mode, which("undefined"))
    else:
        log.info("%s: the maps change when the model's parameters are randomised: sanity check passed", where)


def mean_maps(plan, data_pass, sessions: list, job, model: nn.Module) -> dict[int, torch.Tensor]:
    """Each element's mean map of `model` over `sessions`, computed as the main run computes it: the same
    object (an Interpreter), method, target, device, batches and preprocessing."""
    from ..data.batches import make_batches
    from ..engine import EngineError
    from ..interpreter import Interpreter, sample_inputs

    data = plan.data
    interpreter = Interpreter(model, plan.device, label_code=plan.maps.params.get("label_code"))
    try:
        engine = interpreter.engine(plan.engine.maps_only(), data_pass.element_ids)
        for batch in make_batches(plan.dataset(data_pass, sessions), data.n_proc, data.reader, data.batch_size,
                                  plan.device):
            batch.wait()
            owners = [sessions[position] for position in batch.session_index]
            targets, seeds = sample_inputs(plan.engine, interpreter.label_code, owners, batch.element_ids)
            engine.accumulate(batch.images, batch.element_ids, targets=targets, seeds=seeds)
        return engine.means()
    except EngineError as error:
        raise MapsInterpretError(f"{job.model_path} (sanity check): {first_line(error)}") from None
