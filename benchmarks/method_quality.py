"""Each method on the demo cohort, measured: does it pass the sanity check (the cascading randomisation: its maps
must change once the network's layers are re-initialised), how faithful its maps are (deletion areas by |map|
against a random order, --evaluate) and where they point (relevance mass in the planted atrophy against its
volume fraction). One run per method with --sanity_check and --evaluate on the demo's test group.

    python benchmarks/method_quality.py [--demo demo] [--out bench-out]

Needs the demo (`make demo`). Prints a Markdown table; writes OUT/method_quality.md.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

from bench_table import publish

from maps_interpret.cli import main as interpret
from maps_interpret.methods import METHODS

# Parameters that keep the demo's runs short; everything else is the method's default.
PARAMETERS = {"smoothgrad": ["--n_samples", "8"], "integrated-gradients": ["--n_steps", "16"],
              "occlusion": ["--occlusion_size", "6", "--occlusion_stride", "6", "--chunk_size", "16"]}


def summary(folder: Path) -> dict[str, float]:
    rows = csv.DictReader(io.StringIO((folder / "evaluation_summary.tsv").read_text()), delimiter="\t")
    return {r["measure"]: float(r["mean"]) for r in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("demo"))
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    args = parser.parse_args()
    maps, mask = args.demo / "maps", args.demo / "data" / "planted_atrophy_mask.nii.gz"
    lines = ["Demo cohort (56x69x60, Conv5_FC3 trained 20 epochs), split 0's model on the 11 test sessions, "
             "--target_node predicted; sanity check on 2 sessions", "",
             "| method | sanity check | deletion AUC by \\|map\\| | random order | relevance mass in the planted "
             "region (chance) |", "|---|---|---|---|---|"]
    for name in METHODS:
        run = f"q-{name.replace('+', 'p')}"
        code = interpret([str(maps), "test", run, name, *PARAMETERS.get(name, []), "--target_node", "predicted",
                          "--sanity_check", "--sanity_sessions", "2", "--evaluate", "--evaluation_mask", str(mask),
                          "--selection_metrics", "loss", "--no-gpu", "--overwrite_name"])
        if code != 0:
            raise SystemExit(f"{name}: the run failed (exit {code})")
        folder = maps / "split-0" / "best-loss" / "test" / f"interpret-{run}"
        verdict = json.loads((folder / "sanity_check.json").read_text())["verdict"]
        found = summary(folder)
        lines.append(f"| `{name}` | {verdict} | {found['deletion_abs_auc']:.3f} | {found['deletion_random_auc']:.3f} "
                     f"| {found['relevance_mass']:.3f} ({found['mask_fraction']:.3f}) |")
    publish(lines, args.out, "method_quality.md")


if __name__ == "__main__":
    main()
