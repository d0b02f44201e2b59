"""Preprocessing on the compute device (`--preprocess_on device`, the default on a GPU): one pinned copy
per batch, then the cuts, checks and normalisation there, on a CUDA stream of their own."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Iterable, Iterator

import torch

from ..errors import MapsInterpretError
from .dataset import Batch, SessionDataset, SessionItem, non_finite_message, shape_message


class DevicePreprocess:
    """Raw items (`SessionDataset(raw=True)`) to batches of preprocessed elements on `device`, in ClinicaDL's
    session-major order: the items of a batch are gathered in one host buffer (pinned for a GPU), sent with
    one copy, then cut, checked and normalised there (`layout.cut`, `Preprocess.batch`: the loader's values
    bit for bit). On a GPU this runs on a stream of its own, so copies and preprocessing overlap the models'
    work; each batch carries the event its consumer waits for (`Batch.wait`). Every model of a pass then
    uses the same device copy."""

    def __init__(self, dataset: SessionDataset, device: torch.device, batch_size: int, skip: int = 0):
        self.dataset = dataset
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.skip = skip  # elements of the first session(s) left out (see make_batches)

    def _path(self, session_index: int, element_position: int) -> Path:
        session = self.dataset.sessions[session_index]
        if self.dataset.layout.prepare_dl:
            return self.dataset.layout.element_file(session.tensor_path, self.dataset.element_ids[element_position])
        return session.tensor_path

    def _elements(self, group: list[SessionItem]) -> torch.Tensor:
        cuda = self.device.type == "cuda"
        raws = [item.elements for item in group]
        host = torch.empty((sum(r.shape[0] for r in raws), *raws[0].shape[1:]), pin_memory=cuda)
        torch.cat(raws, out=host)  # memory order kept: a plain copy
        order = group[0].order
        x = host.to(self.device, non_blocking=cuda).permute(order)  # the file's layout, undone on the device
        data = self.dataset
        if data.source is not None:  # ClinicaDL 2.0: its intensity transforms, each image with its own statistics
            x = data.source.intensity(x)
        elements = x if data.layout.prepare_dl else data.layout.cut(x)
        shape = data.preprocess.output_shape(tuple(elements.shape[1:]))
        if shape != data.input_size:
            raise MapsInterpretError(shape_message(self._path(group[0].session_index, 0), shape, data.input_size))
        values, bad = data.preprocess.batch(elements.contiguous())
        if bool(bad.any()):  # on a GPU, waits for this stream only
            position = int(bad.nonzero()[0])
            n = len(data.element_ids)
            raise MapsInterpretError(non_finite_message(self._path(group[position // n].session_index, position % n)))
        return values

    def __call__(self, items: Iterable[SessionItem]) -> Iterator[Batch]:
        stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        n = max(1, len(self.dataset.element_ids))
        pending: list[tuple[torch.Tensor, list[int], list[int]]] = []  # elements, ids, session indices
        group: list[SessionItem] = []

        def waiting() -> int:
            return sum(len(ids) for _, ids, _ in pending)

        skip = self.skip

        def flush() -> None:
            nonlocal skip
            if group:
                with torch.cuda.stream(stream) if stream is not None else nullcontext():
                    values = self._elements(group)
                ids = [e for item in group for e in item.element_ids]
                sessions = [item.session_index for item in group for _ in item.element_ids]
                dropped = min(skip, len(ids))
                skip -= dropped
                if dropped < len(ids):
                    pending.append((values[dropped:], ids[dropped:], sessions[dropped:]))
                group.clear()

        def take(count: int) -> Batch:
            parts, ids, sessions = [], [], []
            while len(ids) < count:
                values, chunk_ids, chunk_sessions = pending.pop(0)
                k = min(count - len(ids), len(chunk_ids))
                parts.append(values[:k])
                ids += chunk_ids[:k]
                sessions += chunk_sessions[:k]
                if k < len(chunk_ids):
                    pending.insert(0, (values[k:], chunk_ids[k:], chunk_sessions[k:]))
            with torch.cuda.stream(stream) if stream is not None else nullcontext():
                images = parts[0] if len(parts) == 1 else torch.cat(parts)
                ready = None
                if stream is not None:
                    ready = torch.cuda.Event()
                    ready.record(stream)
            return Batch(images, ids, sessions, ready)

        for item in items:
            if item.error is not None:
                raise MapsInterpretError(item.error)
            if group and (group[0].elements.shape[1:], group[0].order) != (item.elements.shape[1:], item.order):
                flush()  # one host buffer holds tensors of one shape and layout
            group.append(item)
            if waiting() + len(group) * n >= self.batch_size:
                flush()
            while waiting() >= self.batch_size:
                yield take(self.batch_size)
        flush()
        if waiting():
            yield take(waiting())
