"""CAPS folders: where each session's tensor (and the NIfTI image it was made from) lives, and reading it.

Every path is resolved at plan time (`find_sessions`), before anything is computed or written; tensors are
read memory-mapped (`load_tensor`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..errors import MapsInterpretError, first_line

# CAPS sub-folder of each preprocessing under deeplearning_prepare_data/<mode>_based/.
PREPROCESSING_FOLDERS = {"t1-linear": "t1_linear", "flair-linear": "flair_linear", "pet-linear": "pet_linear",
                         "dwi-dti": "dwi_dti", "custom": "custom"}


def check_caps(caps: Path) -> Path:
    """ClinicaDL's sanity check: a CAPS folder exists and is not a BIDS folder."""
    if not caps.is_dir():
        raise MapsInterpretError(f"CAPS folder {caps} does not exist")
    bids_like = sorted(p.name for p in caps.iterdir() if p.name.startswith("sub-"))
    if bids_like:
        raise MapsInterpretError(f"{caps} has sub-* folders at its root ({', '.join(bids_like[:3])}): this looks "
                                 "like a BIDS folder; a CAPS keeps subjects under subjects/")
    return caps


def _case_insensitive(pattern: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in pattern)


def _find(folder: Path, pattern: str) -> list[Path]:
    return sorted(folder.glob("**/" + _case_insensitive(pattern))) if folder.is_dir() else []


def session_files(caps: Path, participant: str, session: str, prep: dict) -> tuple[Path, Optional[Path]]:
    """The `.pt` tensor of one session and the NIfTI image it was made from (None without one): the tensor
    is next to the NIfTI found by the MAPS' file pattern, in deeplearning_prepare_data/image_based/, or,
    without NIfTI, the `.pt` matching the same pattern. The NIfTI gives the maps their space (space.py)."""
    try:
        pattern = prep["file_type"]["pattern"]
    except (KeyError, TypeError):
        raise MapsInterpretError("maps.json: preprocessing_dict.file_type.pattern is missing; "
                                 "the MAPS does not say which CAPS files it was trained on") from None
    session_dir = caps / "subjects" / participant / session
    niftis = _find(session_dir, pattern)
    if len(niftis) > 1:
        raise MapsInterpretError(f"{session_dir}: {len(niftis)} files match {pattern} "
                                 f"({', '.join(p.name for p in niftis[:3])}); keep one")
    if niftis:
        folder = PREPROCESSING_FOLDERS.get(prep.get("preprocessing"), prep.get("preprocessing", ""))
        path = (session_dir / "deeplearning_prepare_data" / "image_based" / folder
                / niftis[0].name.replace(".nii.gz", ".pt"))
        if not path.is_file():
            raise MapsInterpretError(f"{path} does not exist: extract the tensors with `clinicadl prepare-data "
                                     f"image {caps} {prep.get('preprocessing')}`")
        return path, niftis[0]
    tensor_pattern = pattern.replace(".nii.gz", ".pt")
    tensors = _find(session_dir, tensor_pattern)
    if len(tensors) == 1:
        return tensors[0], None
    if len(tensors) > 1:
        raise MapsInterpretError(f"{session_dir}: {len(tensors)} tensors match {tensor_pattern} "
                                 f"({', '.join(p.name for p in tensors[:3])}); keep one")
    raise MapsInterpretError(f"no image of {participant} {session} in {caps}: nothing matches {pattern} "
                             f"or {tensor_pattern} under {session_dir}")


@dataclass(frozen=True)
class Session:
    participant_id: str
    session_id: str
    tensor_path: Path  # the session's image tensor (element files, if any, are named after it)
    label: Optional[str] = None  # its value in the group's label column (maps.json `label`), when asked for
    group: Optional[str] = None  # its value in the --group_by column, when asked for
    source_image: Optional[Path] = None  # the NIfTI the tensor was made from, if the CAPS still has it
    grid: object = None  # ClinicaDL 2.0: the preprocessing that gives the network input's affine (data/clinicadl2)


def find_sessions(caps: dict[str, Path], rows: Sequence[dict], prep: dict,
                  label: Optional[str] = None, group: Optional[str] = None) -> list[Session]:
    """Resolves every session's image tensor before anything is computed or written. `caps` maps cohort
    names to CAPS folders ({"single": caps} outside multi-cohort groups); `label` names the column whose
    value each session carries (--target_node label)."""
    for folder in caps.values():
        check_caps(folder)
    sessions = []
    for row in rows:
        cohort = row.get("cohort") or "single"
        if cohort not in caps:
            raise MapsInterpretError(f"{row['participant_id']} {row['session_id']} belongs to cohort {cohort!r}, "
                                     f"which the group's CAPS list does not name ({', '.join(sorted(caps))})")
        path, nifti = session_files(caps[cohort], row["participant_id"], row["session_id"], prep)
        sessions.append(Session(row["participant_id"], row["session_id"], path,
                                None if label is None else row.get(label), None if group is None else row.get(group),
                                nifti))
    return sessions


def load_tensor(path: Path, mmap: bool = False) -> torch.Tensor:
    """The tensor of a `.pt` file, float32; with `mmap`, a view of the file's pages in whatever float dtype it
    holds (no read into a buffer of its own: the first copy out of it is the only one)."""
    try:
        try:
            value = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError as error:
            if not (mmap and "mmap" in str(error)):
                raise
            value, mmap = torch.load(path, map_location="cpu", weights_only=True), False  # legacy format
    except Exception as error:  # unreadable, truncated, or a pickle that is not plain tensors
        raise MapsInterpretError(f"cannot read tensor {path}: {type(error).__name__}: {first_line(error)}") from None
    if not isinstance(value, torch.Tensor):
        raise MapsInterpretError(f"{path} holds a {type(value).__name__}, not a tensor")
    if not value.is_floating_point():
        raise MapsInterpretError(f"{path} holds {value.dtype} values; expected floating-point image intensities")
    return value if mmap else value.to(torch.float32)
