"""The run's report (--save_figures): one self-contained page over every split and selection metric, with the
sanity check, the agreement between the mean maps (equal to the compare command's measures) and provenance;
replaced, erased and rewritten with the runs; opened in headless Chromium: every image loads, no console error,
not blank."""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import working_copy
from maps_interpret.analysis.similarity import pearson, spearman
from maps_interpret.cli import main
from maps_interpret.output.figures import FIGURES_FILE
from maps_interpret.synthetic import build_demo

REQUIRE = "MAPS_INTERPRET_REQUIRE_FIXTURES"  # CI: the browser test may not be skipped there
RUN = ["maps", "test", "rep", "--no-gpu", "-np", "0", "--save_figures"]
FOLDERS = [Path("maps") / f"split-{k}" / "best-loss" / "test" / "interpret-rep" for k in (0, 1)]
REPORT = Path("maps/reports/test/interpret-rep.html")


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Path:
    """A demo run with every section: statistics and subsets, NIfTI (mm, glass brains), the sanity check."""
    root = tmp_path_factory.mktemp("report") / "demo"
    build_demo(root, shape=(16, 18, 14), n_train=4, n_test=3, trained=False)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main([*RUN, "--participants_tsv", "data/test.tsv", "--caps_directory", "data/caps", "--statistics",
                     "--group_by", "diagnosis", "--save_nifti", "--sanity_check"]) == 0
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture
def demo(published: Path, tmp_path: Path, monkeypatch) -> Path:
    return working_copy(published, tmp_path, monkeypatch)


def embedded(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)]


def test_one_self_contained_page_shows_every_figure(published: Path):
    page = (published / REPORT).read_text()
    images = embedded(page)
    expected = []
    for folder in FOLDERS:
        record = json.loads((published / folder / FIGURES_FILE).read_text())
        expected += [(published / folder / f["file"]).read_bytes() for f in record["figures"]]
        expected += [(published / folder / f["glass_brain"]).read_bytes() for f in record["figures"]
                     if f["glass_brain"]]
        expected.append((published / folder / "sanity_check.png").read_bytes())
    assert all(png in images for png in expected)  # every per-folder figure, byte for byte
    assert len(images) == len(expected) + 1  # and the agreement matrices
    assert all(png.startswith(b"\x89PNG") for png in images)
    # nothing fetched: no script, no remote or file resource (links to the folders' pages only)
    assert "<script" not in page and not re.search(r'src="(?!data:)', page)
    for link in re.findall(r'href="([^"#]+)"', page):
        assert not re.match(r"[a-z]+:", link) and (published / REPORT).parent.joinpath(link).is_file(), link
    for section in ("Maps", "Glass brains", "Sanity check", "Agreement", "Provenance"):
        assert f">{section}</h2>" in page
    # every split x statistic x subset, captioned with the subset's own n and the peak in mm
    for statistic in ("mean", "absmean", "std"):
        for subset in ("all", "diagnosis-AD", "diagnosis-CN"):
            assert f"<h3>{statistic} map, {subset}</h3>" in page
    assert "(n = 3); peak at x=" in html.unescape(page) and "(mm)" in page
    assert page.count("passes") + page.count("fails") + page.count("undefined") >= 2


def test_agreement_is_the_compare_commands_measures(published: Path):
    page = (published / REPORT).read_text()
    a, b = (torch.load(published / f / "mean_image-0_map.pt", weights_only=True) for f in FOLDERS)
    row = re.search(r"<tr><td>split-0/loss</td><td>split-1/loss</td>(.*?)</tr>", page).group(1)
    cells = re.findall(r"<td>([^<]*)</td>", row)
    assert cells[:2] == [f"{pearson(a, b):.3f}", f"{spearman(a, b):.3f}"]
    assert len(cells) == 5  # and the Dice overlaps of the top 1, 5, 10 %


def test_each_folder_page_links_the_report(published: Path):
    for folder in FOLDERS:
        index = (published / folder / "index.html").read_text()
        link = re.search(r'<a href="([^"]+)">its\nreport</a>', index).group(1)
        assert ((published / folder) / link).resolve() == (published / REPORT).resolve()


def test_replaced_by_a_new_run_erased_with_its_group_and_rewritten_by_continue(demo: Path):
    before = (demo / REPORT).read_text()
    assert main([*RUN, "-on", "--figure_display", "mosaic"]) == 0  # --overwrite_name: a new report
    assert (demo / REPORT).read_text() != before
    (demo / REPORT).unlink()  # as a run stopped after its last folder, before its report, leaves it
    assert main([*RUN, "--figure_display", "mosaic", "--continue"]) == 0
    assert (demo / REPORT).is_file()
    assert main(["maps", "test", "other", "--no-gpu", "-np", "0", "--participants_tsv", "data/test.tsv",
                 "--caps_directory", "data/caps", "--overwrite"]) == 0  # the group redefined: its results erased
    assert not (demo / "maps" / "reports" / "test").exists()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_opens_in_headless_chromium(published: Path, tmp_path: Path):
    """Every image loads (none broken), the page and the folders' pages log no console error, and the screenshot
    at a laptop's size is not blank."""
    browser = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        browser = None
    if browser is None:
        if os.environ.get(REQUIRE) == "1":
            pytest.fail("headless Chromium and playwright are needed here (.ci/run installs them)")
        pytest.skip("no chromium or playwright on this machine")
    from matplotlib.image import imread

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=browser, args=["--no-sandbox", "--disable-gpu"])
        try:
            view = chromium.new_page(viewport={"width": 1366, "height": 768})
            errors: list[str] = []
            view.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            view.on("pageerror", lambda e: errors.append(str(e)))
            for page in [published / REPORT, *(published / f / "index.html" for f in FOLDERS)]:
                view.goto(page.resolve().as_uri())
                view.wait_for_load_state("load")
                states = view.evaluate("[...document.images].map(i => [i.complete, i.naturalWidth, i.alt])")
                assert states and all(done and width > 0 for done, width, _ in states), (page, states)
                shot = imread(io.BytesIO(view.screenshot(full_page=False)), format="png")[..., :3]
                assert shot.std() > 0.1 and (shot.mean(-1) < 0.5).mean() > 0.05, page  # dark pixels: figures
            view.screenshot(path=str(tmp_path / "report.png"))
            assert not errors, errors
        finally:
            chromium.close()
    assert np.asarray(imread(tmp_path / "report.png")).shape[:2] == (768, 1366)
