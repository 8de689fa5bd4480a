"""The package's shape: three tiers — the runner (``lib/runner/``), the core (``lib/*.py``) and the techniques
(``lib/techniques/``) — each importing only the tiers before it (and ``lib.errors`` / ``lib.utils``, which
every tier may use); no technique imports another; no import inside a function; no circle. And every
``# @save`` mechanism a notebook teaches is kept identical to its copy in ``lib``."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

import lib

LIB = lib.runner.paths.ROOT / "lib"
FOUNDATION = [LIB / "errors.py", LIB / "utils.py"]
RUNNER = sorted(p for p in (LIB / "runner").glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
CORE = sorted(p for p in LIB.glob("*.py") if p.name != "__init__.py" and p not in FOUNDATION)
TECHNIQUES = sorted(p for p in (LIB / "techniques").glob("*.py") if p.name != "__init__.py")
APPS = sorted((LIB / "serve").glob("*.py"))  # applications on top: the HTTP server
EVERY = FOUNDATION + RUNNER + CORE + TECHNIQUES + APPS
PACKAGES = (
    "lib",
    "lib.runner",
    "lib.techniques",
    "lib.serve",
)  # `from lib import models`: the imported names are modules


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
            names = [f"{mod}.{a.name}" for a in node.names] if mod in PACKAGES else [mod]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        out += [(n, node.lineno, id(node) in inner) for n in names if n == "lib" or n.startswith("lib.")]
    return out


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(LIB.parent).with_suffix("").parts)


def tier(module: str) -> str:
    """``foundation``, ``runner``, ``core``, ``techniques`` or ``serve`` (an application): where a ``lib``
    module sits."""
    if module in ("lib.errors", "lib.utils"):
        return "foundation"
    if module.startswith(("lib.runner", "lib.techniques", "lib.serve")):
        return module.split(".")[1]
    return "core"


ALLOWED = {
    "foundation": {"foundation"},
    "runner": {"foundation", "runner"},
    "core": {"foundation", "runner", "core"},
    "techniques": {"foundation", "runner", "core"},
    "serve": {"foundation", "runner", "core", "techniques", "serve"},
}


@pytest.mark.parametrize("path", EVERY, ids=module_name)
def test_no_lib_import_inside_a_function(path):
    inner = [f"line {line}: {mod}" for mod, line, in_function in lib_imports(path) if in_function]
    assert not inner, f"{path.name} imports lib modules inside functions (move them to the top): {inner}"


@pytest.mark.parametrize("path", EVERY, ids=module_name)
def test_each_tier_imports_only_the_tiers_before_it(path):
    mine = tier(module_name(path))
    bad = [mod for mod, _, _ in lib_imports(path) if tier(mod) not in ALLOWED[mine]]
    assert not bad, (
        f"{module_name(path)} ({mine}) imports {bad}; a {mine} module may import only {sorted(ALLOWED[mine])}"
    )


def test_the_tier_rule_sees_a_technique_in_the_core():
    assert tier("lib.techniques.prune") not in ALLOWED[tier("lib.report")]
    assert tier("lib.report") not in ALLOWED[tier("lib.runner.page")]  # the runner never reads the core
    assert tier("lib.errors") == "foundation" and tier("lib.runner.folders") == "runner"


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle in ``graph`` (module -> the modules it imports) as ``[a, b, ..., a]``, or
    ``None``."""
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*trail[trail.index(nxt) :], nxt]
            if nxt in graph and not state.get(nxt):
                found = visit(nxt, [*trail, nxt])
                if found:
                    return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if not state.get(node):
            found = visit(node, [node])
            if found:
                return found
    return None


def test_no_import_circle():
    graph = {module_name(p): {m for m, _, _ in lib_imports(p)} for p in EVERY}
    circle = find_circle(graph)
    assert circle is None, "import circle: " + " -> ".join(circle or [])


def test_the_layer_checks_see_a_circle_and_a_late_import(tmp_path):
    """The checks above can fail: a circle three modules long is found, a chain is not, and a function-level
    import is seen."""
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    f = tmp_path / "x.py"
    f.write_text("def g():\n    from lib import models\n")
    assert lib_imports(f) == [("lib.models", 2, True)]


# ------------------------------------------------------------------------ # @save


def saved_in_notebooks() -> dict[str, tuple[str, str]]:
    """``name -> (notebook, source)`` of every function or class defined in a notebook cell marked ``#
    @save``."""
    out = {}
    for nb_path in sorted(lib.runner.paths.NOTEBOOKS.glob("*.ipynb")):
        for cell in json.loads(nb_path.read_text(encoding="utf-8"))["cells"]:
            src = "".join(cell["source"])
            if cell["cell_type"] == "code" and src.startswith("# @save"):
                for node in ast.parse(src).body:
                    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                        out[node.name] = (nb_path.stem, ast.get_source_segment(src, node))
    return out


def saved_in_lib() -> dict[str, tuple[str, str]]:
    """``name -> (module, source)`` of every definition in ``lib`` directly preceded by a ``# @save`` line."""
    out = {}
    for path in EVERY:
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        for node in ast.parse(text).body:
            if (
                isinstance(node, (ast.FunctionDef, ast.ClassDef))
                and lines[node.lineno - 2].strip() == "# @save"
            ):
                out[node.name] = (module_name(path), ast.get_source_segment(text, node))
    return out


def test_each_technique_notebook_teaches_its_mechanism():
    by_notebook: dict[str, list[str]] = {}
    for name, (nb, _) in saved_in_notebooks().items():
        by_notebook.setdefault(nb, []).append(name)
    for nb in (
        "01_lora_finetune",
        "02_prune",
        "03_quantize",
        "04_distill",
        "05_distributed",
        "06_explain",
        "07_privacy",
        "08_federated",
        "09_robustness",
    ):
        assert by_notebook.get(nb), f"{nb} defines no # @save mechanism cell"


def test_saved_mechanisms_are_identical_in_notebook_and_lib():
    nbs, libs = saved_in_notebooks(), saved_in_lib()
    assert set(nbs) == set(libs), (
        f"# @save in notebooks only: {set(nbs) - set(libs)}; in lib only: {set(libs) - set(nbs)}"
    )
    for name, (nb, src) in nbs.items():
        module, lib_src = libs[name]
        assert src == lib_src, (
            f"{name} differs between {nb}.ipynb and {module}: copy the notebook's version to lib"
        )


def test_notebooks_run_their_own_mechanism():
    """The edit a learner makes must change what the notebook runs: each # @save function is called in its
    notebook by its plain name (not only through lib)."""
    for name, (nb, _) in saved_in_notebooks().items():
        cells = json.loads((lib.runner.paths.NOTEBOOKS / f"{nb}.ipynb").read_text(encoding="utf-8"))["cells"]
        code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
        rest = "\n".join(src for src in code if not src.startswith("# @save"))
        calls = {
            n.func.id
            for n in ast.walk(ast.parse(rest))
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
        }
        used = {n.id for n in ast.walk(ast.parse(rest)) if isinstance(n, ast.Name)}
        assert name in calls or name in used, f"{nb} defines {name} but never uses it"
