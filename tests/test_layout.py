"""The package's layout, as docs/ARCHITECTURE.md states it: folders that follow the flow, imports that only go
down the floors (no circle, nothing running back up), modules under ~400 lines, one module that loads the C++
core and one that calls TorchScript. Read from the source with `ast`: what a newcomer reads is what is checked."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pysrc" / "maps_interpret"
MAX_LINES = 400

# Lowest first. A module may import modules of its own unit or of a lower floor only (units on one floor do not
# import each other). A unit is a sub-package or a top-level module.
FLOORS = [
    ("errors", "names", "_version", "signals"),
    ("methods", "tables"),
    ("maps2",),
    ("config", "settings", "maps"),
    ("data", "engine"),
    ("models",),
    ("plan", "interpreter"),
    ("output",),
    ("analysis",),
    ("report",),
    ("runner",),
    ("synthetic2", "anatomy"),
    ("cli", "synthetic"),
    ("__init__", "__main__"),
]
FLOOR = {unit: level for level, units in enumerate(FLOORS) for unit in units}
OUTSIDE = {"_core", "_build_info"}  # built by CMake (the C++ core, the torch it was built against)


def modules() -> dict[str, Path]:
    return {".".join(path.relative_to(PACKAGE).with_suffix("").parts): path for path in sorted(PACKAGE.rglob("*.py"))}


def unit(module: str) -> str:
    return module.split(".")[0]


def imports(module: str, path: Path) -> set[str]:
    """Every maps_interpret module `module` imports, at its top or inside a function (both run)."""
    package = module.split(".")[:-1] if path.name != "__init__.py" else module.split(".")
    known = modules()
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("maps_interpret"):
                target = node.module[len("maps_interpret."):] if node.module != "maps_interpret" else ""
            else:
                continue
            for alias in node.names:  # `from . import writers` names a module; `from .x import y` a name of x
                candidate = f"{target}.{alias.name}" if target else alias.name
                found.add(candidate if candidate in known or candidate in OUTSIDE else (target or "__init__"))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("maps_interpret."):
                    found.add(alias.name[len("maps_interpret."):])
    return {name for name in found if name and name != module}


def graph() -> dict[str, set[str]]:
    return {module: imports(module, path) for module, path in modules().items()}


def test_every_unit_has_a_floor():
    units = {unit(m) for m in modules()} - OUTSIDE
    assert units <= set(FLOOR), f"add {sorted(units - set(FLOOR))} to FLOORS (and to docs/ARCHITECTURE.md)"


def test_imports_only_go_down_the_floors():
    wrong = []
    for module, targets in graph().items():
        for target in targets:
            a, b = unit(module), unit(target)
            if b in OUTSIDE or a == b or target.startswith(f"{a}.") or module == "__init__" and b != "__init__":
                continue
            if not FLOOR[b] < FLOOR[a]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports running up or across the floors: " + ", ".join(sorted(wrong))


def test_no_circle():
    edges = graph()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(edges.get(module, ())):
            if target in OUTSIDE or target not in edges:
                continue
            if state.get(target) == 1:
                pytest.fail("import circle: " + " -> ".join(path[path.index(target):] + [target]))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)


def test_modules_are_short():
    long = {module: n for module, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_one_module_loads_the_core_and_one_calls_torchscript():
    loaders = sorted(m for m, targets in graph().items() if "_core" in targets)
    assert loaders == ["engine.core"], loaders
    jit_calls = sorted(m for m, path in modules().items() if any(
        isinstance(node, ast.Call) and ast.unparse(node.func) in ("torch.jit.script", "torch.jit.load", "torch.jit.trace")
        for node in ast.walk(ast.parse(path.read_text()))))
    assert jit_calls == ["models.export"], jit_calls


def test_the_test_twins_are_not_installed():
    """Pure-PyTorch twins of the C++ routines are test code (tests/reference.py), not part of the package."""
    assert not (PACKAGE / "reference.py").exists()
    assert (Path(__file__).parent / "reference.py").is_file()


def test_the_checker_sees_a_circle_and_an_upward_import(tmp_path, monkeypatch):
    """The checks above can fail: a package with data -> runner (up) and a circle between two modules."""
    fake = tmp_path / "maps_interpret"
    (fake / "data").mkdir(parents=True)
    (fake / "runner").mkdir()
    (fake / "data" / "a.py").write_text("from ..runner import b\n")
    (fake / "runner" / "b.py").write_text("from ..data.a import x\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    with pytest.raises(AssertionError, match="data.a -> runner.b"):
        test_imports_only_go_down_the_floors()
    with pytest.raises(pytest.fail.Exception, match="import circle: data.a -> runner.b -> data.a"):
        test_no_circle()
