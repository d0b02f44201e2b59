"""Values that become file or folder names (data groups, interpretation names, participant and
session ids) must name one entry inside its folder and nothing else."""

from __future__ import annotations

import re

# Letters, digits and . _ - + only: what ClinicaDL/BIDS ids and names use in practice, and safe on
# every file system. Everything else (separators, "..", NUL, spaces, shell metacharacters) is refused.
_SAFE = re.compile(r"[A-Za-z0-9._+-]+")


def check_name(value: str, what: str, error: type[Exception]) -> str:
    """Returns `value` if it is a safe single path component, else raises `error` naming `what`."""
    if not isinstance(value, str) or not _SAFE.fullmatch(value) or value in {".", ".."} or value.startswith("-"):
        raise error(
            f"{what} {value!r} cannot be used as a file name: use only letters, digits and . _ - + "
            "(no path separators, spaces, '..', or leading '-')"
        )
    return value
