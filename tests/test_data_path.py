"""The two places where elements are cut, checked and normalised, and what they must agree on bit for bit:
the loader workers (`SessionDataset`, CPU runs) and the compute device (`SessionDataset(raw=True)` then
`DevicePreprocess`, GPU runs; run here on the CPU). Both use the batched forms (`layout.cut`,
`Preprocess.batch`), which must equal ClinicaDL's element-by-element transforms (`extract`, `Preprocess()`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from maps_interpret.data.device import DevicePreprocess
from maps_interpret.data.caps import Session
from maps_interpret.data.dataset import SessionDataset
from maps_interpret.data.batches import rebatch
from maps_interpret.data.elements import ImageLayout, PatchLayout, RoiLayout, SliceLayout
from maps_interpret.errors import MapsInterpretError
from maps_interpret.data.transforms import Preprocess


def transposed(x: torch.Tensor) -> torch.Tensor:
    """The same values with the strides `clinicadl prepare-data` writes (the first spatial axis fastest)."""
    order = list(range(x.dim()))
    flipped = order[:-3] + order[-3:][::-1]
    return x.permute(flipped).contiguous().permute(flipped)


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.nan_to_num(nan=-7.0), b.nan_to_num(nan=-7.0))


def elements_with_every_case() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    x = 100 * torch.rand((6, 1, 9, 27, 7), generator=g) - 20  # 27 rows: several slabs, the last one short
    x[1, 0, 2, 3, 4] = float("nan")  # NaN -> 0, then normalised
    x[2, 0, 1, 1, 1] = float("inf")  # inf without NaN: kept, so the element is not finite
    x[3] = 5.0  # constant: 0 / 0
    x[4, 0, 0, 0, 0], x[4, 0, 1, 0, 0] = float("nan"), float("-inf")  # NaN and inf: inf -> -max, finite
    return x


@pytest.mark.parametrize("normalize", [True, False])
def test_batch_equals_each_element_transformed_alone(normalize):
    x = elements_with_every_case()
    preprocess = Preprocess(normalize=normalize)
    for layout in (x, transposed(x)):  # transposed: reduced in memory order, normalised in slabs
        values, bad = preprocess.batch(layout, out=torch.empty_like(x) if layout is x else None)
        assert values.is_contiguous()
        for i in range(x.shape[0]):
            reference = preprocess(x[i])
            assert same(values[i], reference), i
            assert bool(bad[i]) == (not torch.isfinite(reference).all()), i
    assert bad.tolist() == ([False, False, True, True, False, False] if normalize else
                            [False, False, True, False, False, False])


def test_batch_writes_into_out_and_in_place():
    x = elements_with_every_case()[[0, 1, 5]]
    expected, _ = Preprocess().batch(x.clone())
    out = torch.empty_like(x)
    assert Preprocess().batch(x, out=out)[0] is out and torch.equal(out, expected)
    inplace = x.clone()
    assert Preprocess().batch(inplace, out=inplace)[0] is inplace and torch.equal(inplace, expected)


def test_batch_with_size_reduction_equals_each_element():
    g = torch.Generator().manual_seed(4)
    x = torch.rand((2, 1, 169, 208, 179), generator=g)
    x[1, 0, 100, 100, 100] = float("nan")
    preprocess = Preprocess(normalize=True, size_reduction_factor=3)
    out = torch.empty((2, 1, 56, 64, 56))
    values, bad = preprocess.batch(x, out=out)
    assert values is out and not bad.any()
    for i in range(2):
        assert torch.equal(values[i], preprocess(x[i]))
    assert preprocess.output_shape((1, 169, 208, 179)) == (1, 56, 64, 56)


def roi_layout(uncropped: bool) -> RoiLayout:
    shape = (12, 10, 9)
    left, right = np.zeros(shape), np.zeros(shape)
    left[2:7, 1:6, 3:8] = 1
    right[6:11, 4:9, 0:5] = 1
    right[7, 5, 1] = 0  # a hole: the crop is still the bounding box
    return RoiLayout((left, right), (Path("left"), Path("right")), uncropped)


LAYOUTS = {
    "image": ImageLayout(),
    "patch-overlapping": PatchLayout(size=4, stride=3),
    "patch-tiled": PatchLayout(size=3, stride=3),
    "slice-sag-rgb": SliceLayout(0, "rgb", (2, 1)),
    "slice-cor-single": SliceLayout(1, "single", (0, 0), num_slices=4),
    "slice-axi-rgb": SliceLayout(2, "rgb", (3, 3)),
    "roi-cropped": roi_layout(False),
    "roi-uncropped": roi_layout(True),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_cut_equals_extract_element_by_element(name):
    layout = LAYOUTS[name]
    images = transposed(torch.randn((3, 1, 12, 10, 9), generator=torch.Generator().manual_seed(5)))
    ids = layout.element_ids(tuple(images.shape[1:]))
    expected = torch.stack([layout.extract(image, element) for image in images for element in ids])
    cut = layout.cut(images)
    assert cut.shape == expected.shape and torch.equal(cut, expected)


def saved_sessions(folder: Path, n: int, shape=(1, 12, 10, 9), bad: dict | None = None) -> list[Session]:
    g = torch.Generator().manual_seed(6)
    out = []
    for i in range(n):
        image = 50 * torch.rand(shape, generator=g)
        if bad and i in bad:
            image = bad[i](image)
        path = folder / f"sub-{i:02d}_ses-M000_T1w.pt"
        torch.save(transposed(image), path)
        out.append(Session(f"sub-{i:02d}", "ses-M000", path))
    return out


def datasets(sessions, layout, input_size):
    ids = layout.element_ids((1, 12, 10, 9))
    return (SessionDataset(sessions, layout, Preprocess(), input_size, ids),
            SessionDataset(sessions, layout, Preprocess(), input_size, ids, raw=True))


@pytest.mark.parametrize("name,input_size", [("image", (1, 12, 10, 9)), ("patch-overlapping", (1, 4, 4, 4)),
                                             ("slice-sag-rgb", (3, 10, 9)), ("roi-cropped", (1, 5, 5, 5))])
@pytest.mark.parametrize("batch_size", [1, 2, 5, 64])
def test_device_batches_equal_the_loaders(tmp_path, name, input_size, batch_size):
    loader, raw = datasets(saved_sessions(tmp_path, 5), LAYOUTS[name], input_size)
    expected = list(rebatch((loader[i] for i in range(len(loader))), batch_size))
    got = list(DevicePreprocess(raw, torch.device("cpu"), batch_size)(raw[i] for i in range(len(raw))))
    assert [b.element_ids for b in got] == [b.element_ids for b in expected]
    assert [b.session_index for b in got] == [b.session_index for b in expected]
    for ours, theirs in zip(got, expected):
        assert torch.equal(ours.images, theirs.images) and ours.ready is None
    item = raw[0]  # the file's memory order, undone on the device
    assert item.raw and item.elements.is_contiguous() and item.elements.shape == (1, 1, 9, 10, 12)
    assert item.elements.permute(item.order).shape == (1, 1, 12, 10, 9)


def test_device_preprocessing_reports_what_the_loader_reports(tmp_path):
    constant = {3: lambda image: torch.full_like(image, 2.0)}
    loader, raw = datasets(saved_sessions(tmp_path, 5, bad=constant), ImageLayout(), (1, 12, 10, 9))
    assert "sub-03_ses-M000_T1w.pt: the preprocessed element holds NaN or infinite values" in loader[3].error
    with pytest.raises(MapsInterpretError, match=r"sub-03_ses-M000_T1w\.pt: the preprocessed element holds NaN"):
        list(DevicePreprocess(raw, torch.device("cpu"), 2)(raw[i] for i in range(len(raw))))
    _, wrong_size = datasets(saved_sessions(tmp_path, 2), ImageLayout(), (1, 12, 10, 8))
    with pytest.raises(MapsInterpretError, match=r"sub-00_ses-M000_T1w\.pt: after preprocessing the element has "
                                                 r"shape \(1, 12, 10, 9\) but the model was trained on"):
        list(DevicePreprocess(wrong_size, torch.device("cpu"), 2)(wrong_size[i] for i in range(2)))
    unreadable = tmp_path / "sub-00_ses-M000_T1w.pt"
    unreadable.write_text("not a tensor")
    with pytest.raises(MapsInterpretError, match="cannot read tensor"):
        list(DevicePreprocess(raw, torch.device("cpu"), 2)(raw[i] for i in range(len(raw))))


def test_pre_extracted_element_is_named_in_errors(tmp_path):
    layout = PatchLayout(size=4, stride=4, prepare_dl=True)
    sessions = saved_sessions(tmp_path, 2)
    ids = [0, 1]
    for session in sessions:
        for element in ids:
            path = layout.element_file(session.tensor_path, element)
            path.parent.mkdir(parents=True, exist_ok=True)
            value = torch.full((1, 4, 4, 4), 1.0) if (session.participant_id, element) == ("sub-01", 1) \
                else torch.rand(1, 4, 4, 4)
            torch.save(value, path)
    for raw in (False, True):
        dataset = SessionDataset(sessions, layout, Preprocess(), (1, 4, 4, 4), ids, raw=raw)
        items = [dataset[i] for i in range(2)]
        bad = layout.element_file(sessions[1].tensor_path, 1).name
        with pytest.raises(MapsInterpretError, match=f"{bad}: the preprocessed element holds NaN"):
            list(DevicePreprocess(dataset, torch.device("cpu"), 3)(items) if raw else rebatch(items, 3))


def test_storage_order_keeps_the_leading_axis_and_round_trips():
    from maps_interpret.data.dataset import storage_order
    from maps_interpret.data.transforms import copy_contiguous

    image = transposed(torch.rand(1, 7, 6, 5)).unsqueeze(0)  # (N=1, C=1, D, H, W), the first spatial axis fastest
    stored, order = storage_order(image)
    assert stored.is_contiguous() and stored.shape[0] == 1 and order[0] == 0
    assert stored.data_ptr() == image.data_ptr()  # a view: the copy out of it is a plain memcpy
    assert torch.equal(stored.permute(order), image)
    two = torch.cat([stored, stored])
    assert torch.equal(two.permute(order)[1], image[0])
    sliced = torch.rand(2, 1, 8, 8, 8)[:, :, ::2]  # no permutation of a contiguous layout
    stored, order = storage_order(sliced)
    assert order == (0, 1, 2, 3, 4) and torch.equal(stored, sliced) and stored.is_contiguous()
    big = transposed(torch.rand(1, 30, 20, 10))
    assert torch.equal(copy_contiguous(torch.empty(1, 30, 20, 10), big), big)


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_threads_write_each_session_into_its_row_of_the_batch(tmp_path, batch_size):
    from maps_interpret.data.batches import batches_in_threads

    loader, _ = datasets(saved_sessions(tmp_path, 7), ImageLayout(), (1, 12, 10, 9))
    expected = list(rebatch((loader[i] for i in range(len(loader))), batch_size))
    got = list(batches_in_threads(loader, 2, batch_size))
    assert [b.session_index for b in got] == [b.session_index for b in expected]
    assert all(b.element_ids == [0] * len(b.session_index) for b in got)
    for ours, theirs in zip(got, expected):
        assert torch.equal(ours.images, theirs.images)


def test_threads_report_the_first_failed_session_in_order(tmp_path):
    from maps_interpret.data.batches import batches_in_threads

    constant = {4: lambda image: torch.full_like(image, 2.0), 5: lambda image: torch.full_like(image, 3.0)}
    loader, _ = datasets(saved_sessions(tmp_path, 7, bad=constant), ImageLayout(), (1, 12, 10, 9))
    stream = batches_in_threads(loader, 2, 3)
    assert next(stream).session_index == [0, 1, 2]
    with pytest.raises(MapsInterpretError, match=r"sub-04_ses-M000_T1w\.pt: the preprocessed element holds NaN"):
        next(stream)
    with pytest.raises(ValueError, match="image-mode"):
        next(batches_in_threads(datasets(saved_sessions(tmp_path, 2), LAYOUTS["patch-tiled"], (1, 3, 3, 3))[0], 2, 2))


@pytest.mark.parametrize("reader,raw", [("threads", False), ("processes", False), ("threads", True)])
@pytest.mark.parametrize("name,input_size", [("image", (1, 12, 10, 9)), ("patch-overlapping", (1, 4, 4, 4))])
def test_a_shard_starting_inside_a_session_makes_the_whole_runs_batches(tmp_path, reader, raw, name, input_size):
    """make_batches(skip, limit) on the sessions from the shard's first one: exactly the elements [start, stop)
    of the whole run's stream, cut into the whole run's batches (starts are whole batches: runner.passes.element_shard)."""
    from maps_interpret.data.batches import make_batches

    batch_size = 4
    loader, raw_set = datasets(saved_sessions(tmp_path, 5), LAYOUTS[name], input_size)
    dataset = raw_set if raw else loader
    n = len(dataset.element_ids)
    whole = list(make_batches(dataset, 1, reader, batch_size, torch.device("cpu")))
    flat = torch.cat([b.images for b in whole])
    for start, stop in [(0, batch_size), (batch_size, 3 * batch_size), (2 * batch_size, 5 * n)]:
        if start >= 5 * n:
            continue
        stop = min(stop, 5 * n)
        first, skip = divmod(start, n)
        part = SessionDataset(dataset.sessions[first:-(-stop // n)], dataset.layout, Preprocess(),
                              dataset.input_size, dataset.element_ids, raw=raw)
        got = list(make_batches(part, 1, reader, batch_size, torch.device("cpu"), skip=skip, limit=stop - start))
        assert [len(b.element_ids) for b in got] == [len(b.element_ids) for b in whole][start // batch_size:
                                                                                        -(-stop // batch_size)]
        assert torch.equal(torch.cat([b.images for b in got]), flat[start:stop])
        ids = [e for b in whole for e in b.element_ids][start:stop]
        assert [e for b in got for e in b.element_ids] == ids
