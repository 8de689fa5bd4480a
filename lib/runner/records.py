"""The metrics record: one JSON file per notebook run, ``<run>/metrics/<notebook>.json``, declared once with
pydantic (:class:`Record`, :class:`Variant`) and checked on every write. The ``10_report`` notebook, the
README block, the report page and MLflow all read it.

A record names its ``notebook``, ``profile``, ``run`` (folder id) and ``created`` time; holds the resolved
``params``, the ``env`` its numbers were measured in (versions, threads, CPU model and class), ``findings``
(the notebook's own numbers; ``headline`` names the few to show), ``figures`` (paths in the run), ``inputs``
(what it took from earlier runs: ``{"models/teacher": "<run id>"}``), ``warnings`` and, added by the runner,
``run_seconds``. Its ``variants`` are the models it measured, exactly one the ``reference`` the others are
compared with; each may name the saved ``artifact`` it measured (``"teacher"``, ``"student"``...), and a
metric not measured or not applicable is ``null``. ``speedup_vs_reference`` is a batch-32 throughput ratio
measured side by side in one process (1.0 for the reference).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import ArtifactError, ParamError
from ..utils import atomic_write_json, env_info
from . import contract, folders, tracking
from .catalog import NOTEBOOKS, run_hint

# The metrics every variant has (``None`` where they do not apply), in the order tables show them.
METRICS = (
    "accuracy",
    "f1",
    "size_mb",
    "num_params",
    "latency_ms_b1_p50",
    "throughput_b32",
    "speedup_vs_reference",
)
# A repeat spread above this ((max - min) / median of the batch-32 throughputs) makes a speed figure
# untrustworthy: the machine was busy or throttling. In the idle 2-core default run of 2026-11-26 every spread
# was 1-10%.
MAX_SPREAD = 0.25
BENCH = ("latency_ms_b1_p50", "latency_ms_b1_p90", "throughput_b32", "speedup_vs_reference")  # from lib.bench


def _finite(x: float) -> float:
    if isinstance(x, float) and not math.isfinite(x):
        raise ValueError("must be a finite number")
    return x


def _iso(text: str) -> str:
    datetime.fromisoformat(text)  # raises ValueError: "Invalid isoformat string"
    return text


Fraction = Annotated[int | float, Field(ge=0, le=1)]  # accuracy, F1: a share, never a percentage
Positive = Annotated[int | float, Field(gt=0), AfterValidator(_finite)]


class Env(BaseModel):
    """Where a record's numbers were measured: every speed figure names its CPU class (``isa``)."""

    model_config = ConfigDict(extra="allow")
    python: str
    torch: str
    transformers: str
    threads: int
    cpu: str
    isa: str


class Variant(BaseModel):
    """One model a notebook measured. Every metric is optional (``None``: not measured here, or does not
    apply); notebooks add keys of their own freely. ``artifact`` names the saved artifact the row measured
    (``"teacher"``, ``"student"``...): the same model measured by several notebooks is recognised by it."""

    model_config = ConfigDict(extra="allow")
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


class Record(BaseModel):
    """One notebook's metrics record (the keys are described in this module's docstring)."""

    model_config = ConfigDict(extra="allow")
    notebook: str
    profile: str
    created: Annotated[str, AfterValidator(_iso)]
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
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique: {names}")
        refs = [v for v in self.variants if v.role == "reference"]
        if len(refs) != 1:
            raise ValueError(f"exactly one variant must have role 'reference' (found {len(refs)})")
        s = refs[0].speedup_vs_reference
        if s is not None and abs(s - 1.0) > 1e-9:
            raise ValueError(f"the reference's speedup_vs_reference must be 1.0, got {s}")
        return self

    @property
    def reference(self) -> Variant:
        """The variant the others are compared with."""
        return next(v for v in self.variants if v.role == "reference")


def variant(
    name: str,
    role: str,
    metrics: Mapping[str, Any],
    bench: Mapping[str, Any] | None = None,
    size: Mapping[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One ``variants`` entry from a metrics dict, a row of ``lib.bench.compare`` and ``size_info``."""
    bench, size = ({} if x is None else x for x in (bench, size))
    return _plain({
        "name": name, "role": role, "accuracy": metrics.get("accuracy"), "f1": metrics.get("f1"),
        "size_mb": size.get("size_mb"), "num_params": size.get("num_params"),
        **{k: bench.get(k) for k in BENCH},
        "throughput_b32_spread": bench.get("throughput_spread"),  # (max - min) / median of the repeats
        "load_average": bench.get("load_average"),  # 1-minute load average while it was measured
        **extra,
    })  # fmt: skip


def validate_record(rec: Mapping[str, Any]) -> dict[str, Any]:
    """``rec`` with every declared key present (missing metrics as ``None``), as plain JSON types; a
    ``ValueError`` naming every field that breaks the schema (:class:`Record`) otherwise."""
    try:
        return Record.model_validate(rec).model_dump(mode="json")
    except ValidationError as e:
        problems = [f"{'.'.join(map(str, err['loc'])) or 'record'}: {err['msg']}" for err in e.errors()]
        raise ValueError(
            "metrics record does not match the schema (lib/runner/records.py):\n  - "
            + "\n  - ".join(problems)
        ) from None


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
    rec = validate_record(_plain({
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
        raise FileNotFoundError(
            f"no metrics for {notebook} in profile {profile!r} ({e}): run that notebook first"
        ) from None
    if not path.exists():
        raise FileNotFoundError(
            f"no metrics for {notebook} in run {path.parent.parent.name}: run that notebook first"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def load_run(run_dir: Path) -> list[dict[str, Any]]:
    """Every record of one run folder: the catalog's notebooks in their order, then any other by name."""
    order = {nb.name: i for i, nb in enumerate(NOTEBOOKS)}
    found = sorted(
        (Path(run_dir) / "metrics").glob("*.json"), key=lambda p: (order.get(p.stem, len(order)), p.stem)
    )
    return [json.loads(p.read_text(encoding="utf-8")) for p in found]


def own_variants(rec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The variants a record measured itself (an aggregating record also lists others', with ``source``)."""
    return [v for v in rec["variants"] if v.get("source", rec["notebook"]) == rec["notebook"]]


def _plain(obj: Any) -> Any:
    """numpy scalars/arrays and paths -> plain JSON types, NaN -> None."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(float(obj)) else None
    return str(obj) if isinstance(obj, Path) else obj


def fmt(x: Any, spec: str) -> str:
    """A value as a table shows it: ``–`` for missing, booleans and strings in backticks, a dict as
    ``{k: v}``."""
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
    diffs = contract.differences(contract.of(rec["params"]), contract.of(params), notebook)
    if diffs:
        raise ParamError(
            f"{notebook}'s results (profile {profile!r}, run {rec.get('run')}) were measured under another "
            f"data "
            "contract, so they cannot serve as the reference here:\n  - "
            + "\n  - ".join(diffs)
            + f"\n{run_hint(notebook, profile)}"
        )
    return rec
