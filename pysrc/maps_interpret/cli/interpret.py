"""`maps-interpret`: a thin shell over ``maps_interpret.run``. Imports nothing heavy so that --help is instant."""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Optional, Sequence

from argparse_dataclass import ArgumentParser

from ..config import InterpretConfig
from ..errors import first_line
from .. import signals
from .common import DataclassParser, exit_now, report, say

PROG = "maps-interpret"


def build_parser() -> ArgumentParser:
    return DataclassParser(
        InterpretConfig,
        prog=PROG,
        description="Saliency maps of the models of a ClinicaDL MAPS over a data group "
        "(the mean map always, one map per session with --save_individual).",
        epilog="Exit status: 0 success, 1 error (bad input, missing file, no GPU...), 2 usage error, "
        "120 the maps were written but the list of result folders could not be printed (closed pipe, full disk), "
        "130 interrupted (Ctrl-C), 143 terminated (SIGTERM), 138 stopped by SIGUSR1 (a stop inside the loop over "
        "batches checkpoints first: rerun with --continue). Errors are one line on stderr; add --verbose for a "
        "traceback.",
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    config = build_parser().parse_args(argv)  # exits with status 2 on a usage error
    logging.basicConfig(
        level=logging.DEBUG if config.verbose else logging.INFO,
        # Under torchrun every rank logs to the same terminal: say which.
        format="%(asctime)s " + (f"[rank {os.environ['RANK']}] " if "TORCHELASTIC_RUN_ID" in os.environ else "")
        + "%(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    # Transparent huge pages for torch's large CPU buffers: a 3D pass allocates GBs per batch, and with 4 KiB
    # pages the kernel's page faults cost as much as a third of the pass (measured: BENCHMARKS.md). torch
    # reads this once, at its first allocation, so it is set before torch is imported.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    try:
        from ..runner.run import run  # heavy imports (torch, the C++ core) only once the command line is valid
    except ImportError as error:  # the core is missing or was built for another torch: say which
        if config.verbose:
            raise
        say(f"{PROG}: error: {first_line(error)}")
        return 1

    # SIGTERM/SIGUSR1 (a scheduler's time limit or warning, torchrun stopping the ranks) and Ctrl-C: inside the
    # loop over batches the run checkpoints after the batch in hand and stops; elsewhere it unwinds at once.
    signals.install()
    try:
        summary = run(config)
    except KeyboardInterrupt:
        say(f"{PROG}: interrupted; no partial result was left in the MAPS")
        return 130
    except signals.Stopped as stop:
        if stop.checkpoint:
            say(f"{PROG}: stopped by {stop.name}; the progress was checkpointed in {stop.checkpoint}: run the same "
                 "command with --continue to resume")
        elif stop.signum == signal.SIGINT:
            say(f"{PROG}: interrupted; no partial result was left in the MAPS")
        else:
            say(f"{PROG}: terminated ({stop.name}); no partial result was left in the MAPS")
        return stop.exit_code
    except Exception as error:
        return report(PROG, error, config.verbose)
    for folder in summary.outputs:  # stdout: the result, for scripts; logs go to stderr
        print(folder)
    return 0


def entry() -> None:
    """The console command: main(), then an immediate exit (`exit_now`)."""
    exit_now(main())


if __name__ == "__main__":
    entry()
