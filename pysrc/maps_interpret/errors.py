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
    """The line of an exception's message that says what went wrong (its type name if it has none): errors
    from torch and C++ often append context lines that do not belong in a one-line message. An op that failed
    inside a TorchScript model says so on its first line and what failed on its last, after the traceback."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if len(lines) > 1 and lines[1].startswith("Traceback of TorchScript"):
        return f"in the model's forward pass: {lines[-1]}"
    return lines[0]
