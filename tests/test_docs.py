"""The documentation is true as written.

- Every fenced block of README.md and docs/*.md with the info string `sh` or `python` is run, in order, page by
  page, from a folder laid out like the checkout root after `make demo` (a fresh demo/ made by the Makefile's own
  `demo` recipe, `.venv/bin` first on PATH), and must exit 0. A block that cannot run here (docker, apptainer,
  SLURM, installing a wheel, `make` itself, several nodes) says why on the line before its fence:
  `<!-- not run: <reason> -->`. Output samples go in `text` blocks; `bash`, `shell` and `console` are refused
  (write `sh`, or `text`), so that no command escapes these runs by its spelling.
- docs/options.md is what `python -m maps_interpret.cli.reference` prints (`make docs` writes it).
- Every page of docs/ is linked from the README, and every relative link (and its #anchor) leads somewhere.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
RUN = {"sh", "python"}
REFUSED = {"bash", "shell", "console", "zsh", "shell-session", "sh-session", "py", "python3", "pycon"}
NOT_RUN = re.compile(r"^\s*<!--\s*not run\s*:(.*?)-->\s*$")
FENCE = re.compile(r"^(?P<indent> {0,3}|\s*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
BLOCK_TIMEOUT = 300  # seconds; the whole of the runs takes well under 3 minutes on 2 cores
# Top-level entries of the checkout that the runs' folder does not link to: outputs that commands might write into.
NOT_LINKED = {"demo", ".git", "build", "dist", "bench-out", "__pycache__", ".pytest_cache", ".hypothesis"}


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    info: str  # first word of the info string, lower case ("" when none)
    text: str
    not_run: Optional[str]  # the reason given, or None when the block has no marker

    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page (CommonMark fences, also indented in list items)."""
    lines = page.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match or (match["fence"][0] == "`" and "`" in match["info"]):
            i += 1
            continue
        indent, fence = len(match["indent"]), match["fence"]
        info = match["info"].strip().split()[0].lower() if match["info"].strip() else ""
        marker = NOT_RUN.match(lines[i - 1]) if i > 0 else None
        body, j = [], i + 1
        while j < len(lines) and not re.match(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$", lines[j]):
            body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j].lstrip())
            j += 1
        found.append(Block(page, i + 1, info, "\n".join(body) + "\n",
                           marker.group(1).strip() if marker else None))
        i = j + 1
    return found


def markers(page: Path) -> list[int]:
    """Lines (1-based) of every `not run` marker of a page."""
    return [n for n, line in enumerate(page.read_text().splitlines(), 1) if NOT_RUN.match(line)]


def _id(page: Path) -> str:
    return str(page.relative_to(ROOT))


# -- the blocks' form -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("page", PAGES, ids=_id)
def test_code_blocks_are_marked(page: Path) -> None:
    problems = []
    found = blocks(page)
    for block in found:
        if block.info in REFUSED:
            problems.append(f"{block.where()}: info string '{block.info}': write `sh` for commands (they are run) "
                            "or `text` for output")
        if block.not_run is not None and not block.not_run:
            problems.append(f"{block.where()}: `<!-- not run: -->` needs a reason")
        if block.not_run is not None and block.info not in RUN | REFUSED:
            problems.append(f"{block.where()}: a `{block.info or 'plain'}` block is never run: remove its "
                            "`not run` marker")
    fences = {block.line for block in found}
    for line in markers(page):
        if line + 1 not in fences:
            problems.append(f"{_id(page)}:{line}: a `not run` marker must be the line just before a fence")
    assert not problems, "\n".join(problems)


# -- the options reference --------------------------------------------------------------------------------------------

def test_options_reference_is_current() -> None:
    from maps_interpret.cli import reference

    expected = reference.render()
    written = (DOCS / "options.md").read_text() if (DOCS / "options.md").exists() else ""
    assert written == expected, ("docs/options.md differs from what the commands' parsers give: run `make docs` "
                                 "(python -m maps_interpret.cli.reference > docs/options.md)")


def test_options_reference_lists_each_option_once() -> None:
    from maps_interpret.cli import compare, interpret, reference

    text = reference.render()
    for parser in (interpret.build_parser(), compare.build_parser()):
        section = text.split(f"## {parser.prog}\n", 1)[1].split("\n## ", 1)[0]
        rows = [line for line in section.splitlines() if line.startswith("| `-")]
        for action in parser._actions:
            for spelling in action.option_strings:
                if spelling in ("-h", "--help"):
                    continue
                count = sum(bool(re.match(rf"\| `(.*, )?{re.escape(spelling)}[ `,]", row)) for row in rows)
                assert count == 1, f"{parser.prog} {spelling}: {count} rows in docs/options.md"


def test_methods_page_lists_the_method_table() -> None:
    """docs/methods.md explains every method of methods.METHODS, and no other."""
    from maps_interpret.methods import METHODS

    rows = re.findall(r"^\| `([a-z+-]+)` \|", (DOCS / "methods.md").read_text(), re.M)
    assert sorted(rows) == sorted(METHODS), (f"docs/methods.md's table lists {rows}; methods.py has "
                                             f"{list(METHODS)}")


def test_options_reference_imports_no_torch() -> None:
    code = ("import sys, maps_interpret.cli.reference as r; r.render(); "
            "sys.exit('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, f"the options reference imports torch: {result.stderr}"


# -- names ------------------------------------------------------------------------------------------------------------

MADE_BY_DEMO = {("test", "demo")}  # `make demo`'s interpretation (DATA_GROUP, NAME)
EXISTING_GROUPS = {"train", "validation", "test"}
# The command, its MAPS, DATA_GROUP and NAME, and the rest of its line.
INVOCATION = re.compile(r"(?:\bmaps-interpret(?![-\w])|-m\s+maps_interpret(?![.\w]))\s+(\S+)\s+(\S+)\s+(\S+)([^\n;|&]*)")
CONFIG = re.compile(r"InterpretConfig\((.*?)\)", re.S)
# A command that may reuse a NAME: parts of one run and its merge, a resumed run, a replacement, an expected refusal.
REUSES = re.compile(r"--num_parts|--continue|--overwrite_name|\s-on\b")


def invocations(block: Block) -> list[tuple[str, str, str, bool, bool]]:
    """(MAPS, DATA_GROUP, NAME, may reuse the NAME, defines a group) of each interpretation a run block writes."""
    text = block.text.replace("\\\n", " ")
    found = []
    if block.info == "sh":
        for line in text.splitlines():
            for match in INVOCATION.finditer(line):
                if match.group(1).startswith("-"):  # --help
                    continue
                rest = match.group(4)
                expected_failure = "||" in line[match.end():]
                found.append((match.group(1), match.group(2), match.group(3),
                              bool(REUSES.search(rest)) or expected_failure, "--participants_tsv" in rest))
    elif block.info == "python":
        for call in CONFIG.findall(text):
            values = dict(re.findall(r"(\w+)\s*=\s*\"([^\"]*)\"", call))
            if {"input_maps_directory", "data_group", "name"} <= values.keys():
                found.append((values["input_maps_directory"], values["data_group"], values["name"],
                              "resume=True" in call, "participants_tsv" in values))
    return found


def test_examples_do_not_collide() -> None:
    """Each example writes an interpret-<NAME> (and defines a group) of its own, across all pages, so that the
    pages can be followed one after the other on one demo (an old README reused `make demo`'s interpret-demo)."""
    taken = {("demo/maps", group, name): "make demo" for group, name in MADE_BY_DEMO}
    groups = {group: "the demo" for group in EXISTING_GROUPS}
    problems = []
    for page in PAGES:
        for block in blocks(page):
            if block.info not in RUN or block.not_run is not None:
                continue
            for maps, group, name, reuses, defines in invocations(block):
                key = (maps, group, name)
                if key in taken and not reuses:
                    problems.append(f"{block.where()}: {group}/interpret-{name} is already written by {taken[key]}: "
                                    "choose a NAME of its own")
                taken.setdefault(key, block.where())
                if defines:
                    if group in groups:
                        problems.append(f"{block.where()}: data group {group} is already defined by {groups[group]}")
                    groups.setdefault(group, block.where())
    assert not problems, "\n".join(problems)


# -- links --------------------------------------------------------------------------------------------------------

def _prose(page: Path) -> list[str]:
    """A page's lines outside code fences, inline code removed."""
    fenced = set()
    for block in blocks(page):
        fenced.update(range(block.line, block.line + block.text.count("\n") + 2))
    return [re.sub(r"`[^`]*`", "", line) for n, line in enumerate(page.read_text().splitlines(), 1)
            if n not in fenced]


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation but `-` and `_` dropped, spaces as `-`, repeats -1, -2."""
    seen: dict[str, int] = {}
    out = set()
    fenced = set()
    for block in blocks(page):
        fenced.update(range(block.line, block.line + block.text.count("\n") + 2))
    for n, line in enumerate(page.read_text().splitlines(), 1):
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if n in fenced or not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        out.add(slug if count == 0 else f"{slug}-{count}")
        seen[slug] = count + 1
    return out


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


@pytest.mark.parametrize("page", PAGES, ids=_id)
def test_links_resolve(page: Path) -> None:
    problems = []
    for line in _prose(page):
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            destination = (page.parent / path).resolve() if path else page
            if not destination.exists():
                problems.append(f"{_id(page)}: link to {target}: {path} does not exist")
            elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
                problems.append(f"{_id(page)}: link to {target}: no heading #{anchor} in {destination.name}")
    assert not problems, "\n".join(problems)


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {(README.parent / target.partition("#")[0]).resolve()
              for line in _prose(README) for target in LINK.findall(line)}
    missing = [page.name for page in DOCS.glob("*.md") if page.resolve() not in linked]
    assert not missing, f"docs pages not linked from README.md: {', '.join(sorted(missing))}"


# -- running the blocks ----------------------------------------------------------------------------------------------

def environment() -> dict[str, str]:
    """This interpreter's environment (the checkout's .venv under `make test`) first on PATH, as after
    `source .venv/bin/activate`."""
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env["VIRTUAL_ENV"] = str(Path(sys.executable).parent.parent)
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONHOME", None)
    env.setdefault("MPLBACKEND", "Agg")
    return env


def demo_recipe() -> list[str]:
    """The commands of the Makefile's `demo` target, as it runs them with DEMO=demo and the venv on PATH."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"^demo\s*:", line))
    recipe, command = [], ""
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        command += line.strip()
        if command.endswith("\\"):
            command = command[:-1].rstrip() + " "
            continue
        if not command.startswith("@"):
            recipe.append(command.replace("$(BIN)/", "").replace("$(DEMO)", "demo"))
        command = ""
    assert recipe and not any("$(" in c for c in recipe), f"unexpected demo recipe in the Makefile: {recipe}"
    return recipe


def run_block(block: Block, cwd: Path, env: dict[str, str]) -> None:
    if block.info == "python":
        argv, stdin = [sys.executable, "-"], block.text
    else:
        argv, stdin = ["bash", "-e", "-o", "pipefail", "-c", block.text], None
    try:
        result = subprocess.run(argv, input=stdin, cwd=cwd, env=env, capture_output=True, text=True,
                                timeout=BLOCK_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{block.where()}: still running after {BLOCK_TIMEOUT} s:\n{block.text}")
    if result.returncode != 0:
        pytest.fail(f"{block.where()}: exit status {result.returncode} (run from a folder laid out like the "
                    f"checkout root after `make demo`):\n{block.text}\n--- stdout:\n{result.stdout[-3000:]}"
                    f"\n--- stderr:\n{result.stderr[-3000:]}", pytrace=False)


@pytest.fixture(scope="session")
def made_demo(tmp_path_factory) -> Path:
    """What `make demo` leaves: demo/ (synthetic CAPS + MAPS) with its first interpretation, interpret-demo of
    the group test."""
    root = tmp_path_factory.mktemp("docs-demo")
    env = environment()
    for command in demo_recipe():
        result = subprocess.run(["bash", "-e", "-c", command], cwd=root, env=env, capture_output=True, text=True,
                                timeout=BLOCK_TIMEOUT)
        assert result.returncode == 0, f"make demo's `{command}` failed:\n{result.stderr[-3000:]}"
    return root / "demo"


def checkout_like(made_demo: Path, folder: Path) -> Path:
    """A folder like the checkout root after `make demo`: a fresh copy of demo/, links to everything else."""
    folder.mkdir()
    shutil.copytree(made_demo, folder / "demo", symlinks=True)
    for entry in ROOT.iterdir():
        if entry.name not in NOT_LINKED:
            (folder / entry.name).symlink_to(entry)
    return folder


RUN_PAGES = [page for page in PAGES if any(b.info in RUN and b.not_run is None for b in blocks(page))]


@pytest.mark.slow
@pytest.mark.parametrize("page", RUN_PAGES, ids=_id)
def test_page_runs(page: Path, made_demo: Path, tmp_path: Path) -> None:
    cwd = checkout_like(made_demo, tmp_path / "checkout")
    env = environment()
    for block in blocks(page):
        if block.info in RUN and block.not_run is None:
            run_block(block, cwd, env)
