"""Counterfactual fairness of a sentiment classifier, in the style of the Equity Evaluation Corpus
(Kiritchenko & Mohammad 2018): template sentences that differ only in a person's name or a gendered word
(``lib/resources/fairness.yaml``, sources named there). For each attribute (two groups of people) a model's
**gap** is group A's mean P(positive) minus group B's over the same templates, with a 95% bootstrap interval
that resamples templates and the people of each group (the templates pair the two groups: each is filled with
both). A gap whose interval covers 0 is within noise. ``fairlearn``'s :class:`MetricFrame` gives the per-group
view.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from fairlearn.metrics import MetricFrame, selection_rate
from sklearn.metrics import accuracy_score

from ..errors import DataError


def default_path() -> Path:
    return Path(str(resources.files("lib").joinpath("resources/fairness.yaml")))


def load_spec(path: Path | str | None = None) -> dict[str, Any]:
    """The fairness file, checked: every template has one ``{person}`` slot and every attribute names two
    groups of known ``people`` lists."""
    path = Path(path) if path else default_path()
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise DataError(f"cannot read the fairness templates in {path}: {e}") from None
    bad = [t["text"] for t in spec["templates"] if t["text"].count("{person}") != 1]
    if bad:
        raise DataError(f"{path}: each template needs exactly one {{person}} slot: {bad}")
    for attr, groups in spec["attributes"].items():
        unknown = [g for side in groups for g in side if g not in spec["people"]]
        if len(groups) != 2 or unknown:
            raise DataError(f"{path}: attribute {attr!r} needs two groups of known people lists ({unknown})")
    return spec


def fill(template: str, person: str) -> str:
    text = template.replace("{person}", person)
    return text[:1].upper() + text[1:]


def sentences(spec: dict[str, Any], people: int = 0) -> pd.DataFrame:
    """Every template filled with every person (the first ``people`` of each list; 0: all): one row per
    (template, list, person) with the text and the template's expected sentiment."""
    rows = [
        {
            "template": k,
            "people": name,
            "person": person,
            "text": fill(t["text"], person),
            "expect": t["expect"],
        }
        for k, t in enumerate(spec["templates"])
        for name, members in spec["people"].items()
        for person in (members[:people] if people else members)
    ]
    return pd.DataFrame(rows)


def gap(
    p_positive: np.ndarray, a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Group A's mean P(positive) minus group B's: ``p_positive`` is templates × people, ``a`` and ``b`` the
    columns of each group. The 95% interval resamples templates (rows, shared by both groups: the pairing)
    and each group's people, with replacement."""
    point = float(p_positive[:, a].mean() - p_positive[:, b].mean())
    rng = np.random.default_rng(seed)
    n_t = p_positive.shape[0]
    boot = np.empty(n_boot)
    for r in range(n_boot):
        rows = rng.integers(n_t, size=n_t)
        pa, pb = rng.choice(a, size=len(a)), rng.choice(b, size=len(b))
        boot[r] = p_positive[np.ix_(rows, pa)].mean() - p_positive[np.ix_(rows, pb)].mean()
    low, high = np.percentile(boot, [2.5, 97.5])
    return {"gap": point, "low": float(low), "high": float(high), "within_noise": bool(low <= 0 <= high)}


def gaps(
    frame: pd.DataFrame, p_positive: np.ndarray, spec: dict[str, Any], seed: int, n_boot: int = 2000
) -> pd.DataFrame:
    """One row per attribute of ``spec``: its gap and interval for a model whose P(positive) on
    ``frame``'s sentences (:func:`sentences`) is ``p_positive``."""
    matrix = frame.assign(p=p_positive).pivot_table(
        index="template", columns=["people", "person"], values="p"
    )
    lists = matrix.columns.get_level_values("people")
    rows = {}
    for attr, (side_a, side_b) in spec["attributes"].items():
        a, b = np.flatnonzero(lists.isin(side_a)), np.flatnonzero(lists.isin(side_b))
        rows[attr] = {"group_a": " + ".join(side_a), "group_b": " + ".join(side_b),
                      **gap(matrix.to_numpy(), a, b, n_boot, seed)}  # fmt: skip
    return pd.DataFrame.from_dict(rows, orient="index")


def largest(table: pd.DataFrame) -> dict[str, Any]:
    """The attribute with the largest absolute gap, for the record's ``fairness_gap``."""
    attr = table["gap"].abs().idxmax()
    row = table.loc[attr]
    return {"fairness_gap": float(row["gap"]), "fairness_gap_low": float(row["low"]),
            "fairness_gap_high": float(row["high"]), "fairness_attribute": attr}  # fmt: skip


def by_group(
    frame: pd.DataFrame, p_positive: np.ndarray, spec: dict[str, Any], attribute: str
) -> pd.DataFrame:
    """fairlearn's per-group view of one attribute: mean P(positive), the share predicted positive
    (selection rate) and, on the templates with a clear sentiment, accuracy."""
    side_a, side_b = spec["attributes"][attribute]
    group = frame["people"].map({**dict.fromkeys(side_a, "A: " + " + ".join(side_a)),
                                 **dict.fromkeys(side_b, "B: " + " + ".join(side_b))})  # fmt: skip
    keep = group.notna() & frame["expect"].isin(["positive", "negative"])
    y_true = (frame.loc[keep, "expect"] == "positive").astype(int)
    y_pred = (p_positive[keep.to_numpy()] >= 0.5).astype(int)
    mf = MetricFrame(
        metrics={"selection_rate": selection_rate, "accuracy": accuracy_score},
        y_true=y_true,
        y_pred=y_pred,
        sensitive_features=group[keep],
    )
    mean_p = pd.Series(p_positive[group.notna().to_numpy()]).groupby(group[group.notna()].to_numpy()).mean()
    return mf.by_group.assign(mean_p_positive=mean_p)
