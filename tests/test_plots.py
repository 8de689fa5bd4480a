"""Every figure function draws from the tables the notebooks build and saves a real PNG atomically."""

from __future__ import annotations

import pandas as pd

import lib


def test_prune_and_training_figures(outputs):
    sweep = pd.DataFrame({"accuracy": [0.8, 0.6], "accuracy_recovered": [0.82, 0.7], "latency_ratio": [1.0, 0.98],
                          "dense_ratio": [1.0, 1.0], "compressed_ratio": [0.9, 0.6], "sparse_ratio": [0.8, 0.4]},
                         index=pd.Index([0.3, 0.9], name="sparsity"))
    table = pd.DataFrame({"importance": ["gradient"] * 2, "encoder_removed": [0.3, 0.5], "accuracy": [0.8, 0.7],
                          "accuracy_recovered": [0.82, 0.8], "speedup_vs_reference": [1.3, 1.8]})
    choice = pd.DataFrame({"importance": ["gradient", "gradient", "magnitude", "magnitude"],
                           "encoder_removed": [0.3, 0.5] * 2, "val_accuracy": [0.8, 0.75, 0.7, 0.6]})
    h = lib.train.History(epochs=[{"epoch": 1, "val_accuracy": 0.7}, {"epoch": 2, "val_accuracy": 0.8}],
                          step_losses=[0.7 - 0.01 * i for i in range(30)])
    paths = [lib.plots.sparsity_sweep(sweep, 0.83, "t")[1],
             lib.plots.structured_tradeoff(table, 0.83, "t", choice)[1],
             lib.plots.structured_tradeoff(table, 0.83, "t", name="no_choice")[1],
             lib.plots.runs_compare({"a": h, "b": h}, "t", "runs")[1],
             lib.plots.learning_curve(h, "t")[1],
             lib.plots.learning_curve(lib.train.History(epochs=[{"epoch": 1, "val_accuracy": 0.8,
                                                                 "val_accuracy_raw": 0.78}],
                                                        step_losses=h.step_losses), "t", "averaged")[1]]
    for p in paths:
        assert p.exists() and p.stat().st_size > 5000 and p.parent == outputs / "t" / "figures"
    assert not list((outputs / "t").rglob("*.tmp"))
