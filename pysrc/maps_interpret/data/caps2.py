"""Where ClinicaDL 2.0 finds a session's image: the NIfTI file of the CAPS that its `file_type` describes
(`<caps>/subjects/<participant>/<session>/<data_type>/<participant>_<session>_<entities>_<suffix><extension>`,
each entity, the suffix and the extension given as regular expressions), read directly: 2.0 has no tensors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Sequence

from ..errors import MapsInterpretError
from .caps import Session


def _pattern(file_type: dict, key: str, default: str) -> str:
    value = file_type.get(key, default)
    return default if value is None else str(value)


def matches(name: str, participant: str, session: str, file_type: dict) -> bool:
    """Whether a file name is the session's image of `file_type` (2.0's BIDS entity rules: every
    `with_entities` entity present and matching, no `without_entities` entity matching)."""
    suffix, extension = _pattern(file_type, "suffix", r"[A-Za-z0-9]+"), _pattern(file_type, "extension", r"\..*")
    match = re.fullmatch(rf"(?P<stem>.+)_(?P<suffix>{suffix})(?P<ext>{extension})", name)
    if match is None or "." in match.group("stem"):
        return False
    parts = match.group("stem").split("_")
    entities = dict(part.split("-", 1) for part in parts if "-" in part)
    if entities.get("sub") != participant.removeprefix("sub-") or entities.get("ses") != session.removeprefix("ses-"):
        return False
    for key, pattern in (file_type.get("with_entities") or {}).items():
        if key not in entities or not re.fullmatch(str(pattern), entities[key]):
            return False
    for key, pattern in (file_type.get("without_entities") or {}).items():
        if key in entities and re.fullmatch(str(pattern), entities[key]):
            return False
    return True


def image_file(caps: Path, participant: str, session: str, file_type: dict) -> Path:
    folder = caps / "subjects" / participant / session
    data_type = file_type.get("data_type")
    if data_type:
        folder = folder / str(data_type)
    found = sorted(p for p in folder.iterdir() if p.is_file() and matches(p.name, participant, session, file_type)) \
        if folder.is_dir() else []
    if len(found) == 1:
        return found[0]
    wanted = f"{participant}_{session}_*_{file_type.get('suffix')}{file_type.get('extension')}"
    if not found:
        raise MapsInterpretError(f"no image of {participant} {session} in {caps}: nothing in {folder} matches "
                                 f"the training's file type ({wanted}, entities {file_type.get('with_entities')})")
    raise MapsInterpretError(f"{folder}: {len(found)} files match the training's file type "
                             f"({', '.join(p.name for p in found[:3])}); keep one")


def find_sessions2(caps: Path, rows: Sequence[dict], file_type: dict, label: Optional[str] = None,
                   group: Optional[str] = None, grid: object = None) -> list[Session]:
    """Every session's NIfTI image, resolved before anything is computed or written. `grid` (the group's
    preprocessing) goes with each session: it gives the affine of the network input's voxels."""
    if not caps.is_dir():
        raise MapsInterpretError(f"CAPS folder {caps} does not exist")
    sessions = []
    for row in rows:
        path = image_file(caps, row["participant_id"], row["session_id"], file_type)
        sessions.append(Session(row["participant_id"], row["session_id"], path,
                                None if label is None else row.get(label), None if group is None else row.get(group),
                                path, grid))
    return sessions
