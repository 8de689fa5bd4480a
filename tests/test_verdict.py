"""Verdicts that know their noise (lib.verdict): paired accuracy tests, paired means, speed-ratio intervals,
the words chosen from them, and the noise columns the comparisons carry."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

import lib
from lib import verdict


def predictions(n, only_a, only_b, both_right, seed=0):
    """Labels and two models' predictions with exactly these counts of who is right."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    a, b = y.copy(), y.copy()
    i = 0
    for count, wrong in ((only_a, b), (only_b, a)):
        wrong[i : i + count] = 1 - y[i : i + count]
        i += count
    a[i : n - both_right], b[i : n - both_right] = 1 - y[i : n - both_right], 1 - y[i : n - both_right]
    order = rng.permutation(n)
    return y[order], a[order], b[order]


def test_paired_accuracy_counts_the_discordant_texts_and_uses_mcnemar():
    y, a, b = predictions(1000, only_a=20, only_b=45, both_right=800)
    r = verdict.paired_accuracy(y, a, b)
    assert (r["only_a"], r["only_b"], r["n"]) == (20, 45, 1000)
    assert r["points"] == pytest.approx(100 * ((b == y).mean() - (a == y).mean()))
    assert r["p_value"] == pytest.approx(stats.binomtest(20, 65, 0.5).pvalue)
    assert r["low"] < r["points"] < r["high"] and r["low"] > 0  # 25 texts of 65 discordant: clearly better
    assert verdict.word(r["low"], r["high"]) == "better"


def test_the_same_difference_is_noise_when_the_models_disagree_more():
    few = verdict.paired_accuracy(*predictions(1000, only_a=0, only_b=10, both_right=800))
    many = verdict.paired_accuracy(*predictions(1000, only_a=100, only_b=110, both_right=700))
    assert few["points"] == pytest.approx(many["points"]) == pytest.approx(1.0)
    assert verdict.word(few["low"], few["high"]) == "better"
    assert verdict.word(many["low"], many["high"]) == "within noise"  # 10 of 210 discordant: chance


def test_identical_predictions_are_no_evidence_and_bad_inputs_are_refused():
    y, a, _ = predictions(50, 0, 0, 40)
    r = verdict.paired_accuracy(y, a, a)
    assert (r["points"], r["low"], r["high"], r["p_value"]) == (0, 0, 0, 1.0)
    assert verdict.word(r["low"], r["high"]) == "within noise"
    with pytest.raises(ValueError, match="same examples"):
        verdict.paired_accuracy(y, a, a[:-1])


def test_paired_mean_is_a_paired_t_interval():
    rng = np.random.default_rng(1)
    base = rng.normal(0, 1, 40)  # large differences between items, a small steady gain: pairing finds it
    r = verdict.paired_mean(base, base + 0.1 + rng.normal(0, 0.01, 40))
    assert r["low"] > 0 and verdict.word(r["low"], r["high"]) == "better"
    unpaired = stats.ttest_ind(base + 0.1, base)
    assert unpaired.pvalue > 0.05 > r["p_value"]  # the same numbers, unpaired, are noise
    same = verdict.paired_mean([1.0, 2.0], [1.0, 2.0])
    assert (same["low"], same["high"], same["p_value"]) == (0.0, 0.0, 1.0)


def test_speed_ratio_interval_covers_the_ratio_and_narrows_with_steadier_steps():
    rng = np.random.default_rng(2)
    steady = verdict.speed_ratio(rng.normal(1.0, 0.01, 30), rng.normal(0.5, 0.01, 30))
    noisy = verdict.speed_ratio(rng.normal(1.0, 0.3, 30).clip(0.1), rng.normal(0.95, 0.3, 30).clip(0.1))
    assert (
        steady["low"] <= steady["ratio"] <= steady["high"]
        and verdict.faster(steady["low"], steady["high"]) == "faster"
    )
    assert verdict.faster(noisy["low"], noisy["high"]) == "within noise"
    assert verdict.faster(0.5, 0.9) == "slower"
    with pytest.raises(ValueError, match="two or more"):
        verdict.speed_ratio([1.0], [1.0, 2.0])


def test_word_and_interval_text():
    assert [verdict.word(1, 2), verdict.word(-2, -1), verdict.word(-1, 1)] == [
        "better",
        "worse",
        "within noise",
    ]
    assert verdict.word(6, 8, "more", "less", at=5) == "more"
    assert verdict.interval(-0.25, 1.5) == "95% interval [-0.2, +1.5]"
    assert verdict.interval(0.9, 1.2, ".2f", "×") == "95% interval [0.90×, 1.20×]"


def test_compare_bounds_each_ratio_by_its_repeats():
    import time

    fast = lambda batch: [[0.0, 1.0]] * batch["input_ids"].shape[0]  # noqa: E731

    def slow(batch):
        time.sleep(0.003)
        return fast(batch)

    probe = lib.bench.Probe([{"input_ids": np.zeros((1, 4))}] * 4, [{"input_ids": np.zeros((4, 4))}] * 2, 4)
    df = lib.bench.compare({"fast": fast, "slow": slow}, probe, repeats=3)
    for col in ("speedup", "latency_ratio"):
        assert (df[f"{col}_low"] <= df[f"{col}_vs_reference"] + 1e-12).all()
        assert (df[f"{col}_vs_reference"] <= df[f"{col}_high"] + 1e-12).all()
    assert df.loc["fast", ["speedup_low", "speedup_high"]].tolist() == [1.0, 1.0]
    assert verdict.faster(df.loc["slow", "speedup_low"], df.loc["slow", "speedup_high"]) == "slower"


def test_a_comparison_carries_paired_intervals_and_compares_any_two():
    y, a, b = predictions(400, only_a=5, only_b=40, both_right=300)
    loader = [{"labels": __import__("torch").tensor(y), "x": np.arange(len(y))}]
    board = lib.experiment.Comparison(reference="a")
    board.add("a", lambda batch: np.eye(2)[a[batch["x"]]], size={"size_mb": 1.0})
    board.add("b", lambda batch: np.eye(2)[b[batch["x"]]], size={"size_mb": 1.0})
    table = board.evaluate(loader, progress=False)
    paired = board.paired("a", "b")
    assert table.loc["b", "points_low"] == pytest.approx(paired["low"]) and paired["low"] > 0
    assert table.loc["b", "points_vs_reference"] == pytest.approx(paired["points"])
    with pytest.raises(KeyError, match="evaluate"):
        board.paired("a", "b", prefix="val_")


def test_the_report_goal_needs_every_interval_above_its_bar():
    assert lib.report.meets_goal((4.2, 4.8, 4.0), (-1.0, 0.5, -3.0)) == "meets"
    assert lib.report.meets_goal((3.8, 4.8, 4.0), (-1.0, 0.5, -3.0)) == "within noise"
    assert lib.report.meets_goal((4.2, 4.8, 4.0), (-4.0, -3.1, -3.0)) == "misses"


def test_two_ranges_are_apart_only_when_they_do_not_overlap():
    assert verdict.ranges((4.0, 4.5), (8.2, 8.6)) == "faster"
    assert verdict.ranges((8.2, 8.6), (4.0, 4.5)) == "slower"
    assert verdict.ranges((4.0, 8.5), (8.2, 8.6)) == "within noise"  # one repeat each way: chance
    assert verdict.ranges((1.0, 2.0), (2.0, 3.0), "up", "down") == "within noise"  # touching is not apart
