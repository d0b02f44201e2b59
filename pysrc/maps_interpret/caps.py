"""CAPS folders: where each session's tensor lives, and the dataset that feeds the engine.

Image mode follows ClinicaDL 1.6.1: the element is the whole `.pt` tensor of the session, (C, *spatial),
preprocessed by `transforms.Preprocess`; batches run over the sessions in the order of the data group.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch.utils.data import Dataset

from .errors import MapsInterpretError
from .transforms import Preprocess

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


def image_tensor_path(caps: Path, participant: str, session: str, prep: dict) -> Path:
    """The `.pt` tensor of one session: next to the NIfTI found by the MAPS' file pattern in
    deeplearning_prepare_data/image_based/, or, without NIfTI, the `.pt` matching the same pattern."""
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
        return path
    tensor_pattern = pattern.replace(".nii.gz", ".pt")
    tensors = _find(session_dir, tensor_pattern)
    if len(tensors) == 1:
        return tensors[0]
    if len(tensors) > 1:
        raise MapsInterpretError(f"{session_dir}: {len(tensors)} tensors match {tensor_pattern} "
                                 f"({', '.join(p.name for p in tensors[:3])}); keep one")
    raise MapsInterpretError(f"no image of {participant} {session} in {caps}: nothing matches {pattern} "
                             f"or {tensor_pattern} under {session_dir}")


@dataclass(frozen=True)
class Session:
    participant_id: str
    session_id: str
    tensor_path: Path


def find_sessions(caps: Path, rows: Sequence[dict], prep: dict) -> list[Session]:
    """Resolves every session's tensor before anything is computed or written."""
    check_caps(caps)
    return [Session(row["participant_id"], row["session_id"],
                    image_tensor_path(caps, row["participant_id"], row["session_id"], prep)) for row in rows]


@dataclass
class Batch:
    images: Optional[torch.Tensor]
    element_ids: list[int]
    session_index: list[int]
    error: Optional[str] = None

    def pin_memory(self) -> "Batch":
        if self.images is not None:
            self.images = self.images.pin_memory()
        return self


def collate(items: list[tuple]) -> Batch:
    """Stacks a batch; an element that failed to load turns the batch into an error (the main process
    raises it as one line, instead of a worker traceback)."""
    errors = [item[3] for item in items if item[3] is not None]
    if errors:
        return Batch(None, [], [], error=errors[0])
    return Batch(torch.stack([item[0] for item in items]), [item[1] for item in items], [item[2] for item in items])


def load_tensor(path: Path) -> torch.Tensor:
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unreadable, truncated, or a pickle that is not plain tensors
        raise MapsInterpretError(f"cannot read tensor {path}: {type(error).__name__}: "
                                 f"{str(error).splitlines()[0] if str(error) else ''}") from None
    if not isinstance(value, torch.Tensor):
        raise MapsInterpretError(f"{path} holds a {type(value).__name__}, not a tensor")
    if not value.is_floating_point():
        raise MapsInterpretError(f"{path} holds {value.dtype} values; expected floating-point image intensities")
    return value.to(torch.float32)


class ImageDataset(Dataset):
    """One element per session: the preprocessed image, element id 0."""

    def __init__(self, sessions: Sequence[Session], preprocess: Preprocess, input_size: Sequence[int]):
        self.sessions = list(sessions)
        self.preprocess = preprocess
        self.input_size = tuple(input_size)

    def __len__(self) -> int:
        return len(self.sessions)

    def __getitem__(self, index: int) -> tuple:
        session = self.sessions[index]
        try:
            image = self.preprocess(load_tensor(session.tensor_path))
            check_element(image, self.input_size, session.tensor_path)
        except MapsInterpretError as error:
            return None, 0, index, str(error)
        return image, 0, index, None


def check_element(x: torch.Tensor, input_size: tuple, path: Path) -> None:
    if tuple(x.shape) != input_size:
        raise MapsInterpretError(f"{path}: after preprocessing the element has shape {tuple(x.shape)} but the "
                                 f"model was trained on {input_size} (maps.json input_size)")
    if not torch.isfinite(x).all():
        raise MapsInterpretError(f"{path}: the preprocessed image holds NaN or infinite values (a constant "
                                 "image cannot be min-max normalised); exclude this session from the TSV")
