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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

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

W = "a weight is >= 0 (0 ignores the objective)"
FRACTION = "a fraction of the data, e.g. 0.1"


class Rules(BaseModel):
    """The rule of every parameter, by name: a name means the same in every notebook that declares it; a list
    parameter's rule holds for each item; ``description`` is the hint shown with a violation. (A parameter's
    type is its default's, in the notebook: see :func:`validate`.)"""

    model_config = ConfigDict(validate_assignment=True)
    profile: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="a plain folder name")
    device: Literal["auto", "cpu", "cuda"]
    input_run: str = Field(pattern=r"^[A-Za-z0-9_./-]*$", description="a run id: python -m lib.runner --runs")
    seed: float = Field(ge=0)
    dataset: str = Field(
        pattern=r"^(rotten_tomatoes|csv:.+|hf:.+)$",
        description="'rotten_tomatoes', 'csv:<path>' or 'hf:<name>'",
    )
    model: str = Field(pattern=r"\S", description="a non-empty text")
    pooling: Literal["mean", "cls"]
    text_column: str = Field(pattern=r"\S", description="a non-empty text")
    label_column: str = Field(pattern=r"\S", description="a non-empty text")
    val_frac: float = Field(gt=0, lt=1, description=FRACTION)
    test_frac: float = Field(gt=0, lt=1, description=FRACTION)
    max_train_samples: float = Field(ge=0, description="0 means all")
    max_eval_samples: float = Field(ge=0, description="0 means all")
    max_length: float = Field(ge=8, le=512, description="BERT models take at most 512 tokens")
    batch_size: float = Field(ge=1)
    num_epochs: float = Field(ge=1)
    learning_rate: float = Field(gt=0, le=1, description="typical fine-tuning rates are 1.0e-5 to 1.0e-3")
    weight_decay: float = Field(ge=0, le=1)
    warmup_frac: float = Field(ge=0, lt=1)
    train_precision: Literal["fp32", "bf16", "auto"]
    ema_decay: float = Field(ge=0, lt=1, description="0 turns the average off; 0.99 averages ~100 steps")
    tfidf_max_features: float = Field(ge=1)
    compare_steps: float = Field(ge=1)
    compare_rounds: float = Field(ge=1)
    bench_repeats: float = Field(ge=1)
    bench_probe_size: float = Field(ge=1)
    full_learning_rate: float = Field(gt=0, le=1)
    lora_ranks: float = Field(ge=1, description="a LoRA rank is a positive integer")
    lora_alpha_scale: float = Field(gt=0)
    lora_dropout: float = Field(ge=0, lt=1)
    lora_target_modules: str = Field(pattern=r"\S", description="a non-empty text")
    speed_steps: float = Field(ge=1)
    sparsities: float = Field(ge=0, lt=1, description="fractions of weights to zero, e.g. [0.3, 0.5]")
    structured_fractions: float = Field(gt=0, lt=1, description="fractions of units to remove, e.g. [0.25]")
    importance_methods: Literal["gradient", "magnitude"]
    recovery_steps: float = Field(ge=1)
    recovery_epochs: float = Field(ge=1)
    max_points_lost: float = Field(ge=0, le=100, description="accuracy points, e.g. 1.0")
    min_agreement: float = Field(ge=0, le=1, description="a share of labels, e.g. 0.98")
    student_layers: float = Field(ge=1, le=24, description="fewer encoder layers than the teacher's, e.g. 3")
    student_narrow: float = Field(ge=0, lt=1, description="a share of heads and FFN neurons (0: full width)")
    temperature: float = Field(gt=0)
    alpha: float = Field(ge=0, le=1, description="0 = labels only, 1 = teacher only")
    sweep_temperatures: float = Field(gt=0)
    sweep_alphas: float = Field(ge=0, le=1, description="values in [0, 1]")
    sweep_epochs: float = Field(ge=1)
    world_size: float = Field(ge=2, le=64, description="ranks here; comparing with one process needs 2")
    threads_per_rank: float = Field(ge=0, description="0 shares this machine's cores evenly between ranks")
    train_steps: float = Field(ge=1)
    comm_hooks: Literal["fp16", "powersgd"]
    powersgd_rank: float = Field(ge=1, le=64, description="PowerSGD's matrix rank: 1 to 8 is usual")
    equivalence_steps: float = Field(ge=1)
    equivalence_batch_size: float = Field(ge=1)
    equivalence_dtype: Literal["float32", "float64"]
    num_explain: float = Field(ge=4, description="the four example roles (confident/uncertain, right/wrong)")
    lime_num_samples: float = Field(ge=20, description="LIME fits a linear model on these: fewer is noise")
    lime_stability_sentences: float = Field(ge=0, description="0 skips the check")
    ig_steps: float = Field(ge=2, description="Integrated Gradients needs a path of several steps")
    top_share: float = Field(gt=0, le=1, description="a share of a text's words, e.g. 0.2")
    global_min_count: float = Field(ge=1)
    trainable_layers: float = Field(ge=0, le=48, description="top encoder layers trained; 0: the head alone")
    target_epsilons: float = Field(gt=0, description="ε = 0 allows no learning; typical budgets are 1 to 10")
    delta: float = Field(ge=0, lt=1, description="0 means 1/n_train; more than 1/n_train is refused")
    max_grad_norm: float = Field(gt=0, description="each example's gradient is clipped to this norm")
    accountant: Literal["prv", "rdp"]
    head_hidden: float = Field(ge=0, description="hidden units of the trained head; 0: a linear head")
    overfit_epochs: float = Field(ge=1)
    audit_size: float = Field(ge=0, description="0: as many members and non-members as the test split has")
    stack_base: Literal["student", "teacher"]
    stack_prune_fractions: float = Field(ge=0, lt=1, description="fractions of units to remove, e.g. [0.1]")
    stack_max_val_points: float = Field(ge=0, le=100, description="validation points the pruning may cost")
    weight_speed: float = Field(ge=0, description=W)
    weight_cost: float = Field(ge=0, description=W)
    weight_explainability: float = Field(ge=0, description=W)
    weight_privacy: float = Field(ge=0, description=W)


_CHECK = Rules.model_construct()


def rule_error(name: str, value: Any) -> str | None:
    """What is wrong with one value of parameter ``name`` by its rule (:class:`Rules`), or ``None``."""
    if name not in Rules.model_fields:
        return None
    try:
        setattr(_CHECK, name, value)
        return None
    except ValidationError as e:
        kind = e.errors()[0]["type"]
    field = Rules.model_fields[name]
    hint = f" ({field.description})" if field.description else ""
    if kind == "literal_error":
        return f"{value!r} is not one of {', '.join(map(repr, get_args(field.annotation)))}"
    if kind == "string_pattern_mismatch":
        return f"must be {field.description}, got {value!r}"
    bounds = {k: getattr(m, k) for m in field.metadata for k in ("ge", "gt", "le", "lt") if hasattr(m, k)}
    lo, hi = bounds.get("ge", bounds.get("gt")), bounds.get("le", bounds.get("lt"))
    if lo is not None and hi is not None:
        where = f"in {'(' if 'gt' in bounds else '['}{lo:g}, {hi:g}{')' if 'lt' in bounds else ']'}"
    else:
        where = f"{'>' if 'gt' in bounds else '>='} {lo:g}"
    return f"must be {where}, got {value!r}{hint}"


def _cross_checks(p: Mapping[str, Any]) -> list[str]:
    errs = []
    fracs = [p.get("val_frac"), p.get("test_frac")]
    if all(isinstance(f, float) for f in fracs) and sum(fracs) >= 0.9:
        errs.append(
            f"val_frac + test_frac = {sum(fracs):.2f} leaves under 10% for training; lower one of them"
        )
    weights = [p.get(f"weight_{k}") for k in ("speed", "cost", "explainability", "privacy")]
    if all(isinstance(w, (int, float)) for w in weights) and not any(w > 0 for w in weights):
        errs.append(
            "weight_speed, weight_cost, weight_explainability and weight_privacy are all 0: nothing to "
            "choose by; give at least one a positive weight"
        )
    return errs


# ------------------------------------------------------------------------ validation


TYPE_NAMES = {"str": "string", "int": "integer", "float": "number", "bool": "true/false", "list": "list"}


def _type_name(t: type | None) -> str:
    return "any" if t is None else TYPE_NAMES.get(t.__name__, t.__name__)


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
        for item in (value if isinstance(value, list) else [value]) if value is not None else []:
            msg = rule_error(name, item)
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
