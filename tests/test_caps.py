"""CAPS tensor resolution and the preprocessing of each element (ClinicaDL's evaluation transforms)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from maps_interpret.data.dataset import SessionDataset
from maps_interpret.data.caps import Session, check_caps, session_files
from maps_interpret.data.batches import prefetch, rebatch
from maps_interpret.data.elements import ImageLayout
from maps_interpret.errors import MapsInterpretError
from maps_interpret.data.transforms import Preprocess, min_max, nan_removal, size_reduction

PREP = {"preprocessing": "t1-linear",
        "file_type": {"pattern": "*space-MNI152NLin2009cSym_desc-Crop_res-1x1x1_T1w.nii.gz"}}
NAME = "sub-01_ses-M000_space-MNI152NLin2009cSym_desc-Crop_res-1x1x1_T1w"


def tensor_of(caps, participant, session, prep):
    """The `.pt` tensor of one session (`session_files` also gives its source NIfTI)."""
    return session_files(caps, participant, session, prep)[0]


def session_dir(caps: Path) -> Path:
    folder = caps / "subjects" / "sub-01" / "ses-M000"
    folder.mkdir(parents=True)
    return folder


def test_tensor_next_to_the_nifti(tmp_path):
    folder = session_dir(tmp_path)
    (folder / "t1_linear").mkdir()
    (folder / "t1_linear" / f"{NAME}.nii.gz").write_bytes(b"")
    tensor = folder / "deeplearning_prepare_data" / "image_based" / "t1_linear" / f"{NAME}.pt"
    with pytest.raises(MapsInterpretError, match="extract the tensors with `clinicadl prepare-data image"):
        tensor_of(tmp_path, "sub-01", "ses-M000", PREP)
    tensor.parent.mkdir(parents=True)
    tensor.write_bytes(b"")
    assert tensor_of(tmp_path, "sub-01", "ses-M000", PREP) == tensor


def test_tensor_only_caps_and_case_insensitive_pattern(tmp_path):
    folder = session_dir(tmp_path) / "deeplearning_prepare_data" / "image_based" / "t1_linear"
    folder.mkdir(parents=True)
    tensor = folder / f"{NAME.replace('desc-Crop', 'DESC-crop')}.pt"
    tensor.write_bytes(b"")
    assert tensor_of(tmp_path, "sub-01", "ses-M000", PREP) == tensor
    (folder.parent / "copy").mkdir()
    (folder.parent / "copy" / f"{NAME}.pt").write_bytes(b"")
    with pytest.raises(MapsInterpretError, match="2 tensors match"):
        tensor_of(tmp_path, "sub-01", "ses-M000", PREP)


def test_missing_image_and_bids_folder(tmp_path):
    session_dir(tmp_path)
    with pytest.raises(MapsInterpretError, match="no image of sub-01 ses-M000"):
        tensor_of(tmp_path, "sub-01", "ses-M000", PREP)
    (tmp_path / "sub-01").mkdir()
    with pytest.raises(MapsInterpretError, match="looks like a BIDS folder"):
        check_caps(tmp_path)
    with pytest.raises(MapsInterpretError, match="does not exist"):
        check_caps(tmp_path / "nothing")


def test_transforms_follow_clinicadl():
    x = torch.tensor([[1.0, float("nan")], [float("inf"), 3.0]])
    assert torch.equal(nan_removal(x), torch.tensor([[1.0, 0.0], [torch.finfo(torch.float32).max, 3.0]]))
    only_inf = torch.tensor([1.0, float("inf")])
    assert nan_removal(only_inf) is only_inf  # untouched without NaN, as in ClinicaDL
    y = torch.tensor([[2.0, 4.0], [6.0, 10.0]])
    assert torch.equal(min_max(y), (y - 2) / 8)
    big = torch.arange(169 * 208 * 179, dtype=torch.float32).view(1, 169, 208, 179)
    reduced = size_reduction(big, 2)
    assert reduced.shape == (1, 80, 96, 80) and reduced[0, 0, 0, 0] == big[0, 4, 8, 8]
    assert Preprocess(normalize=True, size_reduction_factor=3)(big).shape == (1, 56, 64, 56)


def test_preprocess_from_maps_parameters():
    assert Preprocess.from_params({"normalize": False, "size_reduction": False, "size_reduction_factor": 2}) == \
        Preprocess(normalize=False, size_reduction_factor=None)
    with pytest.raises(MapsInterpretError, match="size_reduction_factor 7"):
        Preprocess.from_params({"normalize": True, "size_reduction": True, "size_reduction_factor": 7})


def test_dataset_reports_bad_elements_as_one_line(tmp_path):
    good, constant, wrong, text = (tmp_path / f"{n}.pt" for n in ("good", "constant", "wrong", "text"))
    torch.save(torch.rand(1, 4, 5, 6), good)
    torch.save(torch.ones(1, 4, 5, 6), constant)
    torch.save(torch.rand(1, 4, 5, 7), wrong)
    text.write_text("not a tensor")
    sessions = [Session("sub-01", "ses-M000", p) for p in (good, constant, wrong, text)]
    dataset = SessionDataset(sessions, ImageLayout(), Preprocess(), (1, 4, 5, 6), [0])
    item = dataset[0]
    assert item.error is None and item.element_ids == [0] and item.session_index == 0
    assert item.elements.shape == (1, 1, 4, 5, 6) and item.elements.min() == 0 and item.elements.max() == 1
    assert "constant image cannot be min-max normalised" in dataset[1].error
    assert "has shape (1, 4, 5, 7) but the model was trained on (1, 4, 5, 6)" in dataset[2].error
    assert "cannot read tensor" in dataset[3].error
    batches = list(rebatch([dataset[0], dataset[0], dataset[0]], batch_size=2))
    assert [b.images.shape[0] for b in batches] == [2, 1] and batches[1].session_index == [0]
    with pytest.raises(MapsInterpretError, match="constant image"):
        list(rebatch([dataset[0], dataset[1]], batch_size=1))


def test_prefetch_keeps_order_raises_in_order_and_stops_when_closed():
    import threading
    import time

    assert list(prefetch(iter(range(7)), depth=2)) == list(range(7))
    assert list(prefetch(iter(range(3)), depth=0)) == [0, 1, 2]

    def failing():
        yield 1
        yield 2
        raise MapsInterpretError("session 3 is unreadable")

    seen = []
    with pytest.raises(MapsInterpretError, match="session 3 is unreadable"):
        for item in prefetch(failing(), depth=4):
            seen.append(item)
    assert seen == [1, 2]  # the items before the error, then the error itself

    produced = []

    def endless():
        for i in range(10_000):
            produced.append(i)
            yield i

    stream = prefetch(endless(), depth=2)
    assert next(stream) == 0
    stream.close()  # the consumer stops early (an engine error, Ctrl-C): the producer must stop too
    deadline = time.monotonic() + 5  # wait for the state (the thread gone), not for a time
    while any(t.name == "maps-interpret-prefetch" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.name == "maps-interpret-prefetch" and t.is_alive() for t in threading.enumerate())
    assert len(produced) <= 5


def test_worker_outputs_equal_main_process_outputs(tmp_path):
    """In loader workers the dataset writes into shared memory directly; the values are the same as in the
    main process (and as ClinicaDL's plain min-max expression)."""
    from torch.utils.data import DataLoader

    images = [torch.randn(1, 6, 7, 5) * 50 + 3 for _ in range(3)]
    images[1][0, 1, 2, 3] = float("nan")
    sessions = []
    for i, image in enumerate(images):
        path = tmp_path / f"sub-{i}.pt"
        torch.save(image, path)
        sessions.append(Session(f"sub-{i}", "ses-M000", path))
    dataset = SharedInWorker(sessions, ImageLayout(), Preprocess(), (1, 6, 7, 5), [0])
    here = [dataset[i] for i in range(3)]
    there = list(DataLoader(dataset, batch_size=None, num_workers=2))
    for image, (a, shared_here), (b, shared_there) in zip(images, here, there):
        clean = torch.nan_to_num(image) if torch.isnan(image).any() else image
        assert torch.equal(a.elements[0], (clean - clean.min()) / (clean.max() - clean.min()))
        assert torch.equal(a.elements, b.elements)
        assert not shared_here and shared_there  # made in shared memory by the worker itself: no copy to send


class SharedInWorker(SessionDataset):
    """Reports whether the item was already in shared memory where it was made (every tensor a worker sends
    is shared once received, so only the worker can tell)."""

    def __getitem__(self, index):
        item = super().__getitem__(index)
        return item, item.elements.is_shared()


def test_prefetch_over_loader_workers_stops_cleanly_when_closed(tmp_path):
    """The GPU path: workers started from the main thread, batches formed in the prefetch thread; an early
    stop (an engine error) leaves no thread and, once the loader is released, no worker process."""
    import gc
    import multiprocessing
    import threading

    from torch.utils.data import DataLoader

    sessions = []
    for i in range(12):
        path = tmp_path / f"sub-{i}.pt"
        torch.save(torch.randn(1, 5, 6, 7), path)
        sessions.append(Session(f"sub-{i}", "ses-M000", path))
    dataset = SessionDataset(sessions, ImageLayout(), Preprocess(), (1, 5, 6, 7), [0])
    stream = prefetch(rebatch(iter(DataLoader(dataset, batch_size=None, num_workers=2)), 2), depth=2)
    first = next(stream)
    assert first.images.shape == (2, 1, 5, 6, 7) and first.session_index == [0, 1]
    stream.close()
    assert not any(t.name == "maps-interpret-prefetch" and t.is_alive() for t in threading.enumerate())
    del stream
    gc.collect()
    for child in multiprocessing.active_children():
        child.join(timeout=10)
    assert multiprocessing.active_children() == []
    everything = list(prefetch(rebatch(iter(DataLoader(dataset, batch_size=None, num_workers=2)), 5), depth=2))
    assert [b.session_index for b in everything] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11]]


def saved_sessions(tmp_path, n: int, shape=(1, 5, 6, 7)) -> list[Session]:
    sessions = []
    for i in range(n):
        path = tmp_path / f"sub-{i}.pt"
        torch.save(torch.randn(*shape) * (i + 1), path)
        sessions.append(Session(f"sub-{i}", "ses-M000", path))
    return sessions


@pytest.mark.parametrize("free_mib,expected", [(None, "processes"), (1 << 20, "processes"), (1, "threads")])
def test_loader_processes_or_threads_by_free_shared_memory(tmp_path, monkeypatch, caplog, free_mib, expected):
    """A container's default /dev/shm (64 MB) cannot hold what loader processes keep in flight at full
    image size: then the sessions are read in threads, same items in the same order."""
    import threading

    from maps_interpret.data import readers as caps

    dataset = SessionDataset(saved_sessions(tmp_path, 9), ImageLayout(), Preprocess(), (1, 5, 6, 7), [0])
    assert dataset.item_bytes == 4 * 5 * 6 * 7
    monkeypatch.setattr(caps, "shared_memory_free", lambda: None if free_mib is None else free_mib * dataset.item_bytes)
    used = []
    real_loader, real_get = caps.DataLoader, SessionDataset.__getitem__
    monkeypatch.setattr(caps, "DataLoader", lambda *a, **k: used.append("processes") or real_loader(*a, **k))
    monkeypatch.setattr(SessionDataset, "__getitem__", lambda self, i: (
        used.append(threading.current_thread().name), real_get(self, i))[1])
    with caplog.at_level("INFO", logger="maps_interpret"):
        items = list(caps.session_items(dataset, 2, "processes"))
    here = [real_get(dataset, i) for i in range(9)]
    assert [item.session_index for item in items] == list(range(9))
    assert all(torch.equal(a.elements, b.elements) for a, b in zip(items, here))
    if expected == "threads":
        assert "processes" not in used and {n.rsplit("_", 1)[0] for n in used} == {"maps-interpret-read"}
        assert "reading in 2 thread(s) instead; give a container --shm-size=1g or --ipc=host" in caplog.text
    else:
        assert used[0] == "processes" and "thread(s) instead" not in caplog.text


def test_threaded_reading_stops_when_closed(tmp_path):
    import threading
    import time

    from maps_interpret.data.readers import _read_in_threads

    dataset = SessionDataset(saved_sessions(tmp_path, 20), ImageLayout(), Preprocess(), (1, 5, 6, 7), [0])
    stream = _read_in_threads(dataset, 2, depth=4)
    assert next(stream).session_index == 0
    stream.close()
    deadline = time.monotonic() + 5
    while any(t.name.startswith("maps-interpret-read") for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name.startswith("maps-interpret-read") for t in threading.enumerate())
