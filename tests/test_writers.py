"""Atomic writes and staged folders: nothing half-written is ever visible, nothing replaced unasked."""

from __future__ import annotations

import os

import pytest
import torch

from maps_interpret.output import writers
from maps_interpret.output.staging import STAGING_DIRNAME, Staging


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "data.tsv"
    target.write_text("old")

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        writers.atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.tsv"]


def test_saved_maps_are_compact(tmp_path):
    batch = torch.randn(8, 1, 10, 10, 10)
    writers.save_tensor(batch[5], tmp_path / "one.pt")
    loaded = torch.load(tmp_path / "one.pt", weights_only=True)
    assert torch.equal(loaded, batch[5]) and loaded.untyped_storage().nbytes() == 4000


def test_nifti_is_float32(tmp_path):
    import nibabel as nib

    volume = torch.randn(4, 5, 6).numpy()
    writers.save_nifti(volume, tmp_path / "map.nii.gz")
    image = nib.load(tmp_path / "map.nii.gz")
    assert image.shape == (4, 5, 6) and image.get_data_dtype() == "float32"
    assert (image.get_fdata(dtype="float32") == volume).all()
    assert [p.name for p in tmp_path.iterdir()] == ["map.nii.gz"]


def test_staging_publish_and_replace(tmp_path):
    final = tmp_path / "split-0" / "best-loss" / "test" / "interpret-x"
    staging = Staging(tmp_path, "test-x")
    assert staging.open(keep_checkpoint=False, discard_checkpoint=False) is False
    first = staging.job_dir(0, 0)
    (first / "a.pt").write_text("1")
    Staging.publish(first, final, replace=False)
    second = staging.job_dir(0, 1)
    (second / "b.pt").write_text("2")
    with pytest.raises(FileExistsError):
        Staging.publish(second, final, replace=False)
    Staging.publish(second, final, replace=True)
    staging.close(keep=False)
    assert [p.name for p in final.iterdir()] == ["b.pt"]
    assert sorted(p.name for p in final.parent.iterdir()) == ["interpret-x"]
    assert not (tmp_path / STAGING_DIRNAME).exists()


def test_a_run_folder_is_held_by_one_run_at_a_time(tmp_path):
    """The flock on <key>.lock: a second run of the same group and NAME is refused while the first runs."""
    first = Staging(tmp_path, "test-x")
    first.open(keep_checkpoint=False, discard_checkpoint=False)
    with pytest.raises(FileExistsError, match="in use by another run"):
        Staging(tmp_path, "test-x").open(keep_checkpoint=False, discard_checkpoint=False)
    other = Staging(tmp_path, "test-y")  # another NAME: its own folder; the live one is left alone
    other.open(keep_checkpoint=False, discard_checkpoint=False)
    assert first.run_dir.is_dir()
    other.close(keep=False)
    first.close(keep=False)
    assert list(tmp_path.iterdir()) == []


def test_folders_of_killed_runs_go_unless_they_hold_a_checkpoint(tmp_path):
    root = tmp_path / STAGING_DIRNAME
    for key in ("test-killed", "test-interrupted"):
        (root / key).mkdir(parents=True)
        (root / f"{key}.lock").write_text("")  # nobody holds it: the runs are gone
    (root / "test-interrupted" / "checkpoint-0.json").write_text("{}")
    staging = Staging(tmp_path, "test-new")
    staging.open(keep_checkpoint=False, discard_checkpoint=False)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["test-interrupted", "test-new"]
    staging.close(keep=False)
    resumed = Staging(tmp_path, "test-interrupted")
    with pytest.raises(FileExistsError, match="add --continue to resume it, or --overwrite_name"):
        resumed.open(keep_checkpoint=False, discard_checkpoint=False)
    assert resumed.open(keep_checkpoint=True, discard_checkpoint=False) is True
    assert (resumed.run_dir / "checkpoint-0.json").is_file()
    resumed.close(keep=True)
    assert resumed.open(keep_checkpoint=False, discard_checkpoint=True) is False  # --overwrite_name: discarded
    assert list(resumed.run_dir.iterdir()) == []
    resumed.close(keep=False)


def test_remove_tree(tmp_path):
    folder = tmp_path / "results"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "f").write_text("x")
    writers.remove_tree(folder)
    writers.remove_tree(folder)  # absent: nothing to do
    assert list(tmp_path.iterdir()) == []


def test_nifti_layout_of_maps():
    from maps_interpret.output.writers import nifti_array

    assert nifti_array(torch.zeros(1, 4, 5, 6)).shape == (4, 5, 6)
    assert nifti_array(torch.zeros(1, 4, 5)).shape == (4, 5)
    rgb = torch.arange(3 * 4 * 5.0).view(3, 4, 5)
    assert nifti_array(rgb).shape == (4, 5, 1, 3) and nifti_array(rgb)[2, 3, 0, 1] == rgb[1, 2, 3]


def test_background_writer_writes_and_reports_failures(tmp_path):
    with writers.BackgroundWriter(depth=2) as background:
        for i in range(5):
            background.submit(writers.atomic_write_text, tmp_path / f"{i}.txt", str(i))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{i}.txt" for i in range(5)]

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    background = writers.BackgroundWriter(depth=1)
    background.submit(disk_full)
    with pytest.raises(OSError, match="No space left"):
        for _ in range(50):  # the failure surfaces at a later submit (or at close), never a hang
            background.submit(writers.atomic_write_text, tmp_path / "late.txt", "x")
        background.close()
    background.close()  # idempotent once the error was raised
