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
