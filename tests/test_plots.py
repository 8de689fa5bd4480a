"""Every figure function draws from the tables the notebooks build and saves a real PNG atomically."""

from __future__ import annotations

import pandas as pd
import pytest

import lib


def prune_board() -> lib.experiment.Comparison:
    """A comparison shaped as 02_prune fills it (numbers only: the figures read the table)."""
    board = lib.experiment.Comparison("teacher")
    board.add(
        "teacher",
        method="none",
        sparsity=0.0,
        accuracy=0.83,
        dense_mb=90.0,
        compressed_mb=83.0,
        sparse_mb=95.0,
    )
    for s, acc in ((0.3, 0.82), (0.9, 0.7)):
        board.add(
            f"unstructured-{s:.0%}",
            method="unstructured",
            sparsity=s,
            accuracy=acc,
            accuracy_before_recovery=acc - 0.1,
            latency_ratio_vs_reference=1.0,
            dense_mb=90.0,
            compressed_mb=80 * (1 - s / 2),
            sparse_mb=95 * (1 - s),
        )
    for f, acc in ((0.3, 0.82), (0.5, 0.8)):
        board.add(
            f"structured-{f:.0%}",
            method="structured",
            importance="gradient",
            encoder_removed=f,
            accuracy=acc,
            accuracy_before_recovery=acc - 0.05,
            speedup_vs_reference=1 + f,
        )
    return board


def test_prune_and_training_figures(outputs):
    table = prune_board().table()
    choice = pd.DataFrame(
        {
            "importance": ["gradient", "gradient", "magnitude", "magnitude"],
            "encoder_removed": [0.3, 0.5] * 2,
            "val_accuracy": [0.8, 0.75, 0.7, 0.6],
        }
    )
    h = lib.train.History(
        epochs=[{"epoch": 1, "val_accuracy": 0.7}, {"epoch": 2, "val_accuracy": 0.8}],
        step_losses=[0.7 - 0.01 * i for i in range(30)],
    )
    paths = [
        lib.plots.sparsity_sweep(table, "t")[1],
        lib.plots.structured_tradeoff(table, "t", choice)[1],
        lib.plots.structured_tradeoff(table, "t", name="no_choice")[1],
        lib.plots.runs_compare({"a": h, "b": h}, "t", "runs")[1],
        lib.plots.learning_curve(h, "t")[1],
        lib.plots.learning_curve(
            lib.train.History(
                epochs=[{"epoch": 1, "val_accuracy": 0.8, "val_accuracy_raw": 0.78}],
                step_losses=h.step_losses,
            ),
            "t",
            "averaged",
        )[1],
    ]
    for p in paths:
        assert (
            p.exists() and p.stat().st_size > 5000 and p.parent == lib.runner.folders.current("t") / "figures"
        )
    assert not list((outputs / "t").rglob("*.tmp"))


def test_comparison_table_ratios_and_records():
    t = prune_board().table()
    assert t.loc["unstructured-90%", "points_vs_reference"] == pytest.approx(100 * (0.7 - 0.83))
    assert t.loc["structured-50%", "retention"] == pytest.approx(0.8 / 0.83)
    records = prune_board().records()
    assert [r["role"] for r in records].count("reference") == 1
    rec = next(r for r in records if r["name"] == "structured-50%")
    assert (
        rec["accuracy"] == 0.8 and rec["encoder_removed"] == 0.5 and "dense_mb" not in rec
    )  # no NaN columns
    with pytest.raises(ValueError, match="already"):
        prune_board().add("teacher")
