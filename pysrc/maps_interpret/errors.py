"""The one exception type users see: a one-line message and an exit status."""

from __future__ import annotations


class MapsInterpretError(Exception):
    """A problem the user can fix. The CLI prints ``str(error)`` as one line and exits with ``exit_code``.

    Messages say what was wrong, where (file or option), and how to fix it.
    """

    exit_code = 1


class UsageError(MapsInterpretError):
    """Options that contradict each other or are out of range (exit status 2, like argparse)."""

    exit_code = 2


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message (its type name if it has none): errors from torch
    and C++ often append context lines that do not belong in a one-line message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
