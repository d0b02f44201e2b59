"""`maps-interpret`: a thin shell over ``api.run``. Imports nothing heavy so that --help is instant."""

from __future__ import annotations

import logging
import os
import signal
import sys
from dataclasses import fields
from typing import Optional, Sequence

from argparse_dataclass import ArgumentParser

from . import signals
from .config import InterpretConfig
from .errors import MapsInterpretError, first_line

PROG = "maps-interpret"


class DataclassParser(ArgumentParser):
    """argparse-dataclass knows no ``action``: add it from the field metadata (repeatable options, with the
    element type given there, and --x/--no-x pairs, as ClinicaDL's click options behave). Shared by the
    commands of the package (each parses its own dataclass)."""

    def add_argument(self, *args, **kwargs):
        options = getattr(self, "_options_type", None)  # unset while argparse adds -h
        spec = next((f for f in fields(options) if f.name == kwargs.get("dest")), None) if options else None
        action = spec.metadata.get("action") if spec is not None else None
        if action is not None:
            kwargs.pop("required", None)
            kwargs.pop("type", None)  # the field's type (a list, a bool), not the element's
            if action == "append":
                kwargs["type"] = spec.metadata.get("type", str)
            kwargs["action"] = action
            # None marks "not given" for append (the dataclass' __post_init__ applies the default).
            kwargs["default"] = None if action == "append" else spec.default
        return super().add_argument(*args, **kwargs)


def say(line: str) -> None:
    """One line on stderr in one write: the ranks of a torchrun job share it, and `print` writes the text and
    its newline separately (two ranks' lines would interleave)."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def report(prog: str, error: Exception, verbose: bool) -> int:
    """An error as one line on stderr and its exit status. A MapsInterpretError is the user's to fix (with
    --verbose, logged with its traceback); anything else is a bug or an environment failure (with --verbose,
    raised again for the full traceback). Call it from the `except` clause."""
    if isinstance(error, MapsInterpretError):
        if verbose:
            logging.getLogger(__name__).exception("failed")
        say(f"{prog}: error: {first_line(error)}")
        return error.exit_code
    if verbose:
        raise error
    say(f"{prog}: error: {type(error).__name__}: {first_line(error)} (rerun with --verbose for the traceback)")
    return 1


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
        from . import api  # heavy imports (torch, the C++ core) only once the command line is valid
    except ImportError as error:  # the core is missing or was built for another torch: say which
        if config.verbose:
            raise
        say(f"{PROG}: error: {first_line(error)}")
        return 1

    # SIGTERM/SIGUSR1 (a scheduler's time limit or warning, torchrun stopping the ranks) and Ctrl-C: inside the
    # loop over batches the run checkpoints after the batch in hand and stops; elsewhere it unwinds at once.
    signals.install()
    try:
        summary = api.run(config)
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


def exit_now(code: int) -> None:
    """Exits without interpreter teardown. Everything is written and closed when a command's main() returns
    (writer joined, loader workers stopped, staging published); teardown (torch's modules, ~0.3-0.7 s) would
    only add to every run of a batch job."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # e.g. a closed pipe or a full disk: the printed result folders are lost
            code = code or 120  # as Python reports a failed flush at exit
    os._exit(code)


if __name__ == "__main__":
    entry()
