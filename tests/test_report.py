"""lib.report: the Pareto front and the weighted choice of 10_report, on tables whose answer is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import lib

TABLE = pd.DataFrame(
    {
        "accuracy": [0.83, 0.83, 0.80, 0.79, 0.70],
        "throughput": [150.0, 370.0, 480.0, 470.0, 1000.0],
        "size_mb": [90.0, 65.0, 23.0, 23.0, None],
    },
    index=["teacher", "student", "int8", "int8-worse", "unknown-size"],
)
OBJECTIVES = {"accuracy": "max", "throughput": "max", "size_mb": "min"}


def test_pareto_front_drops_the_dominated_and_the_incomplete():
    front = lib.report.pareto_front(TABLE, OBJECTIVES)
    # teacher: the student is as accurate, faster and smaller; int8-worse: int8 beats it on all three
    assert front.to_dict() == {
        "teacher": False,
        "student": True,
        "int8": True,
        "int8-worse": False,
        "unknown-size": False,
    }
    two = lib.report.pareto_front(TABLE, {"accuracy": "max", "throughput": "max"})
    assert two["unknown-size"] and two["student"] and not two["teacher"]  # with size left out, it competes


def test_equal_rows_do_not_dominate_each_other():
    same = pd.DataFrame({"a": [1.0, 1.0], "b": [2.0, 2.0]}, index=["x", "y"])
    assert lib.report.pareto_front(same, {"a": "max", "b": "min"}).all()


def test_normalised_objectives_put_the_best_at_one():
    n = lib.report.normalised(TABLE, OBJECTIVES)
    assert n.loc["student", "accuracy"] == 1.0 and n.loc["unknown-size", "accuracy"] == 0.0
    assert n.loc["int8", "size_mb"] == 1.0 and n.loc["teacher", "size_mb"] == 0.0  # smaller is better
    assert n.loc["unknown-size", "size_mb"] == 0.0  # missing scores the worst
    assert np.allclose(lib.report.normalised(pd.DataFrame({"c": [3.0, 3.0]}), {"c": "min"})["c"], 1.0)


def test_the_choice_follows_the_weights():
    accurate, _ = lib.report.weighted_choice(TABLE, OBJECTIVES, {"accuracy": 1.0})
    fast, _ = lib.report.weighted_choice(TABLE, OBJECTIVES, {"throughput": 1.0})
    balanced, values = lib.report.weighted_choice(
        TABLE, OBJECTIVES, {"accuracy": 1.0, "throughput": 0.5, "size_mb": 0.5}
    )
    assert (
        accurate == "teacher" and fast == "unknown-size"
    )  # teacher and student tie on accuracy: the table's order
    assert balanced == "int8" and values.index[0] == "int8" and values.is_monotonic_decreasing


def test_bad_objectives_and_weights_are_refused():
    with pytest.raises(KeyError, match="latency"):
        lib.report.pareto_front(TABLE, {"latency": "min"})
    with pytest.raises(ValueError, match="maximised or minimised"):
        lib.report.normalised(TABLE, {"accuracy": "up"})
    with pytest.raises(KeyError, match="privacy"):
        lib.report.weighted_choice(TABLE, OBJECTIVES, {"privacy": 1.0})
    with pytest.raises(ValueError, match="not all 0"):
        lib.report.weighted_choice(TABLE, OBJECTIVES, {"accuracy": 0.0})
    with pytest.raises(ValueError, match=">= 0"):
        lib.report.weighted_choice(TABLE, OBJECTIVES, {"accuracy": 1.0, "size_mb": -1.0})


# ------------------------------------------------------------------------ the run's table


def _v(name, role="variant", **kw):
    """A variant as a notebook passes it: only what it measured (the record's schema fills the rest with
    None), and why it lacks what it lacks."""
    if any(kw.get(m) is None for m in lib.runner.records.MEASURED):
        kw.setdefault("unmeasured", f"why {name} lacks a figure")
    return lib.runner.records.Variant(name=name, role=role, **kw).model_dump()


TEACHER = dict(
    artifact="teacher",
    accuracy=0.83,
    f1=0.82,
    size_mb=90.0,
    num_params=22e6,
    trainable_params=22e6,
    throughput_b32=150.0,
    speedup_vs_reference=1.0,
)
RECORDS = [
    {
        "notebook": "00_baseline",
        "params": {},
        "findings": {},
        "variants": [_v("teacher", "reference", **TEACHER), _v("tfidf-logreg", accuracy=0.74)],
    },
    {
        "notebook": "03_quantize",
        "params": {},
        "findings": {},
        "variants": [
            _v("fp32", "reference", **{**TEACHER, "throughput_b32": 160.0}),  # the teacher, measured again
            _v(
                "ort int8",
                artifact="quantized",
                accuracy=0.82,
                size_mb=23.0,
                throughput_b32=500.0,
                speedup_vs_reference=3.1,
                backend="onnxruntime",
                dtype="int8",
            ),
        ],
    },
    {
        "notebook": "06_explain",
        "params": {},
        "findings": {},
        "variants": [  # explanations: no accuracy, each names the artifact it explains
            _v("teacher-lime", artifact="teacher", faithfulness=0.5),
            _v("teacher-random", "reference", artifact="teacher"),
            _v("int8-lime", artifact="quantized", faithfulness=0.45),
        ],
    },
    {
        "notebook": "07_privacy",
        "params": {},
        "findings": {},
        "variants": [
            _v("non-private", "reference", accuracy=0.76, trainable_params=1000),
            _v("dp-eps-8", accuracy=0.75, epsilon=8.0, trainable_params=1000, speedup_vs_teacher=0.98),
            _v("dp-eps-1", accuracy=0.70, epsilon=1.0, trainable_params=1000),
        ],
    },
]


def test_variants_table_folds_the_teacher_and_attaches_what_other_notebooks_measured():
    t = lib.report.variants_table(RECORDS)
    assert list(t.index) == ["teacher", "tfidf-logreg", "ort int8", "non-private", "dp-eps-8", "dp-eps-1"]
    assert t.loc["ort int8", "speedup_vs_teacher"] == 3.1 and t.loc["ort int8", "faithfulness"] == 0.45
    assert t.loc["teacher", "faithfulness"] == 0.5 and t.loc["teacher", "trainable_params"] == 22e6
    assert pd.isna(t.loc["dp-eps-1", "speedup_vs_teacher"])  # 07's reference is not the teacher ...
    assert t.loc["dp-eps-8", "speedup_vs_teacher"] == 0.98  # ... but a variant timed beside it says so
    assert t.loc["dp-eps-8", "epsilon"] == 8.0 and t.loc["dp-eps-8", "trainable_params"] == 1000
    assert t.loc["ort int8", "provenance"] == "03_quantize: backend onnxruntime, dtype int8"
    assert t.loc["tfidf-logreg", "unmeasured"] == "why tfidf-logreg lacks a figure"  # the notebook's reason
    assert pd.isna(t.loc["ort int8", "unmeasured"])
    assert lib.report.missing_notebooks(RECORDS, before="06_explain") == [
        "01_lora_finetune",
        "02_prune",
        "04_distill",
        "05_distributed",
    ]
    assert list(lib.report.teacher_remeasured(RECORDS)["throughput_b32"]) == [150.0, 160.0]


def test_a_record_the_report_has_never_seen_joins_the_table_and_the_choice():
    """A notebook no code knows by name: its rows are read like any other's, the teacher it re-measured is
    folded into the teacher's row, and its variant can be the one the weights pick."""
    new = {
        "notebook": "99_brand_new",
        "params": {},
        "findings": {},
        "variants": [
            _v("teacher again", "reference", **{**TEACHER, "throughput_b32": 155.0}),
            _v("tiny-fast", accuracy=0.825, size_mb=5.0, throughput_b32=2000.0, speedup_vs_reference=12.9),
            _v("tiny-fast-explained", artifact="teacher", faithfulness=0.9),  # no accuracy: annotates
        ],
    }
    t = lib.report.variants_table([*RECORDS, new])
    assert "tiny-fast" in t.index and "teacher again" not in t.index and "tiny-fast-explained" not in t.index
    assert t.loc["tiny-fast", "source"] == "99_brand_new" and t.loc["tiny-fast", "speedup_vs_teacher"] == 12.9
    assert t.loc["teacher", "faithfulness"] == 0.5  # the first explanation of the teacher wins; none is lost
    best, _ = lib.report.choose(t, {"speed": 1, "cost": 1, "explainability": 0, "privacy": 0}, 1.0, 0.83)
    assert best == "tiny-fast"


def test_the_choice_respects_the_accuracy_limit_and_privacy_needs_a_guarantee():
    t = lib.report.variants_table(RECORDS)
    best, values = lib.report.choose(t, {"speed": 1, "cost": 1, "explainability": 0, "privacy": 0}, 3.0, 0.83)
    assert best == "ort int8" and set(values.index) == {
        "teacher",
        "ort int8",
    }  # the rest are > 3 points behind
    best, values = lib.report.choose(
        t, {"speed": 0, "cost": 0, "explainability": 0, "privacy": 1}, 20.0, 0.83
    )
    assert best == "dp-eps-1" and values.loc["dp-eps-8", "privacy"] == pytest.approx(1 / 9)
    assert values.loc["non-private", "privacy"] == 0.0  # no guarantee: the worst, not missing
    best, _ = lib.report.choose(t, {"speed": 0, "cost": 0, "explainability": 1, "privacy": 0}, 3.0, 0.83)
    assert best == "teacher"
    with pytest.raises(ValueError, match="raise max_points_lost"):
        lib.report.choose(t, {"speed": 1}, 0.0, 0.99)


def test_record_variants_name_their_source_and_keep_the_teacher_as_reference():
    t = lib.report.variants_table(RECORDS)
    stage = pd.DataFrame(
        {
            "accuracy": [0.81],
            "f1": [0.8],
            "size_mb": [9.0],
            "latency_ms_b1_p50": [1.0],
            "throughput_b32": [1200.0],
            "speedup_vs_reference": [8.0],
        },
        index=["stacked (x)"],
    )
    rows = lib.report.record_variants(lib.report.with_rows(t, stage, "10_report", {}))
    by = {r["name"]: r for r in rows}
    assert by["teacher"]["role"] == "reference" and by["teacher"]["source"] == "00_baseline"
    assert by["stacked (x)"]["source"] == "10_report" and by["stacked (x)"]["speedup_vs_teacher"] == 8.0
    assert by["dp-eps-8"]["size_mb"] is None  # missing stays missing (JSON null), never NaN
    assert by["dp-eps-8"]["unmeasured"] == "why dp-eps-8 lacks a figure"
    assert by["stacked (x)"]["unmeasured"] is None
    t.loc["tfidf-logreg", "unmeasured"] = None  # a record from before rows said why
    older = {r["name"]: r for r in lib.report.record_variants(t)}["tfidf-logreg"]["unmeasured"]
    assert older == "not measured in 00_baseline; its record (an older run) gives no reason"
    rec = {"notebook": "10_report", "variants": rows}
    assert [v["name"] for v in lib.runner.records.own_variants(rec)] == ["stacked (x)"]


def test_report_html_shows_what_the_run_has(outputs):
    run_dir = lib.runner.folders.start("smoke", by="test", notebooks=["00_baseline", "03_quantize"])
    (run_dir / "metrics").mkdir()
    env = {"cpu": "test CPU", "isa": "AVX2", "threads": 2}
    for rec in RECORDS[:2]:
        lib.utils.atomic_write_json(run_dir / "metrics" / f"{rec['notebook']}.json", {**rec, "env": env})
    nb = {
        "cells": [{"cell_type": "markdown", "metadata": {}, "source": "# executed"}],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 4,
    }
    (run_dir / "notebooks").mkdir()
    lib.utils.atomic_write_json(run_dir / "notebooks" / "00_baseline.ipynb", nb)
    page = lib.runner.page.write_html(run_dir).read_text(encoding="utf-8")
    assert "<table" in page and "ort int8" in page and "AVX2" in page
    assert 'href="html/00_baseline.html"' in page and (run_dir / "html" / "00_baseline.html").exists()
    assert "03_quantize: <em>not in this run</em>" in page  # no executed notebook
    assert "No record from: 01_lora_finetune" in page and "No report notebook in this run" in page
    assert (
        "<th>size (MB)</th>" in page and "latency_ms_b1_p50" not in page
    )  # headers with units, not raw keys
    assert page.index(">00_baseline</th>") < page.index(">03_quantize</th>")  # grouped by notebook, in order


def test_report_html_groups_an_aggregating_record_and_marks_the_choice(outputs):
    """The page knows no notebook by name: a record whose variants carry their `source` is the aggregate,
    whatever notebook wrote it, and the variants its choice picked are marked."""
    run_dir = lib.runner.folders.start("smoke", by="test", notebooks=[])
    (run_dir / "metrics").mkdir()
    rows = lib.report.record_variants(lib.report.variants_table(RECORDS))
    summary = {
        **RECORDS[0],
        "notebook": "99_somebody_elses",
        "variants": rows,
        "findings": {"best_variant": {"yours": "ort int8", "privacy first": "dp-eps-1"}},
    }
    for rec in [*RECORDS[:1], summary]:
        lib.utils.atomic_write_json(run_dir / "metrics" / f"{rec['notebook']}.json", rec)
    groups = lib.runner.page.groups(lib.runner.records.load_run(run_dir), summary["findings"]["best_variant"])
    assert [g["notebook"] for g in groups[1:]] == ["00_baseline", "03_quantize", "07_privacy"]
    marked = {r["name"]: r["chosen"] for g in groups[1:] for r in g["rows"] if r["chosen"]}
    assert marked == {"ort int8": ["yours"], "dp-eps-1": ["privacy first"]}
    assert "faithfulness (LIME comprehensiveness)" in groups[0]["headers"]


def test_the_served_choice_is_the_best_ranked_saved_variant():
    t = lib.report.variants_table(RECORDS)
    best, ranked = lib.report.choose(t, {"speed": 1, "cost": 1}, 20.0, 0.83)
    saved = lib.report.best_saved(ranked, t)
    assert saved == next(t.loc[n, "artifact"] for n in ranked.index if isinstance(t.loc[n, "artifact"], str))
    assert (
        lib.report.best_saved(
            ranked.loc[[n for n in ranked.index if not isinstance(t.loc[n, "artifact"], str)]], t
        )
        is None
    )


def test_report_html_shows_the_served_rows_after_the_aggregate(outputs):
    """A notebook after the aggregating one (11_serve measures what 10_report chose) adds its own rows and
    columns to the page."""
    run_dir = lib.runner.folders.start("smoke", by="test", notebooks=[])
    (run_dir / "metrics").mkdir()
    rows = lib.report.record_variants(lib.report.variants_table(RECORDS))
    summary = {**RECORDS[0], "notebook": "10_report", "variants": rows, "findings": {"best_variant": {}}}
    served = {
        **RECORDS[0],
        "notebook": "11_serve",
        "variants": [{"name": "teacher · served, unbatched", "role": "reference", "max_rps_at_slo": 60.0,
                      "p99_ms": 41.0, "served_share": 0.8}],
    }  # fmt: skip
    for rec in [summary, served]:
        lib.utils.atomic_write_json(run_dir / "metrics" / f"{rec['notebook']}.json", rec)
    header, *groups = lib.runner.page.groups(lib.runner.records.load_run(run_dir), {})
    assert (
        groups[-1]["notebook"] == "11_serve"
        and groups[-1]["rows"][0]["name"] == "teacher · served, unbatched"
    )
    assert "served requests/s at the SLO" in header["headers"] and "80%" in groups[-1]["rows"][0]["cells"]


def test_the_report_takes_a_notebook_its_run_lacks_from_another_run_of_the_same_data(outputs, monkeypatch):
    monkeypatch.setattr(lib.runner.folders, "_inputs", {})  # what it reads from other runs stays in this test

    def run_with(*recs):
        run_dir = lib.runner.folders.start("smoke", by="test", notebooks=[r["notebook"] for r in recs])
        (run_dir / "metrics").mkdir()
        for rec in recs:
            lib.utils.atomic_write_json(
                run_dir / "metrics" / f"{rec['notebook']}.json", {**rec, "run": run_dir.name}
            )
        lib.runner.folders.finish(run_dir, "complete")
        return run_dir

    contract = {"seed": 42, "dataset": "rotten_tomatoes"}
    rec = lambda name, **params: {"notebook": name, "variants": [], "params": {**contract, **params}}  # noqa: E731
    side = run_with(rec("07_privacy"), rec("05_distributed", seed=1))  # 05 on another split
    main = run_with(rec("00_baseline"), rec("03_quantize"))
    run_dir, recs = lib.report.run_records("smoke", "", fill_before="10_report")
    assert run_dir == main
    assert [(r["notebook"], r["run"]) for r in recs] == [
        ("00_baseline", main.name),
        ("03_quantize", main.name),
        ("07_privacy", side.name),  # borrowed, in the catalog's order; 05 (another seed) is not
    ]
    assert [r["notebook"] for r in lib.report.run_records("smoke", main.name, "10_report")[1]] == [
        "00_baseline",
        "03_quantize",
    ]  # a named run: exactly its records


def test_the_readme_says_why_a_row_shows_a_dash():
    same = "a sweep point: not timed"
    recs = [
        RECORDS[0],
        {"notebook": "04_distill", "variants": [_v(f"T{t}", unmeasured=same) for t in (1, 2, 4)]},
        {"notebook": "05_distributed", "variants": [_v(n, unmeasured=same) for n in ("a", "b")]},
    ]
    lines = lib.runner.readme.missing_reasons(recs)
    assert lines == [
        "Where a row shows –, the notebook says why:",
        "",
        "- 00_baseline (tfidf-logreg): why tfidf-logreg lacks a figure",  # one line per notebook and reason
        f"- 04_distill (3 rows): {same}",
        f"- 05_distributed (a, b): {same}",
        "",
    ]
    assert lib.runner.readme.missing_reasons([{**RECORDS[0], "variants": RECORDS[0]["variants"][:1]}]) == []
