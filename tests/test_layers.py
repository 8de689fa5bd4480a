"""The package's shape: a core that imports no technique, techniques that import only the core, no import inside a
function, no circle; and every ``#@save`` mechanism a notebook teaches kept identical to its copy in ``lib``."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

import lib

LIB = lib.paths.ROOT / "lib"
CORE = sorted(p for p in LIB.glob("*.py") if p.name != "__init__.py")
TECHNIQUES = sorted(p for p in (LIB / "techniques").glob("*.py") if p.name != "__init__.py")


def lib_imports(path: Path) -> list[tuple[str, int, bool]]:
    """``(imported lib module, line, inside a function)`` for every import of a ``lib`` module in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = ["lib"] + ([path.parent.name] if path.parent != LIB else [])
    funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    inner = {id(n) for f in funcs for n in ast.walk(f)}
    out = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            packages = ("lib", "lib.techniques")  # `from lib import models`: the names are modules
            names = [f"{mod}.{a.name}" for a in node.names] if mod in packages else [mod]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        out += [(n, node.lineno, id(node) in inner) for n in names if n == "lib" or n.startswith("lib.")]
    return out


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(LIB.parent).with_suffix("").parts)


@pytest.mark.parametrize("path", CORE + TECHNIQUES, ids=lambda p: p.name)
def test_no_lib_import_inside_a_function(path):
    inner = [f"line {line}: {mod}" for mod, line, in_function in lib_imports(path) if in_function]
    assert not inner, f"{path.name} imports lib modules inside functions (move them to the top): {inner}"


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_core_imports_no_technique(path):
    bad = [mod for mod, _, _ in lib_imports(path) if mod.startswith("lib.techniques")]
    assert not bad, f"core module {path.name} imports techniques {bad}"


@pytest.mark.parametrize("path", TECHNIQUES, ids=lambda p: p.name)
def test_techniques_import_only_the_core(path):
    bad = [mod for mod, _, _ in lib_imports(path) if mod.startswith("lib.techniques")]
    assert not bad, f"technique {path.name} imports another technique {bad}: compose them in the notebook"


def test_no_import_circle():
    graph = {module_name(p): {m for m, _, _ in lib_imports(p)} for p in CORE + TECHNIQUES}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join(trail[trail.index(nxt):] + [nxt]))
            if nxt in graph and not state.get(nxt):
                visit(nxt, trail + [nxt])
        state[node] = 2

    for node in graph:
        if not state.get(node):
            visit(node, [node])


def test_the_layer_test_sees_a_circle_and_a_late_import(tmp_path):
    """The checks above can fail: a function-level import is found."""
    f = tmp_path / "x.py"
    f.write_text("def g():\n    from lib import models\n")
    assert lib_imports(f) == [("lib.models", 2, True)]


# ---------------------------------------------------------------------------------------------- #@save

def saved_in_notebooks() -> dict[str, tuple[str, str]]:
    """``name -> (notebook, source)`` of every function or class defined in a notebook cell marked ``#@save``."""
    out = {}
    for nb_path in sorted(lib.paths.NOTEBOOKS.glob("*.ipynb")):
        for cell in json.loads(nb_path.read_text(encoding="utf-8"))["cells"]:
            src = "".join(cell["source"])
            if cell["cell_type"] == "code" and src.startswith("#@save"):
                for node in ast.parse(src).body:
                    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                        out[node.name] = (nb_path.stem, ast.get_source_segment(src, node))
    return out


def saved_in_lib() -> dict[str, tuple[str, str]]:
    """``name -> (module, source)`` of every definition in ``lib`` directly preceded by a ``#@save`` line."""
    out = {}
    for path in CORE + TECHNIQUES:
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        for node in ast.parse(text).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and lines[node.lineno - 2].strip() == "#@save":
                out[node.name] = (module_name(path), ast.get_source_segment(text, node))
    return out


def test_each_technique_notebook_teaches_its_mechanism():
    by_notebook: dict[str, list[str]] = {}
    for name, (nb, _) in saved_in_notebooks().items():
        by_notebook.setdefault(nb, []).append(name)
    for nb in ("01_lora_finetune", "02_prune", "03_quantize", "04_distill", "05_distributed", "06_explain",
               "07_privacy"):
        assert by_notebook.get(nb), f"{nb} defines no #@save mechanism cell"


def test_saved_mechanisms_are_identical_in_notebook_and_lib():
    nbs, libs = saved_in_notebooks(), saved_in_lib()
    assert set(nbs) == set(libs), f"#@save in notebooks only: {set(nbs) - set(libs)}; in lib only: {set(libs) - set(nbs)}"
    for name, (nb, src) in nbs.items():
        module, lib_src = libs[name]
        assert src == lib_src, f"{name} differs between {nb}.ipynb and {module}: copy the notebook's version to lib"


def test_notebooks_run_their_own_mechanism():
    """The edit a learner makes must change what the notebook runs: each #@save function is called in its notebook
    by its plain name (not only through lib)."""
    for name, (nb, _) in saved_in_notebooks().items():
        cells = json.loads((lib.paths.NOTEBOOKS / f"{nb}.ipynb").read_text(encoding="utf-8"))["cells"]
        code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
        rest = "\n".join(src for src in code if not src.startswith("#@save"))
        calls = {n.func.id for n in ast.walk(ast.parse(rest)) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        used = {n.id for n in ast.walk(ast.parse(rest)) if isinstance(n, ast.Name)}
        assert name in calls or name in used, f"{nb} defines {name} but never uses it"
