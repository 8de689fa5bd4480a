"""Parameters: what each notebook declares, what profiles set, and every rule a value must satisfy.

A notebook declares its parameters in one cell tagged ``parameters``: plain ``name = literal  # why``
lines. That cell is the single source of truth for names, types (the default's type) and help text.
A profile (``params/<name>.yaml``) has a ``shared:`` section (applied to every notebook that declares
the key) and one section per notebook. The runner merges profile + ``-p`` overrides and validates them
here *before* running anything; a notebook run by hand validates its own values through
:func:`from_namespace`, with the same rules.
"""

from __future__ import annotations

import ast
import difflib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from ..errors import ParamError
from . import folders, paths
from .catalog import BY_NAME


@dataclass(frozen=True)
class Decl:
    """One declared parameter: its default (whose type is the parameter's type) and its comment."""

    name: str
    default: Any
    help: str

    @property
    def type(self) -> type | None:
        return None if self.default is None else type(self.default)


# ------------------------------------------------------------------------ parsing


def parameters_cell(notebook: str | Path) -> str:
    """Source of the cell tagged ``parameters`` in a notebook (by name or path)."""
    path = Path(notebook) if str(notebook).endswith(".ipynb") else paths.notebook_path(str(notebook))
    if not path.exists():
        raise ParamError(f"notebook {path.name!r} not found in {path.parent}. {_known_notebooks_hint()}")
    nb = json.loads(path.read_text(encoding="utf-8"))
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ParamError(f"{path.name} must have exactly one cell tagged 'parameters' (found {len(cells)}).")
    src = cells[0]["source"]
    return "".join(src) if isinstance(src, list) else src


def parse_declarations(source: str) -> dict[str, Decl]:
    """Parse ``name = literal  # comment`` lines. Anything else in a parameters cell is an error."""
    tree = ast.parse(source)
    lines = source.splitlines()
    decls: dict[str, Decl] = {}
    for node in tree.body:
        if not (
            isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
        ):
            raise ParamError(
                f"parameters cell line {node.lineno}: only plain 'name = literal  # comment' lines are "
                f"allowed "
                "(papermill does not see annotated or computed parameters; put derived values in the next "
                "cell)."
            )
        name = node.targets[0].id
        try:
            default = ast.literal_eval(node.value)
        except ValueError:
            raise ParamError(
                f"parameter {name!r}: the default must be a literal, not an expression."
            ) from None
        line = lines[node.lineno - 1]
        if node.lineno != node.end_lineno or line.count("=") != 1:
            raise ParamError(
                f"parameters cell line {node.lineno} ({line.strip()!r}): keep each parameter on one line "
                f"with a "
                "single '=' (papermill cannot parse a second '=', e.g. in the comment, and ignores such "
                "lines)."
            )
        rest = lines[node.end_lineno - 1][node.end_col_offset :]
        comment = rest.split("#", 1)[1].strip() if "#" in rest else ""
        decls[name] = Decl(name, default, comment)
    return decls


def declared(notebook: str | Path) -> dict[str, Decl]:
    """The parameters a notebook declares, by name."""
    return parse_declarations(parameters_cell(notebook))


# ------------------------------------------------------------------------ rules

Rule = Callable[[Any], "str | None"]


def _between(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False, fix: str = "") -> Rule:
    def check(v: Any) -> str | None:
        ok_lo = v > lo if lo_open else v >= lo
        ok_hi = v < hi if hi_open else v <= hi
        if ok_lo and ok_hi:
            return None
        lb, rb = ("(" if lo_open else "["), (")" if hi_open else "]")
        return f"must be in {lb}{lo}, {hi}{rb}, got {v!r}" + (f" ({fix})" if fix else "")

    return check


def _at_least(lo: float, fix: str = "") -> Rule:
    return lambda v: None if v >= lo else f"must be >= {lo}, got {v!r}" + (f" ({fix})" if fix else "")


def _positive(v: Any) -> str | None:
    return None if v > 0 else f"must be > 0, got {v!r}"


def _dataset(v: str) -> str | None:
    if v == "rotten_tomatoes" or re.fullmatch(r"(csv|hf):.+", v):
        return None
    return f"must be 'rotten_tomatoes', 'csv:<path>' or 'hf:<dataset name>', got {v!r}"


def _profile(v: str) -> str | None:
    return None if re.fullmatch(r"[A-Za-z0-9_.-]+", v) else f"must be a plain folder name, got {v!r}"


def _one_of(*choices: str) -> Rule:
    def rule(v: Any) -> str | None:
        return None if v in choices else f"{v!r} is not one of {', '.join(map(repr, choices))}"

    return rule


def _nonempty(v: str) -> str | None:
    return None if v.strip() else "must not be empty"


def _run_id(v: str) -> str | None:
    return (
        None
        if re.fullmatch(r"[A-Za-z0-9_./-]*", v)
        else f"must be a run id (see python -m lib.runner --runs), got {v!r}"
    )


# Value rules by parameter name; a name means the same thing in every notebook that declares it.
RULES: dict[str, Rule] = {
    "profile": _profile,
    "device": _one_of("auto", "cpu", "cuda"),
    "input_run": _run_id,
    "seed": _at_least(0),
    "dataset": _dataset,
    "model": _nonempty,
    "pooling": _one_of("mean", "cls"),
    "text_column": _nonempty,
    "label_column": _nonempty,
    "val_frac": _between(0, 1, lo_open=True, hi_open=True, fix="a fraction of the data, e.g. 0.1"),
    "test_frac": _between(0, 1, lo_open=True, hi_open=True, fix="a fraction of the data, e.g. 0.2"),
    "max_train_samples": _at_least(0, "0 means all"),
    "max_eval_samples": _at_least(0, "0 means all"),
    "max_length": _between(8, 512, fix="BERT models take at most 512 tokens"),
    "batch_size": _at_least(1),
    "num_epochs": _at_least(1),
    "learning_rate": _between(0, 1, lo_open=True, fix="typical fine-tuning rates are 1.0e-5 to 1.0e-3"),
    "weight_decay": _between(0, 1),
    "warmup_frac": _between(0, 1, hi_open=True),
    "train_precision": _one_of("fp32", "bf16", "auto"),
    "ema_decay": _between(0, 1, hi_open=True, fix="0 turns the weight average off; 0.99 averages ~100 steps"),
    "tfidf_max_features": _at_least(1),
    "compare_steps": _at_least(1),
    "compare_rounds": _at_least(1),
    "bench_repeats": _at_least(1),
    "bench_probe_size": _at_least(1),
    "full_learning_rate": _between(0, 1, lo_open=True),
    "lora_ranks": _at_least(1, "a LoRA rank is a positive integer"),
    "lora_alpha_scale": _positive,
    "lora_dropout": _between(0, 1, hi_open=True),
    "lora_target_modules": _nonempty,
    "speed_steps": _at_least(1),
    "sparsities": _between(0, 1, hi_open=True, fix="fractions of weights to zero, e.g. [0.3, 0.5]"),
    "structured_fractions": _between(
        0, 1, lo_open=True, hi_open=True, fix="fractions of heads and neurons to remove, e.g. [0.25, 0.5]"
    ),
    "importance_methods": _one_of("gradient", "magnitude"),
    "recovery_steps": _at_least(1),
    "recovery_epochs": _at_least(1),
    "max_points_lost": _between(0, 100, fix="accuracy points, e.g. 1.0"),
    "min_agreement": _between(0, 1, fix="a share of labels, e.g. 0.98"),
    "student_layers": _between(1, 24, fix="fewer encoder layers than the teacher's, e.g. 3"),
    "student_narrow": _between(
        0, 1, hi_open=True, fix="a share of heads and FFN neurons, e.g. 0.25 (0 = full width)"
    ),
    "temperature": _positive,
    "alpha": _between(0, 1, fix="0 = labels only, 1 = teacher only"),
    "sweep_temperatures": _positive,
    "sweep_alphas": _between(0, 1, fix="values in [0, 1]"),
    "sweep_epochs": _at_least(1),
    "world_size": _between(
        2, 64, fix="ranks on this machine; the comparison with one process needs at least 2"
    ),
    "threads_per_rank": _at_least(0, "0 shares this machine's cores evenly between the ranks"),
    "train_steps": _at_least(1),
    "comm_hooks": _one_of("fp16", "powersgd"),
    "powersgd_rank": _between(1, 64, fix="PowerSGD's matrix rank: 1 to 8 is usual"),
    "equivalence_steps": _at_least(1),
    "equivalence_batch_size": _at_least(1),
    "equivalence_dtype": _one_of("float32", "float64"),
    "num_explain": _at_least(
        4, "the four example roles (confident/uncertain, correct/wrong) need four texts"
    ),
    "lime_num_samples": _at_least(
        20, "LIME fits a linear model on these samples: far fewer than the words is noise"
    ),
    "lime_stability_sentences": _at_least(0, "0 skips the check"),
    "ig_steps": _at_least(
        2, "Integrated Gradients needs a path of several steps (its completeness gap says if enough)"
    ),
    "top_share": _between(0, 1, lo_open=True, fix="a share of a text's words, e.g. 0.2"),
    "global_min_count": _at_least(1),
    "trainable_layers": _between(0, 48, fix="top encoder layers trained with the head; 0 = the head alone"),
    "target_epsilons": lambda v: (
        None
        if v > 0
        else (f"must be > 0, got {v!r} (ε = 0 would allow no learning at all; typical budgets are 1 to 10)")
    ),
    "delta": _between(
        0, 1, hi_open=True, fix="0 means 1/n_train; a value must not exceed 1/n_train (checked with the data)"
    ),
    "max_grad_norm": lambda v: (
        None if v > 0 else f"must be > 0, got {v!r} (each example's gradient is clipped to this norm)"
    ),
    "accountant": _one_of("prv", "rdp"),
    "head_hidden": _at_least(0, "hidden units of the trained head; 0 = a linear head"),
    "overfit_epochs": _at_least(1),
    "audit_size": _at_least(0, "0 means as many members and non-members as the test split has"),
    "stack_base": _one_of("student", "teacher"),
    "stack_prune_fractions": _between(
        0, 1, hi_open=True, fix="fractions of heads and neurons to remove, e.g. [0.1, 0.2]"
    ),
    "stack_max_val_points": _between(0, 100, fix="validation accuracy points the pruning may cost, e.g. 0.5"),
    "weight_speed": _at_least(0, "a weight is >= 0 (0 ignores the objective)"),
    "weight_cost": _at_least(0, "a weight is >= 0 (0 ignores the objective)"),
    "weight_explainability": _at_least(0, "a weight is >= 0 (0 ignores the objective)"),
    "weight_privacy": _at_least(0, "a weight is >= 0 (0 ignores the objective)"),
}


def _cross_checks(p: Mapping[str, Any]) -> list[str]:
    errs = []
    if (
        "val_frac" in p
        and "test_frac" in p
        and isinstance(p["val_frac"], float)
        and isinstance(p["test_frac"], float)
    ):
        if p["val_frac"] + p["test_frac"] >= 0.9:
            errs.append(
                f"val_frac + test_frac = {p['val_frac'] + p['test_frac']:.2f} leaves under 10% for training; "
                "lower one of them"
            )
    weights = [
        p[k] for k in ("weight_speed", "weight_cost", "weight_explainability", "weight_privacy") if k in p
    ]
    if (
        len(weights) == 4
        and all(isinstance(w, (int, float)) for w in weights)
        and not any(w > 0 for w in weights)
    ):
        errs.append(
            "weight_speed, weight_cost, weight_explainability and weight_privacy are all 0: nothing to "
            "choose "
            "by; give at least one a positive weight"
        )
    return errs


# ------------------------------------------------------------------------ validation


def _type_name(t: type | None) -> str:
    return (
        "any"
        if t is None
        else {"str": "string", "int": "integer", "float": "number", "bool": "true/false", "list": "list"}.get(
            t.__name__, t.__name__
        )
    )


def _type_error(name: str, value: Any, decl: Decl) -> str | None:
    want = decl.type
    if want is None:
        return None
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return None
    if want is int and isinstance(value, bool):
        return f"{name}: expected an integer, got {value!r} (true/false)"
    if isinstance(value, want):
        if want is list and decl.default and not value:
            return f"{name}: must not be an empty list (default {decl.default!r})"
        if want is list and decl.default:
            inner = type(decl.default[0])
            bad = [v for v in value if not (isinstance(v, inner) or (inner is float and isinstance(v, int)))]
            if bad:
                return f"{name}: expected a list of {_type_name(inner)}, got items {bad!r}"
        return None
    hint = ""
    if want is float and isinstance(value, str):
        try:
            float(value)
            hint = " (YAML reads 1e-3 as a string: write 1.0e-3)"
        except ValueError:
            pass
    got = f"{type(value).__name__} {value!r}"
    return f"{name}: expected {_type_name(want)} like {decl.default!r}, got {got}{hint}"


def validate(
    notebook: str, values: Mapping[str, Any], decls: Mapping[str, Decl] | None = None
) -> dict[str, Any]:
    """Check names, types and values against what ``notebook`` declares; return the full resolved set.

    Raises one :class:`ParamError` listing every problem, so a user fixes them all at once.
    """
    decls = declared(notebook) if decls is None else decls
    errs: list[str] = []
    for name in values:
        if name not in decls:
            close = close_names(name, decls)
            errs.append(
                f"unknown parameter {name!r} for {notebook}"
                + (f" (did you mean {close}?)" if close else "")
                + f"; it declares: {', '.join(sorted(decls))}"
            )
    resolved = {n: d.default for n, d in decls.items()}
    resolved.update({k: v for k, v in values.items() if k in decls})
    for name, value in resolved.items():
        # defaults are checked too: a bad default in a notebook is a bug worth reporting
        err = _type_error(name, value, decls[name])
        if err:
            errs.append(err)
            continue
        rule = RULES.get(name)
        if rule is not None and value is not None:
            items = value if isinstance(value, list) else [value]
            for item in items:
                msg = rule(item)
                if msg:
                    errs.append(f"{name}: {msg}")
                    break
    errs += _cross_checks(resolved)
    if errs:
        raise ParamError(f"invalid parameters for {notebook}:\n  - " + "\n  - ".join(errs))
    return resolved


def close_names(name: str, decls: Iterable[str]) -> str:
    return " or ".join(repr(n) for n in difflib.get_close_matches(name, list(decls), n=2))


# ------------------------------------------------------------------------ profiles


def available_profiles() -> list[str]:
    return sorted(p.stem for p in paths.PARAMS.glob("*.yaml"))


def load_profile(profile: str) -> dict[str, dict[str, Any]]:
    """Read ``params/<profile>.yaml`` as ``{"shared": {...}, "<notebook>": {...}}``."""
    path = paths.profile_path(profile)
    if not path.exists():
        raise ParamError(
            f"unknown profile {profile!r}: no {path}. Available: {', '.join(available_profiles())}"
        )
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as e:
        raise ParamError(f"{path.name} is not valid YAML: {e}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) or v is None for v in data.values()):
        raise ParamError(
            f"{path.name}: expected sections 'shared:' and '<notebook>:', each a mapping of name: value"
        )
    for section in data:
        if section != "shared" and section not in BY_NAME:
            raise ParamError(
                f"{path.name}: unknown section {section!r}; use 'shared' or a notebook name: "
                f"{', '.join(BY_NAME)}"
            )
    data = {k: dict(v or {}) for k, v in data.items()}
    known = {name for nb in BY_NAME for name in declared(nb)}
    unknown = [k for k in data.get("shared", {}) if k not in known]
    if unknown:
        raise ParamError(
            f"{path.name}: 'shared:' sets {', '.join(_with_close(k, known) for k in unknown)}, which no "
            "notebook declares (python -m lib.runner --list shows the notebooks; each declares its "
            "parameters in its first code cell)"
        )
    return data


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, but a key given twice in one mapping is an error (YAML keeps the last,
    silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} is set twice (lines {seen[key]} and {key_node.start_mark.line + 1}): "
                    "keep one",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _with_close(name: str, known: Iterable[str]) -> str:
    close = close_names(name, known)
    return f"{name!r}" + (f" (did you mean {close}?)" if close else "")


def parse_override(text: str) -> tuple[str, Any]:
    """``"num_epochs=1"`` -> ``("num_epochs", 1)``; values are read as YAML (so lists work:
    ``ranks=[1,4]``)."""
    if "=" not in text:
        raise ParamError(f"override {text!r} must look like name=value, e.g. -p num_epochs=1")
    name, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    if isinstance(
        value, dict
    ):  # "csv:" or "a: b" read as a mapping: no parameter takes one, the text was meant
        value = raw
    return name.strip(), value


def resolve(
    profile: str,
    notebook: str,
    overrides: Mapping[str, Any] | None = None,
    profile_data: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Merge profile (shared + section) and overrides for one notebook, then validate."""
    data = load_profile(profile) if profile_data is None else profile_data
    decls = declared(notebook)
    values: dict[str, Any] = {k: v for k, v in data.get("shared", {}).items() if k in decls}
    values.update(data.get(notebook, {}))  # unknown keys here are errors (validate reports them)
    values.update({k: v for k, v in (overrides or {}).items() if k in decls})
    values["profile"] = profile
    return validate(notebook, values, decls)


# ------------------------------------------------------------------------ in a notebook


class Params(SimpleNamespace):
    """Validated parameters with attribute access; ``dict(p)`` / ``p.as_dict()`` for the record."""

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    def __iter__(self):
        return iter(vars(self).items())


def from_namespace(namespace: Mapping[str, Any], notebook: str) -> Params:
    """Collect a notebook's declared parameters from its namespace (``globals()``) and validate them; then
    join the runner's run folder or, run by hand, start the notebook's own (:mod:`lib.runner.folders`)."""
    decls = declared(notebook)
    values = {name: namespace[name] for name in decls if name in namespace}
    p = Params(**validate(notebook, values, decls))
    folders.begin_hand_run(p.profile, notebook)
    return p


def _known_notebooks_hint() -> str:
    return f"Known notebooks: {', '.join(BY_NAME)}"
