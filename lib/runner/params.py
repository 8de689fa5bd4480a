"""Parameters: what each notebook declares (one cell tagged ``parameters``: ``name = literal  # why`` lines,
the source of names, types and help), what profiles set (``params/<name>.yaml``: ``shared:``, the data
contract of :mod:`.contract`, then one section per notebook) and the rule of every value. The runner checks a
whole run here before anything runs; a notebook run by hand checks itself with :func:`from_namespace`.
"""

from __future__ import annotations

import ast
import difflib
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any, Literal, NamedTuple, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from ..errors import ParamError, listing
from . import contract, folders, paths
from .catalog import BY_NAME, made_under, require_artifact

HOME = " (a data-contract key: set it under shared: or in data_contract)"  # said of a contract key misplaced


class Decl(NamedTuple):
    """One declared parameter: its default (whose type is the parameter's type) and its comment."""

    name: str
    default: Any
    help: str


def parameters_cell(notebook: str | Path) -> str:
    """Source of the cell tagged ``parameters`` in a notebook (by name or path)."""
    path = Path(notebook) if str(notebook).endswith(".ipynb") else paths.notebook_path(str(notebook))
    if not path.exists():
        raise ParamError(f"notebook {path.name!r} not found in {path.parent}. Known: {', '.join(BY_NAME)}")
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    tagged = [c for c in cells if "parameters" in c["metadata"].get("tags", [])]
    if len(tagged) != 1:
        raise ParamError(f"{path.name} must have exactly one cell tagged 'parameters' (found {len(tagged)}).")
    return "".join(tagged[0]["source"])


def parse_declarations(source: str) -> dict[str, Decl]:
    """Parse ``name = literal  # comment`` lines; anything else is an error (papermill would misread it)."""
    lines, decls = source.splitlines(), {}
    for node in ast.parse(source).body:
        line = lines[node.lineno - 1]
        if not (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)):
            raise ParamError(
                f"parameters cell line {node.lineno}: only plain 'name = literal  # comment' lines "
                "(papermill sees no annotated or computed parameter; derive values in the next cell)"
            )
        try:
            default = ast.literal_eval(node.value)
        except ValueError:
            raise ParamError(f"parameter {node.targets[0].id!r}: the default must be a literal") from None
        if node.lineno != node.end_lineno or line.count("=") != 1:
            raise ParamError(
                f"parameters cell line {node.lineno} ({line.strip()!r}): one line, a single '=' "
                "(papermill cannot parse a second '=', e.g. in the comment, and skips the line)"
            )
        rest = line[node.end_col_offset :]
        decls[node.targets[0].id] = Decl(node.targets[0].id, default, rest.partition("#")[2].strip())
    return decls


def declared(notebook: str | Path) -> dict[str, Decl]:
    """The parameters a notebook declares, by name."""
    return parse_declarations(parameters_cell(notebook))


COUNTS = ("batch_size", "num_epochs", "tfidf_max_features", "compare_steps", "compare_rounds", "speed_steps",
          "bench_repeats", "bench_probe_size", "recovery_steps", "recovery_epochs", "sweep_epochs",
          "train_steps", "equivalence_steps", "equivalence_batch_size", "global_min_count",
          "overfit_epochs", "num_rounds", "local_epochs", "attack_texts", "attack_max_words",
          "word_neighbours", "adversarial_craft_texts", "serve_max_batch_size", "load_max_requests",
          "load_min_requests", "lr_demo_epochs",
          "serve_threads", "cache_pool")  # fmt: skip
WEIGHTS = ("weight_speed", "weight_cost", "weight_explainability", "weight_privacy", "weight_robustness")


class _Described(BaseModel):
    """Parameters with a rule of their own (on each item of a list); ``description``: the hint of an error."""

    profile: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="a plain folder name")
    device: Literal["auto", "cpu", "cuda"]
    input_run: str = Field(pattern=r"^[A-Za-z0-9_./-]*$", description="a run id: python -m lib.runner --runs")
    learning_rate: float = Field(gt=0, le=1, description="typical fine-tuning rates are 1.0e-5 to 1.0e-3")
    weight_decay: float = Field(ge=0, le=1)
    warmup_frac: float = Field(ge=0, lt=1)
    train_precision: Literal["fp32", "bf16", "auto"]
    ema_decay: float = Field(ge=0, lt=1, description="0 turns the average off; 0.99 averages ~100 steps")
    full_learning_rate: float = Field(gt=0, le=1)
    lora_ranks: float = Field(ge=1, description="a LoRA rank is a positive integer")
    lora_dropout: float = Field(ge=0, lt=1)
    lora_target_modules: str = Field(pattern=r"\S", description="a non-empty text")
    sparsities: float = Field(ge=0, lt=1, description="fractions of weights to zero, e.g. [0.3, 0.5]")
    structured_fractions: float = Field(gt=0, lt=1, description="fractions of units to remove, e.g. [0.25]")
    importance_methods: Literal["gradient", "magnitude"]
    max_points_lost: float = Field(ge=0, le=100, description="accuracy points, e.g. 1.0")
    min_agreement: float = Field(ge=0, le=1, description="a share of labels, e.g. 0.98")
    student_layers: float = Field(ge=1, le=24, description="fewer encoder layers than the teacher's, e.g. 3")
    student_narrow: float = Field(ge=0, lt=1, description="a share of heads and FFN neurons (0: full width)")
    alpha: float = Field(ge=0, le=1, description="0 = labels only, 1 = teacher only")
    sweep_alphas: float = Field(ge=0, le=1, description="values in [0, 1]")
    eval_samples: float = Field(ge=0, description="0: the whole test split")
    sweep_train_samples: float = Field(ge=0, description="0: the whole training split")
    world_size: float = Field(ge=2, le=64, description="ranks here; comparing with one process needs 2")
    threads_per_rank: float = Field(ge=0, description="0 shares this machine's cores evenly between ranks")
    comm_hooks: Literal["fp16", "powersgd"]
    powersgd_rank: float = Field(ge=1, le=64, description="PowerSGD's matrix rank: 1 to 8 is usual")
    equivalence_dtype: Literal["float32", "float64"]
    num_explain: float = Field(ge=4, description="the four example roles (confident/uncertain, right/wrong)")
    lime_num_samples: float = Field(ge=20, description="LIME fits a linear model on these: fewer is noise")
    lime_stability_sentences: float = Field(ge=0, description="0 skips the check")
    ig_steps: float = Field(ge=2, description="Integrated Gradients needs a path of several steps")
    top_share: float = Field(gt=0, le=1, description="a share of a text's words, e.g. 0.2")
    trainable_layers: float = Field(ge=0, le=48, description="top encoder layers trained; 0: the head alone")
    target_epsilons: float = Field(gt=0, description="ε = 0 allows no learning; typical budgets are 1 to 10")
    delta: float = Field(ge=0, lt=1, description="0 means 1/n_train; more than 1/n_train is refused")
    max_grad_norm: float = Field(gt=0, description="each example's gradient is clipped to this norm")
    accountant: Literal["prv", "rdp"]
    head_hidden: float = Field(ge=0, description="hidden units of the trained head; 0: a linear head")
    audit_size: float = Field(ge=0, description="0: as many members and non-members as the test split has")
    num_clients: float = Field(ge=2, description="federated training needs at least 2 clients")
    dirichlet_alphas: float = Field(gt=0, description="Dirichlet concentrations > 0, e.g. [0.1, 1.0, 100.0]")
    strategies: Literal["fedavg", "fedprox"]
    proximal_mu: float = Field(ge=0, description="FedProx's μ >= 0 (0 is FedAvg); 0.001 to 1 is usual")
    fraction_train: float = Field(gt=0, le=1, description="a share of the clients, e.g. 0.5")
    client_holdout: float = Field(gt=0, lt=1, description="a share of each client's examples, e.g. 0.2")
    deploy_clients: float = Field(ge=2, le=16, description="SuperNodes on this machine: 2 to 16")
    deploy_rounds: float = Field(ge=0, description="0 skips the Deployment Engine run")
    stack_base: Literal["student", "teacher"]
    stack_prune_fractions: float = Field(ge=0, lt=1, description="fractions of units to remove, e.g. [0.1]")
    stack_max_val_points: float = Field(ge=0, le=100, description="validation points the pruning may cost")
    stack_embedding_bits: Literal[4, 8]
    attack_max_share: float = Field(gt=0, le=1, description="a share of a text's words, e.g. 0.2")
    word_min_similarity: float = Field(ge=-1, le=1, description="a cosine similarity, e.g. 0.5")
    behaviour_scale: float = Field(gt=0, description="a multiplier of the tests' cases, e.g. 0.5")
    adversarial_clean_texts: float = Field(
        ge=0, description="0: the attacked copies and their originals only"
    )
    adversarial_learning_rate: float = Field(gt=0, le=1, description="typical rates are 1.0e-5 to 1.0e-4")
    adversarial_precision: Literal["fp32", "bf16", "auto"]
    fairness_people: float = Field(ge=0, description="0: every person of each list")
    fairness_bootstrap: float = Field(ge=100, description="an interval from fewer resamples is noise itself")
    variants: Literal["teacher", "lora", "pruned", "quantized", "student"]
    slo_ms: float = Field(gt=0, description="a latency in milliseconds, e.g. 50.0")
    serve_wait_ms: float = Field(ge=0, le=1000, description="milliseconds a batch waits, e.g. [0.0, 5.0]")
    serve_max_padding: float = Field(ge=-1, description="a share of real tokens, e.g. 0.25 (-1: no grouping)")
    rate_fractions: float = Field(gt=0, le=10, description="shares of in-process throughput, e.g. [0.5, 1.0]")
    knee_refine: float = Field(ge=0, le=6, description="bisection steps, 0 to 6 (each one more load run)")
    load_seconds: float = Field(gt=0, le=60, description="a load run stays short: at most 60 s")
    load_client: Literal["aiohttp", "httpx"]
    cache_size: float = Field(ge=0, description="answers kept; 0 turns the cache off")
    serve_queue: float = Field(ge=0, description="texts waiting; 0 sizes the queue from the knee and the SLO")
    cache_zipf: float = Field(gt=0, description="Zipf's exponent, e.g. 1.1 (larger: fewer texts repeat more)")
    overload_factor: float = Field(gt=1, description="more than the knee's rate, e.g. 2.0")
    serve_variant: str = Field(pattern=r"^[A-Za-z0-9_-]*$", description="an artifact name, e.g. student")


# The rule of every parameter, by name: a name means the same in every notebook that declares it.
Rules = create_model(
    "Rules",
    __base__=_Described,
    **dict.fromkeys(COUNTS, (float, Field(ge=1, description="a count: at least 1"))),
    **dict.fromkeys(("lora_alpha_scale", "temperature", "sweep_temperatures"), (float, Field(gt=0))),
    **dict.fromkeys(WEIGHTS, (float, Field(ge=0, description="a weight is >= 0 (0 ignores the objective)"))),
)


def _field(decl: Decl) -> tuple[Any, Any]:
    """One parameter as a strict pydantic field: the default's type (an int passes for a float) with the
    name's rule from :class:`Rules`, on the value or on each item of a list."""
    rule = Rules.model_fields.get(decl.name)
    item = decl.default[0] if isinstance(decl.default, list) and decl.default else decl.default
    kind = Any if item is None else type(item)
    if rule is not None:
        kind = rule.annotation if get_origin(rule.annotation) is Literal else kind
        kind = Annotated[kind, *rule.metadata] if rule.metadata else kind
    if isinstance(decl.default, list):
        kind = Annotated[list[kind], Field(min_length=1 if decl.default else 0)]
    return kind, Field(decl.default, description=rule.description if rule else None)


def problems(e: ValidationError, fields: Mapping[str, Any], prefix: str = "") -> list[str]:
    """A pydantic error as one line per problem: the parameter, what is wrong, the value, the hint."""
    out = []
    for err in e.errors():
        loc, got = err["loc"], err.get("input")
        name, where = str(loc[0]) if loc else "", prefix + ".".join(map(str, loc))
        hint = getattr(fields.get(name), "description", None)
        if err["type"] == "extra_forbidden":
            home = HOME * (name in contract.FIELDS)
            out.append(f"unknown parameter {prefix + name!r}{home}{did_you_mean(name, fields)}")
            continue
        if err["type"] == "string_pattern_mismatch":
            out.append(f"{where}: must be {hint}, got {got!r}")
            continue
        if err["type"] == "float_type" and isinstance(got, str) and re.fullmatch(r"[-+.\de]+", got):
            hint = "YAML reads 1e-3 as a string: write 1.0e-3"
        msg = err["msg"].replace("Value error, ", "").replace("Input should be", "should be")
        out.append(f"{where}: {msg}, got {got!r}{f' ({hint})' if hint else ''}" if where else msg)
    return out


def _contract(values: Any, prefix: str) -> tuple[dict[str, Any], list[str]]:
    """The complete data contract from some of its fields, and every problem with them."""
    try:
        return contract.DataContract(**(values if isinstance(values, dict) else {})).model_dump(), []
    except ValidationError as e:
        return {}, problems(e, contract.DataContract.model_fields, prefix)


def validate(notebook: str, values: Mapping[str, Any], decls: Mapping | None = None) -> dict[str, Any]:
    """Check names, types and values (defaults too) against what ``notebook`` declares; return the full set,
    or raise one :class:`ParamError` listing every problem, so a user fixes them all at once."""
    decls = declared(notebook) if decls is None else decls
    config = ConfigDict(strict=True, extra="forbid", validate_default=True)
    fields = {n: _field(d) for n, d in decls.items()}
    model = create_model(notebook.replace("_", ""), __config__=config, **fields)
    errs, resolved = _contract(values.get("data_contract"), "data_contract.")[1], {}
    try:
        resolved = model.model_validate(dict(values)).model_dump()
    except ValidationError as e:
        errs = problems(e, model.model_fields) + errs
        if any(s.startswith("unknown parameter") for s in errs):
            errs.append(f"{notebook} declares: {', '.join(sorted(decls))}")
    weights = [resolved.get(w) for w in WEIGHTS]
    if all(isinstance(w, (int, float)) for w in weights) and not any(w > 0 for w in weights):
        errs.append(f"{', '.join(WEIGHTS)} are all 0: nothing to choose by; give one a positive weight")
    least, most = resolved.get("load_min_requests"), resolved.get("load_max_requests")
    if isinstance(least, int) and isinstance(most, int) and least > most:
        errs.append(f"load_min_requests ({least}) is over load_max_requests ({most}): raise the second")
    demo, epochs = resolved.get("lr_demo_epochs"), resolved.get("num_epochs")
    if isinstance(demo, int) and isinstance(epochs, int) and demo > epochs:
        errs.append(
            f"lr_demo_epochs ({demo}) is over num_epochs ({epochs}): the demo stops within the sweep's run"
        )
    if errs:
        raise ParamError(f"invalid parameters for {notebook}:{listing(errs)}")
    return resolved


def did_you_mean(name: str, known: Iterable[str]) -> str:
    close = " or ".join(repr(n) for n in difflib.get_close_matches(name, list(known), n=2))
    return f"; did you mean {close}?" if close else ""


def available_profiles() -> list[str]:
    return sorted(p.stem for p in paths.PARAMS.glob("*.yaml"))


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, but a key given twice in one mapping is an error (YAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key, line = self.construct_object(key_node, deep=deep), key_node.start_mark.line + 1
            if key in seen:
                why = f"key {key!r} is set twice (lines {seen[key]} and {line})"
                raise yaml.constructor.ConstructorError(None, None, why, key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_profile(profile: str) -> dict[str, dict[str, Any]]:
    """``params/<profile>.yaml`` as ``{"shared": {the data contract}, "<notebook>": {...}}``."""
    path = paths.PARAMS / f"{profile}.yaml"
    if not path.exists():
        raise ParamError(f"unknown profile {profile!r}: no {path} ({', '.join(available_profiles())})")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as e:
        raise ParamError(f"{path.name} is not valid YAML: {e}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) or v is None for v in data.values()):
        raise ParamError(f"{path.name}: expected sections 'shared:' and '<notebook>:', each of name: value")
    if unknown := [s for s in data if s != "shared" and s not in BY_NAME]:
        raise ParamError(f"{path.name}: unknown section(s) {unknown}; use 'shared' or {', '.join(BY_NAME)}")
    data = {k: dict(v or {}) for k, v in data.items()}
    if errs := _contract(data.get("shared", {}), "shared.")[1]:
        raise ParamError(f"{path.name}: 'shared:' is the data contract (see contract.py):{listing(errs)}")
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
    return name.strip(), raw if isinstance(value, dict) else value  # "csv:x" reads as a mapping: text meant


def run_contract(profile_data: Mapping[str, Mapping], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A run's data contract, every field: the profile's ``shared:`` changed by the overrides of its keys."""
    given = {k: v for k, v in overrides.items() if k in contract.FIELDS}
    the_contract, errs = _contract({**profile_data.get("shared", {}), **given}, "")
    if errs:
        raise ParamError(f"invalid data contract (lib/runner/contract.py):{listing(errs)}")
    return the_contract


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
        base = made_under(teacher)
        if diffs := contract.differences(base, {**base, **given}, "the teacher"):
            raise ParamError(
                f"{notebook} measures against the teacher ({teacher}), made under another data contract:"
                f"{listing(diffs)}\nDrop these from data_contract, or run 00_baseline with them first."
            )
    p = Params(**values, **contract.DataContract(**{**base, **given}).model_dump())
    folders.begin_hand_run(p.profile, notebook)
    return p
