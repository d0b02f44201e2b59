"""Group statistics accumulated in one pass on the device (count, mean, mean |map|, standard deviation by
Welford's float64 update), per element and per subset (group_by), against two-pass references on data whose
answer is known; merged across shards by the routine torchrun, parts and --continue use; and the files the
command writes for them."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from maps_interpret.engine import SUBSET_STRIDE as CORE_STRIDE
from helpers import make_engine
from maps_interpret.engine import Engine, EngineError
from maps_interpret.engine.partials import SUBSET_STRIDE, Partial, merge_all, split_key


class Echo(nn.Module):
    """Output 0 is |x|^2 / 2, whose input gradient is x itself: the engine's maps are its inputs. Output 1 is
    the first value times 1e6: the predicted class is 1 exactly where that value is positive."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        return torch.stack([0.5 * (flat * flat).sum(1), flat[:, 0] * 1e6], 1)


def echo(element_ids=None, **options) -> Engine:
    return make_engine(torch.jit.script(Echo()), statistics=True, element_ids=element_ids, **options)


def two_pass(maps: torch.Tensor) -> dict[str, torch.Tensor]:
    x = maps.double()
    return {"mean": x.mean(0), "absmean": x.abs().mean(0), "std": x.std(0, unbiased=True)}


# The mean and mean |map| are float32 running sums (the mean is ClinicaDL's, kept for parity): over 3000 maps
# their rounding reaches ~2e-6 of the value. The deviation comes from float64 (Welford): 1e-6 of itself.
RTOL = {"mean": 1e-5, "absmean": 1e-5, "std": 1e-6}


def assert_statistics(partial: Partial, key: int, maps: torch.Tensor) -> None:
    reference = two_pass(maps)
    for name, ours in (("mean", partial.means()[key]), ("absmean", partial.absmeans()[key]),
                       ("std", partial.stds()[key])):
        scale = reference[name].abs().max().item()
        assert (ours.double() - reference[name]).abs().max().item() <= RTOL[name] * scale, name
    assert partial.counts[partial.ids.index(key)] == len(maps)


def test_the_core_and_python_agree_on_the_subset_stride():
    assert CORE_STRIDE == SUBSET_STRIDE


def test_one_pass_statistics_equal_two_pass_ones_with_a_large_offset_and_many_maps():
    """3000 maps of 1000 + N(0, 1): a float32 sum of squares would lose the variance (1e6 against 1);
    Welford in float64 keeps it to 1e-6 of itself."""
    g = torch.Generator().manual_seed(0)
    maps = 1000 + torch.randn((3000, 1, 4, 5), generator=g)
    engine = echo()
    for start in range(0, len(maps), 7):
        chunk = maps[start:start + 7]
        engine.accumulate(chunk, [0] * len(chunk))
    assert_statistics(Partial.of_engine(engine), 0, maps)


def test_shards_merged_give_the_statistics_of_one_pass():
    g = torch.Generator().manual_seed(1)
    maps = 5 + 3 * torch.randn((900, 1, 3, 3), generator=g)
    shards = []
    for piece in (maps[:100], maps[100:750], maps[750:]):
        engine = echo()
        for start in range(0, len(piece), 10):
            engine.accumulate(piece[start:start + 10], [0] * len(piece[start:start + 10]))
        shards.append(Partial.of_engine(engine))
    assert_statistics(merge_all(shards), 0, maps)
    restored = merge_all(Partial.from_state(p.state()) for p in shards)  # through a checkpoint file's dict
    assert_statistics(restored, 0, maps)


def test_subsets_given_predicted_and_correct():
    g = torch.Generator().manual_seed(2)
    maps = torch.randn((12, 1, 3, 4), generator=g)
    maps[:, 0, 0, 0] = torch.tensor([1.0, -1.0] * 6)  # predicted class 1 for even rows, 0 for odd ones
    subsets = [0, 1, 2] * 4
    labels = [1, 1, 0] * 4
    for group_by in ("given", "predicted", "correct"):
        engine = echo(group_by=group_by)
        for start in range(0, 12, 4):
            engine.accumulate(maps[start:start + 4], [0] * 4, subsets=subsets[start:start + 4],
                              labels=labels[start:start + 4])
        partial = Partial.of_engine(engine)
        assert_statistics(partial, 0, maps)
        predicted = [1 - i % 2 for i in range(12)]
        groups = {"given": subsets, "predicted": predicted,
                  "correct": [int(p == label) for p, label in zip(predicted, labels)]}[group_by]
        for subset in sorted(set(groups)):
            rows = [i for i, s in enumerate(groups) if s == subset]
            assert_statistics(partial, (subset + 1) * SUBSET_STRIDE, maps[rows])
            assert split_key((subset + 1) * SUBSET_STRIDE + 3) == (subset, 3)


def test_a_restored_engine_continues_the_same_running_sums():
    """A checkpoint's state given to a new engine (Engine.restore), then the remaining batches: every sum, count,
    Welford mean and M2, of elements and subsets, equal bit for bit to one engine that never stopped."""
    g = torch.Generator().manual_seed(3)
    maps = 1000 + torch.randn((16, 1, 3, 4), generator=g)
    ids, subsets = [0, 1] * 8, [0, 1, 1, 2] * 4
    whole, first = echo(group_by="given"), echo(group_by="given", element_ids=[0, 1])
    for start in range(0, 16, 4):
        whole.accumulate(maps[start:start + 4], ids[start:start + 4], subsets=subsets[start:start + 4])
    for start in range(0, 8, 4):
        first.accumulate(maps[start:start + 4], ids[start:start + 4], subsets=subsets[start:start + 4])
    resumed = echo(group_by="given", element_ids=[0, 1])
    resumed.restore(Partial.from_state(Partial.of_engine(first).state()).state())  # through a checkpoint's format
    for start in range(8, 16, 4):
        resumed.accumulate(maps[start:start + 4], ids[start:start + 4], subsets=subsets[start:start + 4])
    for keys in (False, True):
        a, b = whole.state(subsets=keys), resumed.state(subsets=keys)
        assert a["ids"] == b["ids"] and a["counts"] == b["counts"]
        for name in ("sums", "abs_sums", "mean64", "m2"):
            assert torch.equal(a[name], b[name]), (keys, name)
    with pytest.raises(EngineError, match="maps were already added"):
        resumed.restore(Partial.of_engine(first).state())


def test_a_single_map_has_zero_deviation_not_nan():
    engine = echo()
    engine.accumulate(torch.ones(1, 1, 2, 2), [3])
    assert torch.equal(Partial.of_engine(engine).stds()[3], torch.zeros(1, 2, 2))


# -- the command -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from maps_interpret.cli import main
    from maps_interpret.synthetic import build_demo

    root = tmp_path_factory.mktemp("statistics") / "demo"
    build_demo(root, shape=(16, 20, 16), n_train=4, n_test=4, trained=False)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(["maps", "test", "stats", "--participants_tsv", "data/test.tsv", "--caps_directory", "data/caps",
                     "--no-gpu", "-np", "0", "--batch_size", "3", "--save_individual", "--statistics",
                     "--group_by", "diagnosis"]) == 0
    finally:
        os.chdir(cwd)
    return root


def test_written_statistics_are_those_of_the_written_individual_maps(demo):
    rows = [line.split("\t") for line in (demo / "data" / "test.tsv").read_text().splitlines()]
    header = rows[0]
    sessions = [dict(zip(header, row)) for row in rows[1:]]
    for split in (0, 1):
        folder = demo / "maps" / f"split-{split}" / "best-loss" / "test" / "interpret-stats"
        individual = {(s["participant_id"], s["session_id"]): torch.load(
            folder / f"{s['participant_id']}_{s['session_id']}_image-0_map.pt") for s in sessions}
        groups = {"": sessions, **{f"diagnosis-{d}_": [s for s in sessions if s["diagnosis"] == d]
                                   for d in {s["diagnosis"] for s in sessions}}}
        for prefix, members in groups.items():
            maps = torch.stack([individual[(s["participant_id"], s["session_id"])] for s in members])
            reference = two_pass(maps)
            for name in ("mean", "absmean", "std"):
                ours = torch.load(folder / f"{name}_{prefix}image-0_map.pt").double()
                assert (ours - reference[name]).abs().max() <= 1e-5 * reference[name].abs().max(), (prefix, name)


def test_group_by_an_unknown_column_is_refused(demo, capsys):
    from maps_interpret.cli import main

    cwd = os.getcwd()
    os.chdir(demo)
    try:
        assert main(["maps", "test", "x", "--no-gpu", "--group_by", "site"]) == 2
    finally:
        os.chdir(cwd)
    assert "--group_by site: the data group has no such column" in capsys.readouterr().err


def test_statistics_tsv_lists_each_file_with_its_count_and_reads_back_with_pandas(demo):
    import pandas as pd

    rows = [line.split("\t") for line in (demo / "data" / "test.tsv").read_text().splitlines()]
    diagnoses = [dict(zip(rows[0], row))["diagnosis"] for row in rows[1:]]
    folder = demo / "maps" / "split-0" / "best-loss" / "test" / "interpret-stats"
    table = pd.read_csv(folder / "statistics.tsv", sep="\t")
    assert list(table.columns) == ["file", "statistic", "subset", "image_id", "n_maps"]
    counts = {(r.statistic, r.subset): r.n_maps for r in table.itertuples()}
    assert counts[("mean", "all")] == len(diagnoses) and counts[("std", "all")] == len(diagnoses)
    for diagnosis in set(diagnoses):
        assert counts[("absmean", f"diagnosis-{diagnosis}")] == diagnoses.count(diagnosis)
    assert sorted(table.file) == sorted(p.name for p in folder.glob("*_image-0_map.pt") if not p.name.startswith("sub-"))


def test_subsets_tsv_lists_each_session_in_its_subset(demo, tmp_path):
    import pandas as pd

    from maps_interpret.cli import main

    folder = demo / "maps" / "split-0" / "best-loss" / "test"
    listing = pd.read_csv(folder / "interpret-stats" / "subsets.tsv", sep="\t", dtype=str)
    given = pd.read_csv(demo / "data" / "test.tsv", sep="\t", dtype=str)
    assert list(listing.columns) == ["participant_id", "session_id", "image_id", "diagnosis"]
    assert listing[["participant_id", "session_id", "diagnosis"]].equals(given[["participant_id", "session_id",
                                                                                "diagnosis"]])
    cwd = os.getcwd()
    os.chdir(demo)
    try:
        assert main(["maps", "test", "correct", "--no-gpu", "-np", "0", "--group_by", "correct"]) == 0
    finally:
        os.chdir(cwd)
    listing = pd.read_csv(folder / "interpret-correct" / "subsets.tsv", sep="\t", dtype=str)
    counts = pd.read_csv(folder / "interpret-correct" / "statistics.tsv", sep="\t")
    assert len(listing) == len(given) and set(listing.correct) <= {"false", "true"}
    for subset, n in listing.correct.value_counts().items():
        assert counts[counts.subset == f"correct-{subset}"].n_maps.tolist() == [n]
