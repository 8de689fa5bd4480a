"""The trade-off view for ``10_report``: every record's variants in one table (:func:`variants_table`), which
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

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .runner import folders
from .runner.catalog import NOTEBOOKS
from .runner.records import METRICS, load, load_run

DIRECTIONS = ("max", "min")


def _check(frame: pd.DataFrame, directions: Mapping[str, str]) -> None:
    missing = [c for c in directions if c not in frame.columns]
    if missing:
        raise KeyError(
            f"objectives {missing} are not columns of the table ({', '.join(map(str, frame.columns))})"
        )
    bad = {c: d for c, d in directions.items() if d not in DIRECTIONS}
    if bad:
        raise ValueError(f"each objective is maximised or minimised ({DIRECTIONS}), got {bad}")


def pareto_front(frame: pd.DataFrame, directions: Mapping[str, str]) -> pd.Series:
    """``True`` for the rows no other row dominates on the ``directions`` columns (``{"accuracy": "max",
    "size_mb": "min"}``). Rows with a missing objective are not compared and not on the front."""
    _check(frame, directions)
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


def normalised(frame: pd.DataFrame, directions: Mapping[str, str]) -> pd.DataFrame:
    """Each objective rescaled to [0, 1] over the rows, 1 = best (a constant column is 1 everywhere; missing =
    0)."""
    _check(frame, directions)
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

REPORT = "10_report"  # the notebook that reads every other record
TEACHER = ("00_baseline", "teacher")  # the model every speed-up is relative to
# The models 06_explain explains, as variants of the run: its `int8` is 03's picked variant
# (findings.best_int8).
EXPLAINED = {
    "teacher": ("00_baseline", "teacher"),
    "student": ("04_distill", "student-kd"),
    "int8": ("03_quantize", None),
}
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
    "provenance",
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


def _is_teacher(v: Mapping, teacher: Mapping | None) -> bool:
    """A notebook's reference row that is the teacher re-measured (same test accuracy and size as 00's
    teacher)."""
    return (
        teacher is not None
        and v.get("role") == "reference"
        and v.get("accuracy") == teacher.get("accuracy")
        and v.get("size_mb") == teacher.get("size_mb")
    )


def _teacher(by_nb: Mapping[str, Mapping]) -> Mapping | None:
    """00_baseline's teacher row, if the run has that record."""
    base = by_nb.get(TEACHER[0])
    return next((v for v in base["variants"] if v["name"] == TEACHER[1]), None) if base else None


def missing_notebooks(records: Sequence[Mapping]) -> list[str]:
    """The notebooks (before this report) that have no record in the run."""
    have = {r["notebook"] for r in records}
    return [nb.name for nb in NOTEBOOKS if nb.name != REPORT and nb.name not in have]


def variants_table(records: Sequence[Mapping]) -> pd.DataFrame:
    """Every variant of every record (but the report's own) in one table, indexed by a unique name, with the
    columns of :data:`COLUMNS`. The teacher appears once (01–04 re-measure it as their reference: those rows
    are folded into 00's); 06's explanation rows become the ``faithfulness`` of the model they explain (LIME's
    comprehensiveness); ``speedup_vs_teacher`` is each notebook's own side-by-side ratio, and is left empty
    where a notebook's reference is not the teacher (05, 07)."""
    by_nb = {r["notebook"]: r for r in records}
    teacher = _teacher(by_nb)
    rows: dict[str, dict] = {}
    mixed = (
        len({r.get("run") for r in records}) > 1
    )  # records from several runs (notebooks run by hand): name each
    for rec in records:
        nb = rec["notebook"]
        if nb in (REPORT, "06_explain"):
            continue
        ref = next((v for v in rec["variants"] if v["role"] == "reference"), None)
        ref_is_teacher = nb == TEACHER[0] or _is_teacher(ref or {}, teacher)
        for v in rec["variants"]:
            if nb != TEACHER[0] and _is_teacher(v, teacher):
                continue
            name = v["name"] if v["name"] not in rows else f"{v['name']} ({nb[:2]})"
            trainable = v.get(
                "trainable_params", rec["findings"].get("trainable_params") if nb == "07_privacy" else None
            )
            if nb == TEACHER[0] and v["name"] == TEACHER[1]:
                trainable = v.get("num_params")
            rows[name] = {
                "source": nb,
                "variant": v["name"],
                "accuracy": v.get("accuracy"),
                "f1": v.get("f1"),
                "size_mb": v.get("size_mb"),
                "num_params": v.get("num_params"),
                "latency_ms_b1_p50": v.get("latency_ms_b1_p50"),
                "throughput_b32": v.get("throughput_b32"),
                "speedup_vs_teacher": v.get("speedup_vs_reference") if ref_is_teacher else None,
                "trainable_params": trainable,
                "epsilon": v.get("epsilon"),
                "faithfulness": None,
                "provenance": _describe(v, rec) + (f" (run {rec.get('run')})" if mixed else ""),
            }
    explain = by_nb.get("06_explain")
    if explain:
        for row in explain["findings"].get("faithfulness", []):
            if row["method"] != "lime" or row["model"] not in EXPLAINED:
                continue
            nb, name = EXPLAINED[row["model"]]
            name = name or by_nb.get(nb, {}).get("findings", {}).get("best_int8")
            key = next((k for k, r in rows.items() if r["source"] == nb and r["variant"] == name), None)
            if key is not None:
                rows[key]["faithfulness"] = row["comprehensiveness"]
    table = pd.DataFrame.from_dict(rows, orient="index")
    return (
        table.reindex(columns=["variant", *COLUMNS])
        if len(table)
        else pd.DataFrame(columns=["variant", *COLUMNS])
    )


def run_records(profile: str, run: str = "") -> tuple[Path, list[dict]]:
    """The run folder to report on and its records: ``run`` if named, else this run (the runner's), else the
    newest complete run of ``profile`` with a 00_baseline record. Notebooks run by hand (profile ``lab``) each
    make a run of their own, so there every notebook's newest record is taken (each record names its ``run``).
    """
    run_dir = folders.source(profile, f"metrics/{TEACHER[0]}.json", run)
    if run or profile != folders.HAND_PROFILE:
        return run_dir, load_run(run_dir)
    recs = []
    for nb in NOTEBOOKS:
        try:
            recs.append(load(profile, nb.name))
        except FileNotFoundError:
            continue
    return run_dir, recs


# ------------------------------------------------------------------------ the user's choice

OBJECTIVES = {"speed": "max", "cost": "min", "explainability": "max", "privacy": "max"}


def objectives(table: pd.DataFrame) -> pd.DataFrame:
    """The four objectives of the weighted choice, per variant, before normalisation:

    - ``speed``: batch-32 throughput relative to the teacher, measured side by side in the variant's notebook;
    - ``cost``: size on disk in MB (what a deployment stores and loads);
    - ``explainability``: LIME's comprehensiveness (06_explain: how much the prediction drops when the words
      the explanation ranks highest are removed), where measured;
    - ``privacy``: ``1 / (1 + ε)`` for a model trained with (ε, δ)-DP, 0 for one without a guarantee.
    Unmeasured values stay missing and score 0 (the worst) once normalised."""
    eps = table["epsilon"].astype(float)
    return pd.DataFrame(
        {
            "speed": table["speedup_vs_teacher"].astype(float),
            "cost": table["size_mb"].astype(float),
            "explainability": table["faithfulness"].astype(float),
            "privacy": (1.0 / (1.0 + eps)).fillna(0.0),
        },
        index=table.index,
    )


def choose(
    table: pd.DataFrame, weights: Mapping[str, float], max_points_lost: float, teacher_accuracy: float
) -> tuple[str, pd.DataFrame]:
    """The variant a user's ``weights`` (over :data:`OBJECTIVES`) pick among those within ``max_points_lost``
    accuracy points of the teacher, and every candidate's objectives, normalised scores and value (best
    first)."""
    ok = table[100 * (teacher_accuracy - table["accuracy"].astype(float)) <= max_points_lost]
    if ok.empty:
        raise ValueError(
            f"no variant is within {max_points_lost} points of the teacher's accuracy: raise max_points_lost"
        )
    raw = objectives(ok)
    best, value = weighted_choice(raw, OBJECTIVES, weights)
    scores = normalised(raw, OBJECTIVES).add_suffix(" (0-1)")
    out = pd.concat([ok[["accuracy"]], raw, scores], axis=1).loc[value.index]
    out["value"] = value
    return best, out


# ------------------------------------------------------------------------ helpers of 10_report


def teacher_remeasured(records: Sequence[Mapping]) -> pd.DataFrame:
    """The teacher's speed in every notebook that timed it as its reference: how much the same model's numbers
    move from one process to the next (why each speed-up is a ratio measured inside one notebook)."""
    by_nb = {r["notebook"]: r for r in records}
    teacher = _teacher(by_nb)
    rows = {
        r["notebook"]: {
            "as": v["name"],
            "latency_ms_b1_p50": v.get("latency_ms_b1_p50"),
            "throughput_b32": v.get("throughput_b32"),
        }
        for r in records
        for v in r["variants"]
        if (r["notebook"] == TEACHER[0] and v["name"] == TEACHER[1]) or _is_teacher(v, teacher)
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
            "faithfulness": None,
            "provenance": [provenance.get(n, source) for n in rows.index],
        },
        index=rows.index,
    )
    return pd.concat([table, add.astype(object).where(add.notna(), None)])


def record_variants(table: pd.DataFrame) -> list[dict]:
    """The ``variants`` of 10_report's record: every row of the table, with its source notebook and
    provenance; the teacher is the reference."""
    out = []
    for name, row in table.iterrows():
        r = {
            k: (None if (v is None or (isinstance(v, float) and np.isnan(v))) else v) for k, v in row.items()
        }
        out.append(
            {
                "name": str(name),
                "role": "reference" if (r["source"], r["variant"]) == TEACHER else "variant",
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
    return out
