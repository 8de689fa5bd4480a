"""The trade-off view for ``08_report``: which variants are Pareto-optimal, and which one a user's weights pick.

A variant is **dominated** when another is at least as good on every objective and strictly better on one; the
others form the Pareto front (:func:`pareto_front`). Among them a user chooses by weights
(:func:`weighted_choice`): each objective is first rescaled to [0, 1] over the candidates (min–max, so that a
weight means the same whatever the units), turned so that 1 is the best value, and the value of a variant is
``Σ weight × normalised objective``. The design notes' ``value = speed − k·cost + λ₁·explainability + λ₂·privacy`` is
this with ``cost`` (size) to minimise: its weight ``k`` rewards small models once the direction is turned.
Missing values (a model without a privacy guarantee has no ε) score 0 on that objective: the worst.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

DIRECTIONS = ("max", "min")


def _check(frame: pd.DataFrame, directions: Mapping[str, str]) -> None:
    missing = [c for c in directions if c not in frame.columns]
    if missing:
        raise KeyError(f"objectives {missing} are not columns of the table ({', '.join(map(str, frame.columns))})")
    bad = {c: d for c, d in directions.items() if d not in DIRECTIONS}
    if bad:
        raise ValueError(f"each objective is maximised or minimised ({DIRECTIONS}), got {bad}")


def pareto_front(frame: pd.DataFrame, directions: Mapping[str, str]) -> pd.Series:
    """``True`` for the rows no other row dominates on the ``directions`` columns (``{"accuracy": "max",
    "size_mb": "min"}``). Rows with a missing objective are not compared and not on the front."""
    _check(frame, directions)
    complete = frame[list(directions)].notna().all(axis=1)
    signs = np.array([1.0 if d == "max" else -1.0 for d in directions.values()])
    values = frame.loc[complete, list(directions)].to_numpy(dtype=float) * signs  # larger is better everywhere
    front = np.ones(len(values), dtype=bool)
    for i, v in enumerate(values):
        others = np.delete(values, i, axis=0)
        front[i] = not np.any(np.all(others >= v, axis=1) & np.any(others > v, axis=1))
    out = pd.Series(False, index=frame.index)
    out[complete[complete].index] = front
    return out


def normalised(frame: pd.DataFrame, directions: Mapping[str, str]) -> pd.DataFrame:
    """Each objective rescaled to [0, 1] over the rows, 1 = best (a constant column is 1 everywhere; missing = 0)."""
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


def weighted_choice(frame: pd.DataFrame, directions: Mapping[str, str], weights: Mapping[str, float]) -> tuple[str, pd.Series]:
    """The row with the largest ``Σ weight × normalised objective`` and every row's value (sorted, best first).
    Weights must be >= 0, not all 0, and name only objectives in ``directions``."""
    unknown = [w for w in weights if w not in directions]
    if unknown:
        raise KeyError(f"weights for {unknown}, which are not objectives ({', '.join(directions)})")
    if any(w < 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
        raise ValueError(f"weights must be >= 0 and not all 0, got {dict(weights)}")
    scores = normalised(frame, directions)
    value = sum(scores[c] * w for c, w in weights.items()).sort_values(ascending=False, kind="stable")
    return str(value.index[0]), value
