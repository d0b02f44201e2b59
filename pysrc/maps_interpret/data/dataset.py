"""The per-session dataset of a pass: each session's image read once, cut into its elements and preprocessed
(or, for `--preprocess_on device`, handed over raw), and the batches the engines take."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch.utils.data import Dataset, get_worker_info

from ..errors import MapsInterpretError
from .caps import Session, load_tensor
from .transforms import Preprocess, memory_order


def shape_message(path: Path, shape: tuple, input_size: tuple) -> str:
    return (f"{path}: after preprocessing the element has shape {shape} but the model was trained on "
            f"{input_size} (maps.json input_size)")


def non_finite_message(path: Path) -> str:
    return (f"{path}: the preprocessed element holds NaN or infinite values (a constant image cannot be min-max "
            "normalised); exclude this session from the TSV")


def storage_order(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """`x` (N, ...)'s values as they lie in memory, as a contiguous tensor whose leading axis is still N (so
    that items concatenate along it), and the `order` with which `stored.permute(order)` is `x` again; a
    contiguous copy and the identity when the strides are no permutation of a contiguous layout. A GPU undoes
    the permutation far faster than a CPU core."""
    perm = memory_order(x)
    stored = x.permute(perm)
    if not stored.is_contiguous():
        return x.contiguous(), tuple(range(x.dim()))
    order = [0] * x.dim()
    for position, axis in enumerate(perm):
        order[axis] = position
    return stored, tuple(order)


@dataclass
class SessionItem:
    """One session: its preprocessed elements (E, C, *spatial); or, with `raw`, what was read for them (the
    image as (1, C, *spatial), or the E pre-extracted elements) in the order of the file's memory (see
    `order`), left to `DevicePreprocess`; or the error that prevented either."""

    elements: Optional[torch.Tensor]
    element_ids: list[int]
    session_index: int
    error: Optional[str] = None
    raw: bool = False
    order: tuple[int, ...] = ()  # raw items: `elements` is stored in memory order; permute(order) gives (N, C, ...)


class SessionDataset(Dataset):
    """One item per session (its image is read once, whatever the number of elements); `rebatch` cuts
    the stream of elements into batches exactly as ClinicaDL's flat, session-major dataset does.

    With `raw`, items hold the tensors as read (made contiguous) and the cuts, checks and normalisation
    happen later on the compute device (`DevicePreprocess`); otherwise here, in the loader worker."""

    def __init__(self, sessions: Sequence[Session], layout, preprocess: Preprocess, input_size: Sequence[int],
                 element_ids: Sequence[int], raw: bool = False, source=None):
        self.sessions = list(sessions)
        # ClinicaDL 2.0 (data/clinicadl2.Pipeline2): sessions are NIfTI files, read with its transforms (raw: the
        # spatial ones only; `intensity` then runs on the compute device, DevicePreprocess)
        self.source = source
        self.layout = layout
        self.preprocess = preprocess
        self.input_size = tuple(input_size)
        self.element_ids = list(element_ids)
        self.raw = raw

    def __len__(self) -> int:
        return len(self.sessions)

    @property
    def item_bytes(self) -> int:
        """Size of what one item hands over (float32): the preprocessed elements, or what was read."""
        elements = 4 * len(self.element_ids) * math.prod(self.input_size)
        if not self.raw or self.layout.prepare_dl or not self.sessions:
            return elements
        if self.source is not None:
            import nibabel as nib

            return max(elements, 4 * math.prod(nib.load(str(self.sessions[0].tensor_path)).shape))  # the header
        image = load_tensor(self.sessions[0].tensor_path, mmap=True)  # the header only
        return max(elements, 4 * image.numel())

    def __getitem__(self, index: int) -> SessionItem:
        return self.read_into(index)

    def read_into(self, index: int, out: Optional[torch.Tensor] = None) -> SessionItem:
        """Item `index`; its preprocessed elements are written into `out` (E, *input_size) when given (a
        batch's rows: `batches_in_threads`), else into a new tensor."""
        session = self.sessions[index]
        # In a loader worker the result goes to the main process through shared memory: writing it there
        # from the start saves the copy torch would make when sending it (one per image).
        shared = get_worker_info() is not None and out is None
        try:
            read, paths = self._read(session)
            if self.raw:  # a plain copy out of the file's pages: the transposition is left to the device
                stored, order = storage_order(read)
                out = torch.empty(stored.shape)
                if shared:
                    out.share_memory_()
                return SessionItem(out.copy_(stored), list(self.element_ids), index, raw=True, order=order)
            elements = read if self.layout.prepare_dl else self.layout.cut(read)
            shape = self.preprocess.output_shape(tuple(elements.shape[1:]))
            if shape != self.input_size:
                raise MapsInterpretError(shape_message(paths[0], shape, self.input_size))
            if out is None:
                out = torch.empty((len(self.element_ids), *self.input_size))
                if shared:
                    out.share_memory_()
            # Straight from the file's pages into `out`, in one pass (whatever the file's layout).
            values, bad = self.preprocess.batch(elements, out=out)
            if bool(bad.any()):
                raise MapsInterpretError(non_finite_message(paths[int(bad.nonzero()[0]) % len(paths)]))
            return SessionItem(values, list(self.element_ids), index)
        except MapsInterpretError as error:
            return SessionItem(None, [], index, str(error))

    def _read(self, session: Session) -> tuple[torch.Tensor, list[Path]]:
        """The session's image as (1, C, *spatial), or its pre-extracted elements (E, C, *spatial), with the
        file(s) they come from."""
        if self.layout.prepare_dl:
            paths, tensors = [], []
            for element in self.element_ids:
                path = self.layout.element_file(session.tensor_path, element)
                if not path.is_file():
                    raise MapsInterpretError(f"{path} does not exist (maps.json says prepare_dl: true): extract "
                                             f"the {self.layout.mode} tensors with `clinicadl prepare-data`")
                tensor = load_tensor(path, mmap=True)
                shape = self.preprocess.output_shape(tuple(tensor.shape))
                if shape != self.input_size:
                    raise MapsInterpretError(shape_message(path, shape, self.input_size))
                paths.append(path)
                tensors.append(tensor)
            return torch.stack(tensors).float(), paths
        if self.source is not None:
            image = (self.source.spatial_image if self.raw else self.source.image)(session.tensor_path)
        else:
            image = load_tensor(session.tensor_path, mmap=True)
        if image.dtype != torch.float32:  # ClinicaDL's transforms run on float32 values
            image = image.float()
        ids = self.layout.element_ids(tuple(image.shape))
        if ids != self.element_ids:
            raise MapsInterpretError(f"{session.tensor_path}: image of shape {tuple(image.shape)} gives "
                                     f"{len(ids)} {self.layout.mode}(s), the first image of the group "
                                     f"{len(self.element_ids)}; all images must have the same size")
        return image.unsqueeze(0), [session.tensor_path]


@dataclass
class Batch:
    images: torch.Tensor
    element_ids: list[int]
    session_index: list[int]
    ready: Optional["torch.cuda.Event"] = None  # recorded on the stream that made `images` (GPU only)

    def wait(self) -> None:
        """Makes the current CUDA stream wait until `images` is ready, and keeps its memory from being reused
        before the work queued on that stream is done."""
        if self.ready is not None:
            stream = torch.cuda.current_stream(self.images.device)
            stream.wait_event(self.ready)
            self.images.record_stream(stream)
