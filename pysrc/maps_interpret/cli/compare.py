"""`maps-interpret-compare`: a thin shell over ``analysis.compare.run``. Imports nothing heavy so that --help is
instant."""

from __future__ import annotations

import logging
import sys
from typing import Optional, Sequence

from argparse_dataclass import ArgumentParser

from ..config import CompareConfig
from .common import DataclassParser, exit_now, report, say

PROG = "maps-interpret-compare"


def build_parser() -> ArgumentParser:
    return DataclassParser(
        CompareConfig,
        prog=PROG,
        description="Agreement between the models of a MAPS on one interpretation: Pearson, Spearman and top-k% "
        "Dice between the maps of every pair of (split, selection metric) folders, per element; the mean and "
        "standard deviation maps across splits; a heat-map figure. Run maps-interpret first.",
        epilog="Writes agreement.tsv, summary.tsv, across_splits_*_map.pt, agreement.png and compare.json into "
        "the output folder, whose path is printed on stdout. Exit status: 0 success, 1 error (missing MAPS or "
        "interpretation, maps that cannot be compared, existing output without --overwrite), 2 usage error. "
        "Errors are one line on stderr; add --verbose for a traceback.",
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    config = build_parser().parse_args(argv)  # exits with status 2 on a usage error
    logging.basicConfig(level=logging.DEBUG if config.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    try:
        from ..analysis.compare import run  # torch and matplotlib load only once the command line is valid

        summary = run(config)
    except KeyboardInterrupt:
        say(f"{PROG}: interrupted; no partial result was left")
        return 130
    except Exception as error:
        return report(PROG, error, config.verbose)
    print(summary.output)  # stdout: the result, for scripts; logs go to stderr
    return 0


def entry() -> None:
    """The console command: main(), then an immediate exit, as `maps-interpret` exits."""
    exit_now(main())


if __name__ == "__main__":
    entry()
