"""The metrics record, ``<run>/metrics/<notebook>.json``: declared once with pydantic (:class:`Record`,
:class:`Variant`), checked on every write, read by the report, the README block, the page and MLflow. A
record holds the ``params`` a notebook ran with, the ``env`` of its numbers (versions, threads, CPU model and
class), its ``findings`` (``headline`` names the few to show), ``figures``, ``inputs`` (what it took from
earlier runs) and ``variants``: the models it measured, exactly one the ``reference``, each naming the saved
``artifact`` it measured, if any; a metric not measured is ``null``. ``speedup_vs_reference`` is a batch-32
throughput ratio measured side by side in one process.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AfterValidator, BaseModel, Field, FiniteFloat, ValidationError, model_validator

from ..errors import ArtifactError, ParamError, listing
from ..utils import atomic_write_json, env_info
from . import contract, folders, tracking
from .catalog import NOTEBOOKS, run_hint

# A repeat spread above this ((max - min) / median of the batch-32 throughputs) makes a speed figure
# untrustworthy: the machine was busy or throttling (in the idle 2-core default run of 2026-11-26: 1-10%).
MAX_SPREAD = 0.25


Fraction = Annotated[int | float, Field(ge=0, le=1)]  # accuracy, F1: a share, never a percentage
Positive = Annotated[int | FiniteFloat, Field(gt=0)]
ISOTime = Annotated[str, AfterValidator(lambda t: datetime.fromisoformat(t) and t)]


class Env(BaseModel, extra="allow"):
    """Where a record's numbers were measured: every speed figure names its CPU class (``isa``)."""

    python: str
    torch: str
    transformers: str
    threads: int
    cpu: str
    isa: str


class Variant(BaseModel, extra="allow"):
    """One model a notebook measured; a metric not measured, or not applicable, is ``None``. ``artifact``
    names the saved model it measured (the same model measured by several notebooks is known by it)."""

    name: str
    role: Literal["reference", "variant"] = "variant"
    artifact: str | None = None
    accuracy: Fraction | None = None
    f1: Fraction | None = None
    size_mb: Positive | None = None
    num_params: Positive | None = None
    latency_ms_b1_p50: Positive | None = None
    throughput_b32: Positive | None = None
    speedup_vs_reference: Positive | None = None
    unmeasured: str | None = None  # why a row lacks one of MEASURED (a sweep point, a demo, a served config)

    @model_validator(mode="after")
    def _says_why(self) -> Variant:
        missing = [m for m in MEASURED if getattr(self, m) is None]
        if missing and not (self.unmeasured or "").strip():
            raise ValueError(
                f"variant {self.name!r} has no {', '.join(missing)}: measure it, or say why in `unmeasured`"
            )
        return self


# What every row of the report has, or says why not (`unmeasured`): accuracy, size and speed.
MEASURED = ("accuracy", "size_mb", "throughput_b32")
METRICS = tuple(Variant.model_fields)[3:-1]  # every variant's metrics, in the order tables show them


class Record(BaseModel, extra="allow"):
    """One notebook's metrics record (its keys: this module's docstring)."""

    notebook: str
    profile: str
    created: ISOTime
    params: dict[str, Any]
    env: Env
    variants: list[Variant] = Field(min_length=1)
    findings: dict[str, Any]
    figures: list[str] = []
    run: str | None = None
    inputs: dict[str, str] = {}
    run_seconds: float | None = None
    headline: list[str] = []
    warnings: list[str] = []

    @model_validator(mode="after")
    def _one_reference(self) -> Record:
        names, refs = [v.name for v in self.variants], [v for v in self.variants if v.role == "reference"]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique: {names}")
        if len(refs) != 1:
            raise ValueError(f"exactly one variant must have role 'reference' (found {len(refs)})")
        speedup = refs[0].speedup_vs_reference
        if speedup is not None and abs(speedup - 1.0) > 1e-9:
            raise ValueError(f"the reference's speedup_vs_reference must be 1.0, got {speedup}")
        return self


def validate_record(rec: Mapping[str, Any]) -> dict[str, Any]:
    """``rec`` with every declared key present (missing metrics as ``None``), as plain JSON types; a
    ``ValueError`` naming every field that breaks the schema (:class:`Record`) otherwise."""
    try:
        return Record.model_validate(rec).model_dump(mode="json")
    except ValidationError as e:
        problems = [f"{'.'.join(map(str, err['loc'])) or 'record'}: {err['msg']}" for err in e.errors()]
        raise ValueError(f"the metrics record breaks its schema (records.py):{listing(problems)}") from None


def record(
    notebook: str,
    params: Mapping[str, Any],
    variants: Sequence[Mapping[str, Any]],
    findings: Mapping[str, Any],
    figures: Sequence[Path | str] = (),
    env: Mapping[str, Any] | None = None,
    **extra: Any,
) -> Path:
    """Validate and atomically write the notebook's metrics record; return its path."""
    profile = params["profile"]
    base = folders.current(profile)
    figs = [str(Path(f).relative_to(base) if base in Path(f).parents else f) for f in figures]
    rec = validate_record(plain({
        "notebook": notebook, "profile": profile, "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "params": dict(params), "env": dict(env or env_info()), "variants": [dict(v) for v in variants],
        "findings": dict(findings), "figures": figs, "run": base.name, "inputs": folders.inputs(), **extra,
    }))  # fmt: skip
    out = atomic_write_json(folders.metrics_path(profile, notebook), rec)
    if tracking.enabled():  # opt-in: python -m lib.runner --mlflow, or MUXL_MLFLOW=1
        seconds = tracking.log_record(rec, base, out, METRICS)
        print(f"MLflow: {notebook} logged to {tracking.tracking_uri()} in {seconds:.1f} s")
    folders.notebook_done(profile, notebook)  # a notebook run by hand: its run is complete now
    return out


def stamp_run(profile: str, notebook: str, seconds: float, started: datetime) -> bool:
    """Add the runner's wall-clock ``run_seconds`` to the record the notebook just wrote in this run (atomic
    rewrite). False, changing nothing, when there is no record or it predates ``started`` (a notebook that did
    not write its record this run must not inherit the time)."""
    path = folders.metrics_path(profile, notebook)
    if not path.exists():
        return False
    rec = json.loads(path.read_text(encoding="utf-8"))
    if datetime.fromisoformat(rec["created"]) < started.replace(microsecond=0):
        return False
    atomic_write_json(path, validate_record({**rec, "run_seconds": float(seconds)}))
    return True


def load(profile: str, notebook: str, run: str = "") -> dict[str, Any]:
    """``notebook``'s record: from ``run`` if named, else this run, else the newest complete run of
    ``profile`` that has one (``FileNotFoundError`` naming the notebook to run)."""
    rel = f"metrics/{notebook}.json"
    try:
        path = folders.source(profile, rel, run) / rel
    except ArtifactError as e:
        raise FileNotFoundError(f"no metrics for {notebook} ({e}): run that notebook first") from None
    if not path.exists():
        raise FileNotFoundError(f"no metrics for {notebook} in run {path.parent.parent.name}: run it first")
    return json.loads(path.read_text(encoding="utf-8"))


def load_run(run_dir: Path) -> list[dict[str, Any]]:
    """Every record of one run folder: the catalog's notebooks in their order, then any other by name."""
    order = {nb.name: i for i, nb in enumerate(NOTEBOOKS)}
    found = sorted((Path(run_dir) / "metrics").glob("*.json"), key=lambda p: (order.get(p.stem, 99), p.stem))
    return [json.loads(p.read_text(encoding="utf-8")) for p in found]


def own_variants(rec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The variants a record measured itself (an aggregating record also lists others', with ``source``)."""
    return [v for v in rec["variants"] if v.get("source", rec["notebook"]) == rec["notebook"]]


def plain(obj: Any) -> Any:
    """numpy scalars/arrays and paths -> plain JSON types, NaN -> None."""
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(float(obj)) else None
    return str(obj) if isinstance(obj, Path) else obj


def fmt(x: Any, spec: str) -> str:
    """A value as a table shows it: ``–`` if missing, booleans and texts in backticks, dicts as ``{k: v}``."""
    if x is None:
        return "–"
    if isinstance(x, bool):  # before numbers: True would print as 1
        return f"`{str(x).lower()}`"
    if isinstance(x, Mapping):  # a finding per method or model, e.g. {"lime": 0.49, "random": 0.04}
        return "{" + ", ".join(f"{k}: {fmt(v, spec)}" for k, v in x.items()) + "}"
    return f"`{x}`" if isinstance(x, str) else format(x, spec)


def comparable_record(profile: str, notebook: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """``notebook``'s record (:func:`load`, from ``params["input_run"]`` or this run...), refused with every
    difference named if it was measured under another data contract than ``params``."""
    try:
        rec = load(profile, notebook, params.get("input_run", ""))
    except FileNotFoundError as e:
        raise ArtifactError(f"{e}. {run_hint(notebook, profile)}") from None
    if diffs := contract.differences(contract.of(rec["params"]), contract.of(params), notebook):
        raise ParamError(
            f"{notebook}'s results (profile {profile!r}, run {rec.get('run')}) were measured under "
            f"another data contract: they cannot be the reference here:{listing(diffs)}\n"
            + run_hint(notebook, profile)
        )
    return rec
