"""maps-interpret-compare: agreement between the models of a MAPS, on small MAPS trees with known answers, and
once end to end on the synthetic demo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from maps_interpret.analysis.compare import run
from maps_interpret.config import CompareConfig
from maps_interpret.cli.compare import build_parser, main
from maps_interpret.analysis.similarity import pearson, spearman, top_dice

GROUP, NAME = "test", "grads"


def write_tree(root: Path, folders: dict, mode: str = "image", statistic: str = "mean") -> Path:
    """A MAPS holding only what compare reads: maps.json (the mode) and, for each (split, metric) of `folders`,
    interpret-<NAME>/<statistic>_<mode>-<id>_map.pt for each {id: map}."""
    maps = root / "maps"
    maps.mkdir(parents=True, exist_ok=True)
    (maps / "maps.json").write_text(json.dumps({"mode": mode}))
    for (split, metric), elements in folders.items():
        folder = maps / f"split-{split}" / f"best-{metric}" / GROUP / f"interpret-{NAME}"
        folder.mkdir(parents=True, exist_ok=True)
        for element, map_ in elements.items():
            torch.save(map_, folder / f"{statistic}_{mode}-{element}_map.pt")
    return maps


def compare(maps: Path, *options) -> Path:
    """Runs the command; returns its output folder (printed on stdout)."""
    assert main([str(maps), GROUP, NAME, *map(str, options)]) == 0
    return maps / "compare" / GROUP / f"interpret-{NAME}" / "mean"


def agreement(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "agreement.tsv", sep="\t")


def error_of(capsys, maps: Path, *options) -> str:
    capsys.readouterr()
    assert main([str(maps), GROUP, NAME, *map(str, options)]) == 1
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("maps-interpret-compare: error:")]
    assert len(lines) == 1, captured.err
    assert captured.out == ""
    return lines[0]


def volume(seed: int, shape=(1, 6, 5, 4)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# -- known answers --------------------------------------------------------------------------------------------------

def test_identical_maps_agree_perfectly(tmp_path):
    a = volume(0)
    out = compare(write_tree(tmp_path, {(0, "loss"): {0: a}, (1, "loss"): {0: a.clone()}}))
    rows = agreement(out)
    assert list(rows.columns) == ["split_a", "selection_metric_a", "split_b", "selection_metric_b", "image_id",
                                  "pearson", "spearman", "dice_top1", "dice_top5", "dice_top10"]
    assert len(rows) == 1
    row = rows.iloc[0]
    assert (row.split_a, row.selection_metric_a, row.split_b, row.selection_metric_b, row.image_id) == \
        (0, "loss", 1, "loss", 0)
    for column in ("pearson", "spearman", "dice_top1", "dice_top5", "dice_top10"):
        assert row[column] == pytest.approx(1.0, abs=1e-6), column


def test_opposite_maps_anticorrelate_but_point_at_the_same_voxels(tmp_path):
    a = volume(1)
    row = agreement(compare(write_tree(tmp_path, {(0, "loss"): {0: a}, (1, "loss"): {0: -a}}))).iloc[0]
    assert row.pearson == pytest.approx(-1.0, abs=1e-6)
    assert row.spearman == pytest.approx(-1.0, abs=1e-6)
    assert row.dice_top10 == pytest.approx(1.0)  # the top voxels are chosen by magnitude


def test_a_monotone_transform_keeps_spearman_not_pearson(tmp_path):
    a = volume(2)
    row = agreement(compare(write_tree(tmp_path, {(0, "loss"): {0: a}, (1, "loss"): {0: a ** 3}}))).iloc[0]
    assert row.spearman == pytest.approx(1.0, abs=1e-6)
    assert row.pearson < 0.95
    assert row.pearson == pytest.approx(pearson(a, a ** 3), abs=1e-6)


def test_disjoint_top_voxels_give_zero_dice(tmp_path):
    a, b = torch.zeros(1, 10, 10), torch.zeros(1, 10, 10)
    a.view(-1)[:10] = torch.arange(1.0, 11.0)  # the top 10% of a: the first 10 voxels
    b.view(-1)[-10:] = -torch.arange(1.0, 11.0)  # of b: the last 10 (by magnitude)
    row = agreement(compare(write_tree(tmp_path, {(0, "loss"): {0: a}, (1, "loss"): {0: b}}))).iloc[0]
    assert (row.dice_top1, row.dice_top5, row.dice_top10) == (0.0, 0.0, 0.0)


def test_chosen_top_k_and_values_equal_similarity_functions(tmp_path):
    a, b = volume(3), volume(3) + 0.8 * volume(4)
    out = compare(write_tree(tmp_path, {(0, "loss"): {0: a}, (1, "loss"): {0: b}}), "--top_k", "20", "--top_k", "2.5")
    row = agreement(out).iloc[0]
    assert [c for c in agreement(out).columns if c.startswith("dice")] == ["dice_top20", "dice_top2.5"]
    assert row.pearson == pytest.approx(pearson(a, b), abs=1e-6)
    assert row.spearman == pytest.approx(spearman(a, b), abs=1e-6)
    assert row.dice_top20 == pytest.approx(top_dice(a, b, 0.2), abs=1e-6)
    assert row["dice_top2.5"] == pytest.approx(top_dice(a, b, 0.025), abs=1e-6)


def test_the_api_gives_exactly_the_similarity_functions_values_even_with_ties(tmp_path):
    """compare ranks and thresholds each map once (not once per pair): the values must stay those of
    similarity.py, ties (many in gradient maps: zeros, dead ReLUs) included."""
    generator = torch.Generator().manual_seed(7)
    maps_ = [torch.randint(-2, 3, (1, 9, 8, 7), generator=generator).float() for _ in range(3)]
    maps = write_tree(tmp_path, {(k, "loss"): {0: m} for k, m in enumerate(maps_)})
    summary = run(CompareConfig(input_maps_directory=maps, data_group=GROUP, name=NAME, top_k=[1, 5, 10, 33]))
    assert summary.n_pairs == 3 and summary.element_ids == [0]
    for row in summary.rows:
        a, b = maps_[row["split_a"]], maps_[row["split_b"]]
        assert row["pearson"] == pearson(a, b)
        assert row["spearman"] == spearman(a, b)
        for k in (1, 5, 10, 33):
            assert row[f"dice_top{k}"] == top_dice(a, b, k / 100), k


def test_across_split_mean_and_std_are_those_of_the_stacked_maps(tmp_path):
    loss = [volume(10 + k) for k in range(3)]
    accuracy = volume(20)
    maps = write_tree(tmp_path, {**{(k, "loss"): {0: m} for k, m in enumerate(loss)}, (0, "accuracy"): {0: accuracy}})
    out = compare(maps)
    stack = torch.stack(loss)
    mean = torch.load(out / "across_splits_mean_loss_image-0_map.pt", weights_only=True)
    std = torch.load(out / "across_splits_std_loss_image-0_map.pt", weights_only=True)
    assert mean.dtype == std.dtype == torch.float32
    torch.testing.assert_close(mean, stack.mean(dim=0), rtol=0, atol=1e-6)
    torch.testing.assert_close(std, stack.std(dim=0), rtol=0, atol=1e-6)
    # One split of best-accuracy: its mean is its own map and no standard deviation is written (and said so).
    assert torch.equal(torch.load(out / "across_splits_mean_accuracy_image-0_map.pt", weights_only=True), accuracy)
    assert not (out / "across_splits_std_accuracy_image-0_map.pt").exists()
    record = json.loads((out / "compare.json").read_text())
    assert record["across_splits_std_not_written"] == ["accuracy"]
    assert [(c["split"], c["selection_metric"]) for c in record["compared"]] == \
        [(0, "accuracy"), (0, "loss"), (1, "loss"), (2, "loss")]
    assert record["tool"]["name"] == "maps-interpret-compare" and record["statistic"] == "mean"
    # Every pair of the 4 folders (across metrics too); the summary only within a metric (3 pairs of splits).
    assert len(agreement(out)) == 6
    summary = pd.read_csv(out / "summary.tsv", sep="\t")
    assert summary.selection_metric.tolist() == ["loss"] and summary.n_rows.tolist() == [3]
    within = agreement(out).query("selection_metric_a == 'loss' and selection_metric_b == 'loss'")
    assert summary.min_spearman[0] == pytest.approx(within.spearman.min(), abs=1e-6)


def test_each_element_of_a_patch_mode_maps_has_its_row(tmp_path):
    folders = {(k, "loss"): {j: volume(100 * k + j) for j in range(3)} for k in range(3)}
    folders[(2, "loss")][1] = folders[(0, "loss")][1].clone()  # split-0 and split-2 agree on patch 1 only
    rows = agreement(compare(write_tree(tmp_path, folders, mode="patch")))
    assert len(rows) == 3 * 3  # 3 pairs x 3 patches
    assert sorted(zip(rows.split_a, rows.split_b, rows.patch_id)) == \
        sorted((a, b, j) for a, b in ((0, 1), (0, 2), (1, 2)) for j in range(3))
    same = rows[(rows.split_a == 0) & (rows.split_b == 2)].set_index("patch_id")
    assert same.spearman[1] == pytest.approx(1.0, abs=1e-6) and same.spearman[0] < 0.9


def test_the_figure_element_must_be_one_of_the_maps(tmp_path, capsys):
    maps = write_tree(tmp_path, {(k, "loss"): {j: volume(10 * k + j) for j in (3, 4)} for k in range(2)}, mode="slice")
    assert "choose one of them" in error_of(capsys, maps, "--figure_element", "0")
    assert main([str(maps), GROUP, NAME, "--figure_element", "4"]) == 0


def test_subset_and_other_statistics_files_are_left_out_unless_asked(tmp_path):
    a, b = volume(5), volume(6)
    maps = write_tree(tmp_path, {(0, "loss"): {0: a}, (1, "loss"): {0: b}})
    maps = write_tree(tmp_path, {(0, "loss"): {0: a.abs()}, (1, "loss"): {0: a.abs()}}, statistic="absmean")
    for split in (0, 1):  # a subset mean of another shape: read, it would stop the run
        folder = maps / f"split-{split}" / "best-loss" / GROUP / f"interpret-{NAME}"
        torch.save(torch.zeros(2, 2), folder / "mean_diagnosis-AD_image-0_map.pt")
    assert agreement(compare(maps)).pearson[0] == pytest.approx(pearson(a, b), abs=1e-6)
    assert main([str(maps), GROUP, NAME, "--statistic", "absmean"]) == 0
    out = maps / "compare" / GROUP / f"interpret-{NAME}" / "absmean"
    assert agreement(out).pearson[0] == pytest.approx(1.0, abs=1e-6)


def test_splits_and_metrics_can_be_chosen(tmp_path):
    maps = write_tree(tmp_path, {(k, m): {0: volume(k + 10 * len(m))} for k in range(3) for m in ("loss", "f1")})
    rows = agreement(compare(maps, "--splits", "2", "--splits", "0", "--selection_metrics", "f1"))
    assert (rows.split_a.tolist(), rows.split_b.tolist(), set(rows.selection_metric_a)) == ([0], [2], {"f1"})


def test_the_figure_is_a_picture(tmp_path):
    import matplotlib.image

    out = compare(write_tree(tmp_path, {(k, "loss"): {0: volume(k)} for k in range(3)}))
    picture = matplotlib.image.imread(out / "agreement.png")
    assert picture.ndim == 3 and picture.shape[0] > 100 and picture.shape[1] > 100
    assert float(picture[..., :3].var()) > 0


# -- outputs --------------------------------------------------------------------------------------------------------

def test_an_existing_output_is_refused_without_overwrite_and_replaced_with_it(tmp_path, capsys):
    maps = write_tree(tmp_path, {(k, "loss"): {0: volume(k)} for k in range(2)})
    out = compare(maps)
    before = (out / "agreement.tsv").read_text()
    assert "exists: add -o/--overwrite" in error_of(capsys, maps, "--top_k", "50")
    assert (out / "agreement.tsv").read_text() == before
    assert main([str(maps), GROUP, NAME, "--top_k", "50", "-o"]) == 0
    assert list(agreement(out).columns)[-1] == "dice_top50"
    assert sorted(p.name for p in out.parent.iterdir()) == ["mean"]  # no staging or replaced folder left behind


def test_output_option_and_stdout(tmp_path, capsys):
    maps = write_tree(tmp_path, {(k, "loss"): {0: volume(k)} for k in range(2)})
    target = tmp_path / "elsewhere" / "agreement"
    capsys.readouterr()
    assert main([str(maps), GROUP, NAME, "--output", str(target)]) == 0
    assert capsys.readouterr().out == f"{target}\n"
    assert sorted(p.name for p in target.iterdir()) == [
        "across_splits_mean_loss_image-0_map.pt", "across_splits_std_loss_image-0_map.pt", "agreement.png",
        "agreement.tsv", "compare.json", "summary.tsv"]
    assert not (maps / "compare").exists()


def test_an_output_overlapping_the_compared_maps_is_refused(tmp_path, capsys):
    maps = write_tree(tmp_path, {(k, "loss"): {0: volume(k)} for k in range(2)})
    folder = maps / "split-0" / "best-loss" / GROUP / f"interpret-{NAME}"
    for output in (folder, maps, folder / "inside"):
        assert "would overlap the compared folder" in error_of(capsys, maps, "--output", output, "-o")
    assert sorted(p.name for p in folder.iterdir()) == ["mean_image-0_map.pt"]


def test_a_failed_run_leaves_nothing(tmp_path, capsys):
    maps = write_tree(tmp_path, {(k, "loss"): {0: volume(k), 1: volume(k + 5)} for k in range(2)}, mode="roi")
    (maps / "split-1" / "best-loss" / GROUP / f"interpret-{NAME}" / "mean_roi-1_map.pt").write_bytes(b"not a map")
    message = error_of(capsys, maps)
    assert "cannot read" in message and "split-1/best-loss/test/interpret-grads/mean_roi-1_map.pt" in message
    assert list((maps / "compare" / GROUP / f"interpret-{NAME}").iterdir()) == []  # no staging folder either


# -- errors ---------------------------------------------------------------------------------------------------------

def test_missing_maps(tmp_path, capsys):
    assert "is not a folder" in error_of(capsys, tmp_path / "nowhere")


def test_missing_name(tmp_path, capsys):
    maps = write_tree(tmp_path, {(0, "loss"): {0: volume(0)}, (1, "loss"): {0: volume(1)}})
    capsys.readouterr()
    assert main([str(maps), GROUP, "other"]) == 1
    message = capsys.readouterr().err.strip()
    assert message.startswith("maps-interpret-compare: error: no interpretation named 'other' of data group 'test'")
    assert "interpretations of test: grads" in message and "run maps-interpret" in message
    assert "\n" not in message
    assert main([str(maps), "train", NAME]) == 1
    assert "(data group 'train' has none)" in capsys.readouterr().err


def test_a_single_folder_cannot_be_compared(tmp_path, capsys):
    maps = write_tree(tmp_path, {(0, "loss"): {0: volume(0)}, (1, "loss"): {0: volume(1)}})
    assert "only one folder to compare" in error_of(capsys, maps, "--splits", "1")
    assert "--splits 3" in error_of(capsys, maps, "--splits", "3")
    assert "--selection_metrics f1" in error_of(capsys, maps, "--selection_metrics", "f1")


def test_maps_of_different_shapes_or_elements_are_refused_naming_the_files(tmp_path, capsys):
    maps = write_tree(tmp_path, {(0, "loss"): {0: volume(0)}, (1, "loss"): {0: volume(1, shape=(1, 6, 5, 3))}})
    message = error_of(capsys, maps)
    assert "split-1/best-loss/test/interpret-grads/mean_image-0_map.pt has shape (1, 6, 5, 3)" in message
    assert "split-0/best-loss/test/interpret-grads/mean_image-0_map.pt has (1, 6, 5, 4)" in message
    other = write_tree(tmp_path / "b", {(0, "loss"): {0: volume(0), 1: volume(1)}, (1, "loss"): {0: volume(2)}},
                       mode="slice")
    message = error_of(capsys, other)
    assert "split-1/best-loss/test/interpret-grads has no mean_slice-1_map.pt" in message


def test_a_missing_statistic_says_how_to_get_it(tmp_path, capsys):
    maps = write_tree(tmp_path, {(0, "loss"): {0: volume(0)}, (1, "loss"): {0: volume(1)}})
    assert "--statistics" in error_of(capsys, maps, "--statistic", "std")


@pytest.mark.parametrize("argv,message", [
    (["--top_k", "0"], "--top_k must be a percentage in (0, 100]"),
    (["--top_k", "101"], "--top_k must be a percentage in (0, 100]"),
    (["--selection_metrics", "../x"], "cannot be used as a file name"),
])
def test_usage_errors(tmp_path, capsys, argv, message):
    maps = write_tree(tmp_path, {(0, "loss"): {0: volume(0)}, (1, "loss"): {0: volume(1)}})
    capsys.readouterr()
    assert main([str(maps), GROUP, NAME, *argv]) == 2
    assert message in capsys.readouterr().err


# -- the command line -----------------------------------------------------------------------------------------------

def test_options_parse_with_their_types_and_defaults():
    config = build_parser().parse_args(["maps", "test", "grads"])
    assert config == CompareConfig(input_maps_directory=Path("maps"), data_group="test", name="grads")
    assert (config.splits, config.selection_metrics, config.statistic, config.top_k, config.output,
            config.overwrite) == ([], [], "mean", [1.0, 5.0, 10.0], None, False)
    config = build_parser().parse_args(["maps", "test", "grads", "--splits", "1", "--splits", "0", "--top_k", "2.5",
                                        "--selection_metrics", "loss", "--statistic", "std", "--output", "o", "-o"])
    assert (config.splits, config.top_k, config.selection_metrics, config.statistic, config.output,
            config.overwrite) == ([1, 0], [2.5], ["loss"], "std", Path("o"), True)


def test_help_is_quick_and_imports_neither_torch_nor_matplotlib():
    code = "import sys, maps_interpret.cli.compare; print('torch' in sys.modules, 'matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.split() == \
        ["False", "False"]
    result = subprocess.run([sys.executable, "-m", "maps_interpret.cli.compare", "--help"], capture_output=True,
                            text=True)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # argparse wraps lines
    for option in ("INPUT_MAPS_DIRECTORY", "DATA_GROUP", "NAME", "--splits", "--selection_metrics", "--statistic",
                   "--top_k", "--output", "--overwrite", "Exit status"):
        assert option in text, option


# -- end to end -----------------------------------------------------------------------------------------------------

def test_end_to_end_on_the_demo(demo):
    """Interpret the synthetic demo (2 splits x 2 selection metrics, untrained: within a split both metrics hold
    the same weights), then compare."""
    from maps_interpret import InterpretConfig
    from maps_interpret import run as interpret

    interpret(InterpretConfig(input_maps_directory=Path("maps"), data_group="test", name="demo",
                              participants_tsv=Path("data/test.tsv"), caps_directory=Path("data/caps"),
                              selection_metrics=["loss", "accuracy"], gpu=False, n_proc=0))
    summary = run(CompareConfig(input_maps_directory=Path("maps"), data_group="test", name="demo"))
    assert summary.output == Path("maps/compare/test/interpret-demo/mean")
    assert summary.sources == ["split-0/accuracy", "split-1/accuracy", "split-0/loss", "split-1/loss"]
    rows = agreement(summary.output)
    assert len(rows) == 6 and set(rows.image_id) == {0}
    same_model = rows[(rows.split_a == rows.split_b)]
    assert len(same_model) == 2 and (same_model[["pearson", "spearman", "dice_top1"]] == 1.0).all().all()
    record = json.loads((summary.output / "compare.json").read_text())
    assert {c["interpret"]["method"]["name"] for c in record["compared"]} == {"gradients"}
    assert record["mode"] == "image" and record["element_ids"] == [0]
