"""What both commands share: the dataclass parser, one-line errors, the fast exit."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import fields

from argparse_dataclass import ArgumentParser

from ..errors import MapsInterpretError, first_line


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

    def error(self, message: str):
        """A usage error as one line and a hint, not argparse's whole usage block (exit status 2)."""
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


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
