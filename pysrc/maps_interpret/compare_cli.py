"""`maps-interpret-compare`: a thin shell over ``compare.run``. Imports nothing heavy so that --help is instant."""

from __future__ import annotations

import logging
import os
import sys
from typing import Optional, Sequence

from argparse_dataclass import ArgumentParser

from .cli import DataclassParser
from .compare import CompareConfig
from .errors import MapsInterpretError, first_line

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


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def main(argv: Optional[Sequence[str]] = None) -> int:
    config = build_parser().parse_args(argv)  # exits with status 2 on a usage error
    logging.basicConfig(level=logging.DEBUG if config.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    try:
        from . import compare  # torch and matplotlib load only once the command line is valid

        summary = compare.run(config)
    except MapsInterpretError as error:
        if config.verbose:
            logging.getLogger(__name__).exception("failed")
        _say(f"{PROG}: error: {first_line(error)}")
        return error.exit_code
    except KeyboardInterrupt:
        _say(f"{PROG}: interrupted; no partial result was left")
        return 130
    except Exception as error:  # a bug or an environment failure: still one line unless --verbose
        if config.verbose:
            raise
        _say(f"{PROG}: error: {type(error).__name__}: {first_line(error)} (rerun with --verbose for the traceback)")
        return 1
    print(summary.output)  # stdout: the result, for scripts; logs go to stderr
    return 0


def entry() -> None:
    """The console command: main(), then an immediate exit, as `maps-interpret` does (everything is written and
    closed when main() returns; interpreter teardown would only add time)."""
    code = main()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or a full disk: the printed folder is lost
            code = code or 120
    os._exit(code)


if __name__ == "__main__":
    entry()
