"""The trade-off view of a run: every record's variants in one table (:func:`variants_table`), which
of them are Pareto-optimal, and which one a user's weights pick (:func:`choose`). (The run's one-page
``report.html`` is :mod:`lib.runner.page`.)

A variant is **dominated** when another is at least as good on every objective and strictly better on one; the
others form the Pareto front (:func:`pareto_front`). Among them a user chooses by weights
(:func:`weighted_choice`): each objective is first rescaled to [0, 1] over the candidates (min–max, so that a
weight means the same whatever the units), turned so that 1 is the best value, and the value of a variant is
``Σ weight × normalised objective``. The design notes' ``value = speed − k·cost + λ₁·explainability +
λ₂·privacy`` is this with ``cost`` (size) to minimise: its weight ``k`` rewards small models once the
direction is turned. Missing values (a model without a privacy guarantee has no ε) score 0 on that objective:
the worst.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .runner import contract, folders
from .runner.catalog import NOTEBOOKS, producer_of
from .runner.records import MEASURED, METRICS, load, load_run

DIRECTIONS = ("max", "min")


def check_objectives(frame: pd.DataFrame, directions: Mapping[str, str]) -> None:
    """A clear error for an objective that is not a column or a direction that is not ``max``/``min``."""
    missing = [c for c in directions if c not in frame.columns]
    if missing:
        raise KeyError(
            f"objectives {missing} are not columns of the table ({', '.join(map(str, frame.columns))})"
        )
    bad = {c: d for c, d in directions.items() if d not in DIRECTIONS}
    if bad:
        raise ValueError(f"each objective is maximised or minimised ({DIRECTIONS}), got {bad}")


# @save
def pareto_front(frame: pd.DataFrame, directions: Mapping[str, str]) -> pd.Series:
    """``True`` for the rows no other row dominates on the ``directions`` columns (``{"accuracy": "max",
    "size_mb": "min"}``). Rows with a missing objective are not compared and not on the front."""
    check_objectives(frame, directions)
    complete = frame[list(directions)].notna().all(axis=1)
    signs = np.array([1.0 if d == "max" else -1.0 for d in directions.values()])
    values = (
        frame.loc[complete, list(directions)].to_numpy(dtype=float) * signs
    )  # larger is better everywhere
    front = np.ones(len(values), dtype=bool)
    for i, v in enumerate(values):
        others = np.delete(values, i, axis=0)
        front[i] = not np.any(np.all(others >= v, axis=1) & np.any(others > v, axis=1))
    out = pd.Series(False, index=frame.index)
    out[complete[complete].index] = front
    return out


# @save
def normalised(frame: pd.DataFrame, directions: Mapping[str, str]) -> pd.DataFrame:
    """Each objective rescaled to [0, 1] over the rows, 1 = best (a constant column is 1 everywhere; missing =
    0)."""
    check_objectives(frame, directions)
    out = {}
    for col, d in directions.items():
        x = frame[col].astype(float)
        lo, hi = x.min(), x.max()
        if not hi > lo:  # one value (or none): every row is as good as the best
            out[col] = x.notna().astype(float)
            continue
        scaled = (x - lo) / (hi - lo)
        out[col] = (scaled if d == "max" else 1.0 - scaled).fillna(0.0)
    return pd.DataFrame(out, index=frame.index)


# @save
def weighted_choice(
    frame: pd.DataFrame, directions: Mapping[str, str], weights: Mapping[str, float]
) -> tuple[str, pd.Series]:
    """The row with the largest ``Σ weight × normalised objective`` and every row's value (sorted, best
    first). Weights must be >= 0, not all 0, and name only objectives in ``directions``."""
    unknown = [w for w in weights if w not in directions]
    if unknown:
        raise KeyError(f"weights for {unknown}, which are not objectives ({', '.join(directions)})")
    if any(w < 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
        raise ValueError(f"weights must be >= 0 and not all 0, got {dict(weights)}")
    scores = normalised(frame, directions)
    value = sum(scores[c] * w for c, w in weights.items()).sort_values(ascending=False, kind="stable")
    return str(value.index[0]), value


# ------------------------------------------------------------------------ one table of a run

TEACHER = "teacher"  # the artifact every speed-up of the report is relative to
# What a row that measured no accuracy may tell about the artifact it names (e.g. an explanation's
# faithfulness): it is added to that artifact's row instead of standing as a row of its own.
ANNOTATIONS = ("faithfulness", "epsilon", "trainable_params", "robust_accuracy", "checklist_failure_rate",
               "attack_success_rate", "fairness_gap")  # fmt: skip
# Variant fields that say how a row was made (shown in its provenance note when present).
DESCRIPTORS = (
    "method",
    "backend",
    "dtype",
    "fraction",
    "sparsity",
    "layers",
    "temperature",
    "alpha",
    "epsilon",
    "world_size",
    "comm_hook",
    "importance",
)
# the record's metrics (its speed-up is re-labelled: over the teacher), then what the report adds
COLUMNS = (
    "source",
    *METRICS[:-1],
    "speedup_vs_teacher",
    "trainable_params",
    "epsilon",
    "faithfulness",
    "robust_accuracy",
    "checklist_failure_rate",
    "attack_success_rate",
    "fairness_gap",
    "provenance",
    "unmeasured",
)
REPORT_COLUMNS = tuple(c for c in COLUMNS if c not in ("source", "num_params"))  # what report.html shows


def _describe(v: Mapping, rec: Mapping) -> str:
    bits = []
    for key in DESCRIPTORS:
        x = v.get(key)
        if x is None or x == "" or (isinstance(x, float) and np.isnan(x)):
            continue
        bits.append(f"{key} {x:.3g}" if isinstance(x, float) else f"{key} {x}")
    return f"{rec['notebook']}" + (f": {', '.join(bits)}" if bits else "")


def aggregates(records: Sequence[Mapping]) -> set[str]:
    """The notebooks whose record gathers other records' variants (its variants name their ``source``)."""
    return {r["notebook"] for r in records if any("source" in v for v in r["variants"])}


def canonical(records: Sequence[Mapping]) -> dict[str, tuple[str, str]]:
    """``artifact -> (notebook, variant)``: the row that measured each artifact where it was made (in the
    record of the notebook that produces it), else the first row that names it."""
    out: dict[str, tuple[str, str]] = {}
    for rec in records:
        for v in rec["variants"]:
            a = v.get("artifact")
            if not a or v.get("accuracy") is None or "source" in v:
                continue
            made_here = producer_of(a) == rec["notebook"]
            if a not in out or (made_here and producer_of(a) != out[a][0]):
                out[a] = (rec["notebook"], v["name"])
    return out


def missing_notebooks(records: Sequence[Mapping], before: str) -> list[str]:
    """The notebooks before ``before`` in the catalog that have no record in ``records``."""
    have = {r["notebook"] for r in records}
    names = [nb.name for nb in NOTEBOOKS]
    return [n for n in names[: names.index(before)] if n not in have]


def variants_table(records: Sequence[Mapping]) -> pd.DataFrame:
    """Every variant of every record in one table, indexed by a unique name, with the columns of
    :data:`COLUMNS`; it reads any record, knowing no notebook by name:

    - a saved artifact measured by several notebooks (the teacher, re-measured as later notebooks' reference)
      appears once, from the record of the notebook that made it (:func:`canonical`);
    - a row that measured no accuracy but names an artifact (an explanation of the teacher) adds its
      :data:`ANNOTATIONS` to that artifact's row;
    - ``speedup_vs_teacher`` is each notebook's own side-by-side ratio when that notebook's reference is the
      teacher, else the variant's own ``speedup_vs_teacher`` (a notebook whose reference is another model
      timed it beside the teacher: 07_privacy), else empty;
    - records that gather others' variants (:func:`aggregates`) are left out."""
    skip, canon = aggregates(records), canonical(records)
    mixed = len({r.get("run") for r in records}) > 1  # records from several runs (made by hand): name each
    rows: dict[str, dict] = {}
    notes: list[tuple[str, Mapping]] = []
    for rec in (r for r in records if r["notebook"] not in skip):
        nb, ref = rec["notebook"], next(v for v in rec["variants"] if v["role"] == "reference")
        for v in rec["variants"]:
            a = v.get("artifact")
            if v.get("accuracy") is None:
                if a:
                    notes.append((a, v))
                continue
            if a and canon.get(a) != (nb, v["name"]):
                continue  # measured again elsewhere; shown once, where it was made
            name = v["name"] if v["name"] not in rows else f"{v['name']} ({nb[:2]})"
            rows[name] = {
                "artifact": a,
                "source": nb,
                "variant": v["name"],
                **{m: v.get(m) for m in METRICS[:-1]},
                "speedup_vs_teacher": v.get("speedup_vs_reference")
                if ref.get("artifact") == TEACHER
                else v.get("speedup_vs_teacher"),
                **{k: v.get(k) for k in ANNOTATIONS},
                "provenance": _describe(v, rec) + (f" (run {rec.get('run')})" if mixed else ""),
                "unmeasured": v.get("unmeasured"),
            }
    for a, v in notes:
        key = next((k for k, r in rows.items() if (r["source"], r["variant"]) == canon.get(a)), None)
        for k in ANNOTATIONS:
            if key is not None and v.get(k) is not None and rows[key][k] is None:
                rows[key][k] = v[k]
    columns = ["variant", *COLUMNS, "artifact"]
    return (
        pd.DataFrame.from_dict(rows, orient="index").reindex(columns=columns)
        if rows
        else pd.DataFrame(columns=columns)
    )


def run_records(profile: str, run: str = "", fill_before: str = "") -> tuple[Path, list[dict]]:
    """The run folder to report on and its records: ``run`` if named, else this run (the runner's), else
    the newest complete run of ``profile`` with a record of the notebook that makes the teacher. Notebooks
    run by hand (profile ``lab``) each make a run of their own, so there every notebook's newest record is
    taken (each record names its ``run``). ``fill_before`` (a notebook's name; not with a named ``run``):
    each notebook before it that the run lacks is taken from the newest complete run that has it, if that
    record was made under the same data contract as the teacher's (e.g. notebooks run in another run side by
    side); the table then names each row's run."""
    run_dir = folders.source(profile, f"metrics/{producer_of(TEACHER)}.json", run)
    if run or profile != folders.HAND_PROFILE:
        recs = load_run(run_dir)
        if run or not fill_before:
            return run_dir, recs
        order = {nb.name: i for i, nb in enumerate(NOTEBOOKS)}
        every = recs + borrowed(profile, recs, fill_before)
        return run_dir, sorted(every, key=lambda r: order.get(r["notebook"], len(order)))
    return run_dir, newest(profile, [nb.name for nb in NOTEBOOKS])


def newest(profile: str, names: Sequence[str]) -> list[dict]:
    """The newest record of each notebook in ``names`` that has one (this run's, else the newest complete
    run's: :func:`lib.runner.records.load`)."""
    out = []
    for name in names:
        try:
            out.append(load(profile, name))
        except FileNotFoundError:
            continue
    return out


def borrowed(profile: str, records: Sequence[Mapping], before: str) -> list[dict]:
    """For each notebook before ``before`` without a record in ``records``: its :func:`newest` record, if it
    was made under the data contract of ``records``' teacher (none if there is no teacher)."""
    have = {r["notebook"]: r for r in records}
    teacher = have.get(producer_of(TEACHER))
    names = [nb.name for nb in NOTEBOOKS]
    if teacher is None or before not in names:
        return []
    lacking = [n for n in names[: names.index(before)] if n not in have]
    return [r for r in newest(profile, lacking) if contract.of(r["params"]) == contract.of(teacher["params"])]


# ------------------------------------------------------------------------ the user's choice

OBJECTIVES = {"speed": "max", "cost": "min", "explainability": "max", "privacy": "max", "robustness": "max"}


def objectives(table: pd.DataFrame) -> pd.DataFrame:
    """The four objectives of the weighted choice, per variant, before normalisation:

    - ``speed``: batch-32 throughput relative to the teacher, measured side by side in the variant's notebook;
    - ``cost``: size on disk in MB (what a deployment stores and loads);
    - ``explainability``: the ``faithfulness`` an explanation notebook recorded for the model (LIME's
      comprehensiveness: how much the prediction drops when the words it ranks highest are removed);
    - ``privacy``: ``1 / (1 + ε)`` for a model trained with (ε, δ)-DP, 0 for one without a guarantee;
    - ``robustness``: the share of attacked test texts a model gets right and no attack breaks
      (09_robustness's ``robust_accuracy``).
    Unmeasured values stay missing and score 0 (the worst) once normalised."""
    eps = table["epsilon"].astype(float)
    return pd.DataFrame(
        {
            "speed": table["speedup_vs_teacher"].astype(float),
            "cost": table["size_mb"].astype(float),
            "explainability": table["faithfulness"].astype(float),
            "privacy": (1.0 / (1.0 + eps)).fillna(0.0),
            "robustness": table["robust_accuracy"].astype(float),
        },
        index=table.index,
    )


def choose(
    table: pd.DataFrame,
    weights: Mapping[str, float],
    max_points_lost: float,
    teacher_accuracy: float,
    pick: Callable[..., tuple[str, pd.Series]] | None = None,
) -> tuple[str, pd.DataFrame]:
    """The variant a user's ``weights`` (over :data:`OBJECTIVES`) pick among those within ``max_points_lost``
    accuracy points of the teacher, and every candidate's objectives, normalised scores and value (best
    first). ``pick``: the weighted choice to use (a notebook's own :func:`weighted_choice`; default this
    module's)."""
    ok = table[100 * (teacher_accuracy - table["accuracy"].astype(float)) <= max_points_lost]
    if ok.empty:
        raise ValueError(
            f"no variant is within {max_points_lost} points of the teacher's accuracy: raise max_points_lost"
        )
    raw = objectives(ok)
    best, value = (pick or weighted_choice)(raw, OBJECTIVES, weights)
    scores = normalised(raw, OBJECTIVES).add_suffix(" (0-1)")
    out = pd.concat([ok[["accuracy"]], raw, scores], axis=1).loc[value.index]
    out["value"] = value
    return best, out


def best_saved(ranked: pd.DataFrame, table: pd.DataFrame) -> str | None:
    """The artifact of the best-ranked candidate (``ranked``: :func:`choose`'s table, best first) that was
    saved, i.e. can be served (a variant measured but not saved, e.g. a bf16 cast, cannot); ``None`` if
    none was."""
    saved = [
        table.loc[name, "artifact"] for name in ranked.index if isinstance(table.loc[name, "artifact"], str)
    ]
    return saved[0] if saved else None


# ------------------------------------------------------------------------ helpers of the report notebook


def teacher_remeasured(records: Sequence[Mapping]) -> pd.DataFrame:
    """The teacher's speed in every notebook that timed it: how much the same model's numbers move from one
    process to the next (why each speed-up is a ratio measured inside one notebook)."""
    rows = {
        r["notebook"]: {
            "as": v["name"],
            "latency_ms_b1_p50": v.get("latency_ms_b1_p50"),
            "throughput_b32": v.get("throughput_b32"),
        }
        for r in records
        for v in r["variants"]
        if v.get("artifact") == TEACHER and v.get("throughput_b32") is not None and "source" not in v
    }
    return pd.DataFrame.from_dict(rows, orient="index")


def with_rows(
    table: pd.DataFrame, rows: pd.DataFrame, source: str, provenance: Mapping[str, str]
) -> pd.DataFrame:
    """``table`` (of :func:`variants_table`) with the rows of a :class:`lib.experiment.Comparison` table whose
    reference is the teacher appended (their ``speedup_vs_reference`` is the speed-up over the teacher)."""
    add = pd.DataFrame(
        {
            "variant": rows.index,
            "source": source,
            "accuracy": rows["accuracy"],
            "f1": rows["f1"],
            "size_mb": rows["size_mb"],
            "num_params": rows.get("num_params"),
            "latency_ms_b1_p50": rows["latency_ms_b1_p50"],
            "throughput_b32": rows["throughput_b32"],
            "speedup_vs_teacher": rows["speedup_vs_reference"],
            "trainable_params": None,
            "epsilon": None,
            **dict.fromkeys(ANNOTATIONS[3:]),
            "faithfulness": None,
            "provenance": [provenance.get(n, source) for n in rows.index],
            "unmeasured": rows.get("unmeasured"),
            "artifact": rows.get("artifact"),
        },
        index=rows.index,
    )
    return pd.concat([table, add.astype(object).where(add.notna(), None)])


def record_variants(table: pd.DataFrame) -> list[dict]:
    """The ``variants`` of the report notebook's record: every row of the table, with its source notebook and
    provenance; the teacher (its first row) is the reference. A row missing a figure of
    :data:`~lib.runner.records.MEASURED` keeps its notebook's reason (``unmeasured``); a record written before
    rows said why gets a reason that says so."""
    teachers = [n for n, a in table.get("artifact", pd.Series(dtype=object)).items() if a == TEACHER]
    out = []
    for name, row in table.iterrows():
        r = {
            k: (None if (v is None or (isinstance(v, float) and np.isnan(v))) else v) for k, v in row.items()
        }
        out.append(
            {
                "name": str(name),
                "role": "reference" if teachers and name == teachers[0] else "variant",
                "artifact": r.get("artifact"),
                "accuracy": r["accuracy"],
                "f1": r["f1"],
                "size_mb": r["size_mb"],
                "num_params": r.get("num_params"),
                "latency_ms_b1_p50": r["latency_ms_b1_p50"],
                "throughput_b32": r["throughput_b32"],
                "speedup_vs_reference": r["speedup_vs_teacher"],
                **{k: r[k] for k in REPORT_COLUMNS[5:]},
                "speedup_vs_teacher": r["speedup_vs_teacher"],
                "source": r["source"],
            }
        )
        if any(out[-1][m] is None for m in MEASURED) and not out[-1]["unmeasured"]:
            out[-1]["unmeasured"] = (
                f"not measured in {r['source']}; its record (an older run) gives no reason"
            )
    return out


def meets_goal(*goals: tuple[float, float, float]) -> str:
    """Whether measured intervals meet their goals: each ``(low, high, at_least)``. ``"meets"`` if every
    interval lies at or above its goal, ``"misses"`` if any lies wholly below, else ``"within noise"``."""
    if any(high < goal for low, high, goal in goals):
        return "misses"
    return "meets" if all(low >= goal for low, high, goal in goals) else "within noise"
