"""Parameters: what each notebook declares, what profiles set, and the rule every value must satisfy.

A notebook declares its parameters in one cell tagged ``parameters``: plain ``name = literal  # why`` lines,
the single source of names, types (the default's type) and help. The data, split and base model are not
declared there but once, in the data contract (:mod:`lib.runner.contract`). A profile
(``params/<name>.yaml``) has a ``shared:`` section (the contract) and one section per notebook. The runner
merges profile + ``-p`` overrides and validates them here before running anything; a notebook run by hand
validates its own values through :func:`from_namespace`, with the same rules.
"""

from __future__ import annotations

import ast
import difflib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any, Literal, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from ..errors import ParamError
from . import contract, folders, paths
from .catalog import BY_NAME, METADATA, require_artifact


@dataclass(frozen=True)
class Decl:
    """One declared parameter: its default (whose type is the parameter's type) and its comment."""

    name: str
    default: Any
    help: str


def parameters_cell(notebook: str | Path) -> str:
    """Source of the cell tagged ``parameters`` in a notebook (by name or path)."""
    path = Path(notebook) if str(notebook).endswith(".ipynb") else paths.notebook_path(str(notebook))
    if not path.exists():
        raise ParamError(f"notebook {path.name!r} not found in {path.parent}. Known: {', '.join(BY_NAME)}")
    cells = [
        c
        for c in json.loads(path.read_text(encoding="utf-8"))["cells"]
        if "parameters" in c["metadata"].get("tags", [])
    ]
    if len(cells) != 1:
        raise ParamError(f"{path.name} must have exactly one cell tagged 'parameters' (found {len(cells)}).")
    return "".join(cells[0]["source"])


def parse_declarations(source: str) -> dict[str, Decl]:
    """Parse ``name = literal  # comment`` lines; anything else in a parameters cell is an error, because
    papermill would silently misread it."""
    lines, decls = source.splitlines(), {}
    for node in ast.parse(source).body:
        if not (
            isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
        ):
            raise ParamError(
                f"parameters cell line {node.lineno}: only plain 'name = literal  # comment' lines are "
                f"allowed "
                "(papermill does not see annotated or computed parameters; derive values in the next cell)."
            )
        name, line = node.targets[0].id, lines[node.lineno - 1]
        try:
            default = ast.literal_eval(node.value)
        except ValueError:
            raise ParamError(
                f"parameter {name!r}: the default must be a literal, not an expression."
            ) from None
        if node.lineno != node.end_lineno or line.count("=") != 1:
            raise ParamError(
                f"parameters cell line {node.lineno} ({line.strip()!r}): keep each parameter on one line "
                f"with "
                "a single '=' (papermill cannot parse a second '=', e.g. in the comment, and ignores the "
                "line)."
            )
        rest = line[node.end_col_offset :]
        decls[name] = Decl(name, default, rest.split("#", 1)[1].strip() if "#" in rest else "")
    return decls


def declared(notebook: str | Path) -> dict[str, Decl]:
    """The parameters a notebook declares, by name."""
    return parse_declarations(parameters_cell(notebook))


W = "a weight is >= 0 (0 ignores the objective)"


class Rules(BaseModel):
    """The rule of each parameter, by name (the type is the notebook default's; a list parameter's rule holds
    for each item; ``description`` is the hint shown with a violation). A name means the same everywhere."""

    profile: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="a plain folder name")
    device: Literal["auto", "cpu", "cuda"]
    input_run: str = Field(pattern=r"^[A-Za-z0-9_./-]*$", description="a run id: python -m lib.runner --runs")
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
    eval_samples: float = Field(ge=0, description="0: the whole test split")
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


def _field(decl: Decl) -> tuple[Any, Any]:
    """One notebook parameter as a strict pydantic field: the default's type (int is fine for float), the
    name's rule from :class:`Rules` on the value or on each item of a list."""
    rule = Rules.model_fields.get(decl.name)
    meta, literal = (rule.metadata, get_origin(rule.annotation) is Literal) if rule else ([], False)
    value = decl.default[0] if isinstance(decl.default, list) and decl.default else decl.default
    kind = rule.annotation if literal else (Any if value is None else type(value))
    kind = Annotated[kind, *meta] if meta else kind
    if isinstance(decl.default, list):
        kind = Annotated[list[kind], Field(min_length=1 if decl.default else 0)]
    return kind, Field(decl.default, description=rule.description if rule else None)


def problems(e: ValidationError, fields: Mapping[str, Any], prefix: str = "") -> list[str]:
    """A pydantic error as one line per problem: the parameter, what is wrong, the value and the hint."""
    out = []
    for err in e.errors():
        name, got = (str(err["loc"][0]) if err["loc"] else ""), err.get("input")
        where = prefix + ".".join(map(str, err["loc"]))
        info = fields.get(name)
        hint = f" ({info.description})" if getattr(info, "description", None) else ""
        if err["type"] == "extra_forbidden":
            close = close_names(name, fields)
            home = (
                " (a data-contract key: set it under shared: or in data_contract)"
                if name in contract.FIELDS
                else ""
            )
            out.append(
                f"unknown parameter {prefix + name!r}{home}" + (f"; did you mean {close}?" if close else "")
            )
        elif err["type"] == "string_pattern_mismatch":
            out.append(f"{where}: must be {info.description}, got {got!r}")
        else:
            msg = err["msg"].replace("Value error, ", "").replace("Input should be", "should be")
            if isinstance(got, str) and err["type"] == "float_type" and _is_number(got):
                hint = " (YAML reads 1e-3 as a string: write 1.0e-3)"
            out.append(
                f"{where + ': ' if where else ''}{msg}" + (f", got {got!r}" if err["loc"] else "") + hint
            )
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def validate(
    notebook: str, values: Mapping[str, Any], decls: Mapping[str, Decl] | None = None
) -> dict[str, Any]:
    """Check names, types and values (defaults too) against what ``notebook`` declares; return the full set.
    Raises one :class:`ParamError` listing every problem, so a user fixes them all at once."""
    decls = declared(notebook) if decls is None else decls
    model = create_model(
        notebook.replace("_", ""),
        __config__=ConfigDict(strict=True, extra="forbid", validate_default=True),
        **{n: _field(d) for n, d in decls.items()},
    )
    errs: list[str] = []
    try:
        resolved = model.model_validate(dict(values)).model_dump()
    except ValidationError as e:
        errs, resolved = problems(e, model.model_fields), {}
        if any(s.startswith("unknown parameter") for s in errs):
            errs.append(f"{notebook} declares: {', '.join(sorted(decls))}")
    try:
        dc = values.get("data_contract")
        contract.DataContract(**(dc if isinstance(dc, dict) else {}))
    except ValidationError as e:
        errs += problems(e, contract.DataContract.model_fields, "data_contract.")
    weights = [resolved.get(f"weight_{k}") for k in ("speed", "cost", "explainability", "privacy")]
    if all(isinstance(w, (int, float)) for w in weights) and not any(w > 0 for w in weights):
        errs.append(
            "weight_speed, weight_cost, weight_explainability and weight_privacy are all 0: nothing to "
            "choose by; give at least one a positive weight"
        )
    if errs:
        raise ParamError(f"invalid parameters for {notebook}:\n  - " + "\n  - ".join(errs))
    return resolved


def close_names(name: str, known: Iterable[str]) -> str:
    return " or ".join(repr(n) for n in difflib.get_close_matches(name, list(known), n=2))


def available_profiles() -> list[str]:
    return sorted(p.stem for p in paths.PARAMS.glob("*.yaml"))


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, but a key given twice in one mapping is an error (YAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} is set twice (lines {seen[key]} and {key_node.start_mark.line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def load_profile(profile: str) -> dict[str, dict[str, Any]]:
    """``params/<profile>.yaml`` as ``{"shared": {the data contract}, "<notebook>": {...}}``."""
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
    unknown = [s for s in data if s != "shared" and s not in BY_NAME]
    if unknown:
        raise ParamError(
            f"{path.name}: unknown section(s) {unknown}; use 'shared' or a notebook: {', '.join(BY_NAME)}"
        )
    data = {k: dict(v or {}) for k, v in data.items()}
    try:
        contract.DataContract(**data.get("shared", {}))
    except ValidationError as e:
        msg = "\n  - ".join(problems(e, contract.DataContract.model_fields, "shared."))
        raise ParamError(
            f"{path.name}: 'shared:' is the data contract (lib/runner/contract.py):\n  - {msg}"
        ) from None
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """``"num_epochs=1"`` -> ``("num_epochs", 1)``; values are read as YAML (``ranks=[1,4]`` is a list)."""
    if "=" not in text:
        raise ParamError(f"override {text!r} must look like name=value, e.g. -p num_epochs=1")
    name, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return name.strip(), raw if isinstance(
        value, dict
    ) else value  # "csv:x" reads as a mapping: text was meant


def run_contract(
    profile_data: Mapping[str, Mapping[str, Any]], overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """A run's data contract, every field: the profile's ``shared:`` changed by the overrides of its keys."""
    values = {
        **profile_data.get("shared", {}),
        **{k: v for k, v in overrides.items() if k in contract.FIELDS},
    }
    try:
        return contract.DataContract(**values).model_dump()
    except ValidationError as e:
        problem = "\n  - ".join(problems(e, contract.DataContract.model_fields))
        raise ParamError(f"invalid data contract (lib/runner/contract.py):\n  - {problem}") from None


def resolve(
    profile: str,
    notebook: str,
    overrides: Mapping[str, Any] | None = None,
    profile_data: Mapping[str, Mapping[str, Any]] | None = None,
    the_contract: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One notebook's values: its profile section and overrides, validated, and as ``data_contract`` the
    run's (``the_contract``, else :func:`run_contract`)."""
    data = load_profile(profile) if profile_data is None else profile_data
    decls, over = declared(notebook), dict(overrides or {})
    values = {**data.get(notebook, {}), **{k: v for k, v in over.items() if k in decls}, "profile": profile}
    out = validate(notebook, values, decls)
    out["data_contract"] = dict(the_contract) if the_contract is not None else run_contract(data, over)
    return out


class Params(SimpleNamespace):
    """Validated parameters with attribute access; ``p.as_dict()`` for the record."""

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def from_namespace(namespace: Mapping[str, Any], notebook: str) -> Params:
    """A notebook's declared parameters from its namespace (``globals()``), validated, with the data
    contract's fields (the teacher's, for a notebook that loads it; else the defaults; ``data_contract``
    changes them); then the notebook joins the runner's run folder or, by hand, starts its own."""
    decls = declared(notebook)
    values = validate(notebook, {n: namespace[n] for n in decls if n in namespace}, decls)
    given, base = dict(values.pop("data_contract", None) or {}), {}
    if "teacher" in BY_NAME[notebook].needs:
        teacher = require_artifact(values["profile"], "teacher", values.get("input_run", ""))
        base = contract.of(json.loads((teacher / METADATA).read_text(encoding="utf-8")).get("params", {}))
        diffs = contract.differences(base, {**base, **given}, "the teacher")
        if diffs:
            raise ParamError(
                f"{notebook} measures against the teacher ({teacher}), made under another data contract:\n  "
                f"- "
                + "\n  - ".join(diffs)
                + "\nDrop these from data_contract, or run 00_baseline with them first."
            )
    p = Params(**values, **contract.DataContract(**{**base, **given}).model_dump())
    folders.begin_hand_run(p.profile, notebook)
    return p
