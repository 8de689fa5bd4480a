"""lib.report: the Pareto front and the weighted choice of 08_report, on tables whose answer is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import lib

TABLE = pd.DataFrame({"accuracy": [0.83, 0.83, 0.80, 0.79, 0.70],
                      "throughput": [150.0, 370.0, 480.0, 470.0, 1000.0],
                      "size_mb": [90.0, 65.0, 23.0, 23.0, None]},
                     index=["teacher", "student", "int8", "int8-worse", "unknown-size"])
OBJECTIVES = {"accuracy": "max", "throughput": "max", "size_mb": "min"}


def test_pareto_front_drops_the_dominated_and_the_incomplete():
    front = lib.report.pareto_front(TABLE, OBJECTIVES)
    # teacher: the student is as accurate, faster and smaller; int8-worse: int8 beats it on all three
    assert front.to_dict() == {"teacher": False, "student": True, "int8": True, "int8-worse": False,
                               "unknown-size": False}
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
    balanced, values = lib.report.weighted_choice(TABLE, OBJECTIVES, {"accuracy": 1.0, "throughput": 0.5, "size_mb": 0.5})
    assert accurate == "teacher" and fast == "unknown-size"  # teacher and student tie on accuracy: the table's order
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
