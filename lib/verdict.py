"""Verdicts that know their noise: is a difference larger than what chance and timing jitter produce?

Every comparative sentence of a Summary is chosen here, from an interval, never from the sign alone:

- two accuracies on the **same texts**: :func:`paired_accuracy` — only the texts where the two models disagree
  carry information (McNemar's test); the 95% interval of the difference uses that pairing, so it is much
  narrower than two separate accuracies' error bars;
- two per-text scores of the same texts (an explanation's faithfulness): :func:`paired_mean` (paired t);
- two speeds timed interleaved, repeat by repeat (:func:`lib.bench.compare`): the ratio of each repeat; its
  lowest and highest over the repeats bound the median ratio (with 5 repeats, a 94% interval, no assumptions);
- two speeds from separate runs of timed steps: :func:`speed_ratio` (a bootstrap of the ratio of median step
  times).

:func:`word` turns an interval into "better" / "worse" / "within noise" (or the words you pass).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

LEVEL = 0.95  # confidence of every interval here


def paired_accuracy(labels: Sequence[int], pred_a: Sequence[int], pred_b: Sequence[int]) -> dict[str, Any]:
    """Accuracy of B minus accuracy of A on the same examples, in points, with its paired interval.

    ``only_a``/``only_b``: examples only A / only B gets right (the discordant pairs). ``p_value``: McNemar's
    exact test (a binomial test on the discordant pairs). ``low``/``high``: the 95% interval of the difference
    from the paired standard error ``sqrt(only_a + only_b - (only_b - only_a)^2 / n) / n`` (Agresti,
    *Categorical Data Analysis*, 10.1). Identical predictions give ``[0, 0]``: no evidence either way.
    """
    y, a, b = (np.asarray(v).ravel() for v in (labels, pred_a, pred_b))
    if not len(y) == len(a) == len(b) or not len(y):
        raise ValueError(
            f"paired accuracy needs predictions of the same examples: {len(y)}, {len(a)}, {len(b)}"
        )
    right_a, right_b = a == y, b == y
    only_a, only_b, n = int(np.sum(right_a & ~right_b)), int(np.sum(right_b & ~right_a)), len(y)
    diff = (only_b - only_a) / n
    se = np.sqrt(max(only_a + only_b - (only_b - only_a) ** 2 / n, 0.0)) / n
    z = stats.norm.ppf(0.5 + LEVEL / 2)
    discordant = only_a + only_b
    p = stats.binomtest(min(only_a, only_b), discordant, 0.5).pvalue if discordant else 1.0
    return {
        "points": 100 * diff,
        "low": float(100 * (diff - z * se)),
        "high": float(100 * (diff + z * se)),
        "p_value": float(p),
        "n": n,
        "only_a": only_a,
        "only_b": only_b,
    }


def paired_mean(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Mean of ``b - a`` over the same items (texts), with the paired t interval and p-value."""
    a_, b_ = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a_) != len(b_) or len(a_) < 2:
        raise ValueError(f"a paired mean needs two or more pairs of the same items: {len(a_)} vs {len(b_)}")
    diff = float(np.mean(b_ - a_))
    if np.allclose(b_ - a_, diff):  # no spread at all: the interval is the value
        return {"diff": diff, "low": diff, "high": diff, "p_value": 1.0 if diff == 0 else 0.0, "n": len(a_)}
    test = stats.ttest_rel(b_, a_)
    ci = test.confidence_interval(LEVEL)
    return {
        "diff": diff,
        "low": float(ci.low),
        "high": float(ci.high),
        "p_value": float(test.pvalue),
        "n": len(a_),
    }


def speed_ratio(
    reference_seconds: Sequence[float], seconds: Sequence[float], seed: int = 0
) -> dict[str, float]:
    """How many times faster the second run's steps are: median(reference) / median(seconds), with a 95%
    bootstrap interval (resampling each run's step times; :func:`scipy.stats.bootstrap`)."""
    ref, new = np.asarray(reference_seconds, dtype=float), np.asarray(seconds, dtype=float)
    if len(ref) < 2 or len(new) < 2:
        raise ValueError(f"a speed ratio needs two or more timed steps per run: {len(ref)} and {len(new)}")
    ratio = float(np.median(ref) / np.median(new))
    boot = stats.bootstrap(
        (ref, new),
        lambda r, s, axis=-1: np.median(r, axis=axis) / np.median(s, axis=axis),
        confidence_level=LEVEL,
        n_resamples=2000,
        method="percentile",
        vectorized=True,
        random_state=np.random.default_rng(seed),
    )
    return {
        "ratio": ratio,
        "low": float(boot.confidence_interval.low),
        "high": float(boot.confidence_interval.high),
    }


def word(low: float, high: float, up: str = "better", down: str = "worse", at: float = 0.0) -> str:
    """``up`` if the whole interval lies above ``at``, ``down`` if below, else ``"within noise"``."""
    return up if low > at else down if high < at else "within noise"


def faster(low: float, high: float) -> str:
    """The word for a speed ratio's interval: ``"faster"``, ``"slower"`` or ``"within noise"`` (around 1×)."""
    return word(low, high, "faster", "slower", at=1.0)


def ranges(a: tuple[float, float], b: tuple[float, float], up: str = "faster", down: str = "slower") -> str:
    """B against A when each has only its own range (two speed-ups over one reference, each with its repeats'
    lowest and highest ratio): ``up`` if B's whole range lies above A's, ``down`` if below, else
    ``"within noise"`` (the ranges overlap)."""
    return up if b[0] > a[1] else down if b[1] < a[0] else "within noise"


def interval(low: float, high: float, fmt: str = "+.1f", unit: str = "") -> str:
    """``"95% interval [low, high]"`` for a sentence."""
    return f"{LEVEL:.0%} interval [{low:{fmt}}{unit}, {high:{fmt}}{unit}]"
