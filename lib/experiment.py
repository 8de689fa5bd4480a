"""Side-by-side comparisons: the bookkeeping every notebook shares, written once.

A technique module builds variants of a model; a notebook hands them to a :class:`Comparison`, which scores
them on the same data, times them side by side and turns them into a table and the ``variants`` of the metrics
record::

    board = lib.experiment.Comparison(reference="teacher")
    board.add("teacher", teacher)
    for f in fractions:                                  # tags (here: fraction) become columns
        board.add(f"pruned-{f:.0%}", prune(teacher, f), fraction=f)
    board.evaluate(loaders.test)                         # accuracy, F1, agreement with the reference
    board.benchmark(probe, repeats=5)                    # latency, throughput: interleaved, same probe
    board.table()                                        # one row per variant, ratios to the reference
    lib.runner.records.record(..., board.records(), ...)

Rows without a model (numbers read from another notebook's record, a TF-IDF reference) are added with
``add(name, accuracy=..., ...)``. Derived columns are computed against the reference: ``points_vs_reference``
(accuracy points), ``retention`` (accuracy ratio) and ``smaller_x`` (size ratio). The noise comes with them:
``points_low``/``points_high`` (a paired 95% interval: both models scored the same texts) and, after
``benchmark``, ``speedup_low``/``speedup_high`` (see :mod:`lib.verdict`); :meth:`Comparison.paired` compares
any two variants' accuracy the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pandas as pd
import torch

from .bench import Probe, compare, size_info
from .evaluate import agreement, classification_metrics, predict_logits
from .runner.records import plain
from .utils import progress as progress_bar
from .verdict import paired_accuracy

ROLES = ("reference", "variant")


class Comparison:
    """Variants of one model measured against a ``reference`` on the same data, in the same process."""

    def __init__(self, reference: str):
        self.reference = reference
        self.models: dict[str, Any] = {}
        self.rows: dict[str, dict[str, Any]] = {}
        self.bench_info: dict[str, Any] = {}
        self.predicted: dict[
            str, dict[str, Any]
        ] = {}  # split prefix -> labels and each variant's predictions

    def add(self, name: str, model: Any = None, *, size: Mapping[str, Any] | None = None, **info: Any) -> Any:
        """Register variant ``name``: a torch model or a ``batch -> logits`` predictor (or nothing, for a row
        of numbers only), its size (measured for torch models; pass ``size_mb``/``num_params`` otherwise) and
        any tags or numbers as columns. Returns ``model``."""
        if name in self.rows:
            raise ValueError(f"variant {name!r} is already in the comparison")
        if model is not None:
            self.models[name] = model
        if size is None and isinstance(model, torch.nn.Module):
            size = size_info(model)
        self.rows[name] = {
            "role": "reference" if name == self.reference else "variant",
            **(size or {}),
            **info,
        }
        return model

    def update(self, name: str, **info: Any) -> None:
        """Add or change columns of one variant."""
        self.rows[name].update(info)

    def sweep(
        self,
        points: Iterable[Any],
        build: Callable[[Any], Any],
        name: Callable[[Any], str],
        desc: str = "sweep",
        **tags: Any,
    ) -> dict[Any, Any]:
        """For each point: ``build(point)`` gives a model, or ``(model, info)``; it is added as
        ``name(point)`` with ``info`` and ``tags`` as columns. Returns the models by point."""
        out = {}
        for point in progress_bar(list(points), desc=desc, unit="variant"):
            built = build(point)
            model, info = built if isinstance(built, tuple) else (built, {})
            out[point] = self.add(name(point), model, **info, **tags)
        return out

    def evaluate(
        self,
        loader: Iterable[dict],
        names: Sequence[str] | None = None,
        prefix: str = "",
        progress: bool = True,
    ) -> pd.DataFrame:
        """Score every variant with a model on ``loader``: ``accuracy`` and ``f1`` and, against the
        reference's logits, ``agreement`` (share of the same labels) and ``max_abs_logit_diff``. ``prefix``
        names the split's columns (``"val_"``); the test split has none."""
        names = list(names or self.models)
        if self.reference in self.models and self.reference not in names:
            names.insert(0, self.reference)
        logits, labels = {}, None
        for name in progress_bar(
            names, desc=f"evaluate {prefix or 'test '}".strip(), unit="model", disable=not progress
        ):
            logits[name], labels = predict_logits(self.models[name], loader)
        ref = logits.get(self.reference)
        seen = self.predicted.setdefault(prefix, {"labels": labels})
        for name, lg in logits.items():
            seen[name] = lg.argmax(-1)
            m = classification_metrics(labels, seen[name], lg.shape[-1])
            row = {f"{prefix}accuracy": m["accuracy"], f"{prefix}f1": m["f1"]}
            if ref is not None:
                row.update({f"{prefix}{k}": v for k, v in agreement(ref, lg).items()})
                if name != self.reference:  # the noise of points_vs_reference: a paired test, same texts
                    paired = paired_accuracy(labels, seen[self.reference], seen[name])
                    row.update({f"{prefix}points_low": paired["low"], f"{prefix}points_high": paired["high"]})
            self.rows[name].update(row)
        return self.table()

    def paired(self, a: str, b: str, prefix: str = "") -> dict[str, Any]:
        """Accuracy of ``b`` minus ``a`` on the same texts with its paired interval
        (:func:`lib.verdict.paired_accuracy`); both must have been scored by :meth:`evaluate` on that
        split."""
        seen = self.predicted.get(prefix, {})
        missing = [n for n in (a, b) if n not in seen]
        if missing:
            raise KeyError(f"not evaluated on the {prefix or 'test'} split: {missing}; call evaluate() first")
        return paired_accuracy(seen["labels"], seen[a], seen[b])

    def benchmark(self, probe: Probe, names: Sequence[str] | None = None, repeats: int = 5) -> pd.DataFrame:
        """Time the variants (all with a model, or ``names``) and the reference side by side on ``probe``
        (:func:`lib.bench.compare`: interleaved, warm-up, median of ``repeats``); adds latency, throughput and
        the ratios to the reference as columns and returns the timing table."""
        names = [n for n in (names or self.models) if n != self.reference]
        timed = compare(
            {n: self.models[n] for n in [self.reference, *names]},
            probe,
            repeats=repeats,
            reference=self.reference,
        )
        for name, row in timed.iterrows():
            self.rows[name].update(row.to_dict())
        self.bench_info = dict(timed.attrs)
        return timed

    def table(self, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """One row per variant, in the order added, with the ratios to the reference."""
        t = pd.DataFrame.from_dict(self.rows, orient="index")
        t.index.name = "name"
        ref = self.rows.get(self.reference, {})
        if "accuracy" in t and ref.get("accuracy") is not None:
            t["points_vs_reference"] = 100 * (t["accuracy"].astype(float) - ref["accuracy"])
            t["retention"] = t["accuracy"].astype(float) / ref["accuracy"]
        if "size_mb" in t and ref.get("size_mb"):
            t["smaller_x"] = ref["size_mb"] / t["size_mb"].astype(float)
        return t[[c for c in columns if c in t]] if columns else t

    def records(self) -> list[dict[str, Any]]:
        """The ``variants`` of the metrics record (:func:`variant`): every column of every row."""
        out = []
        for name, row in self.table().iterrows():
            r = {k: v for k, v in row.to_dict().items() if not _missing(v)}
            out.append(
                variant(name, r.pop("role"), r, r, r, **{k: v for k, v in r.items() if k not in _STANDARD})
            )
        return out


_STANDARD = (
    "accuracy",
    "f1",
    "size_mb",
    "num_params",
    "latency_ms_b1_p50",
    "latency_ms_b1_p90",
    "throughput_b32",
    "speedup_vs_reference",
)


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and v != v)


def pair_effects(
    table: pd.DataFrame,
    pairs: Sequence[tuple[str, str, str]],
    columns: Sequence[str] = ("accuracy", "agreement", "size_mb", "throughput_b32"),
) -> pd.DataFrame:
    """What one switch changed: for each ``(knob, a, b)`` with both rows in ``table``, the change from ``a``
    to ``b`` — differences in points for shares (accuracy, agreement), ratios for the rest (size, speed)."""
    rows = []
    for knob, a, b in pairs:
        if a not in table.index or b not in table.index:
            continue
        row: dict[str, Any] = {"change": f"{a} → {b}", "knob": knob}
        for c in columns:
            if c in ("accuracy", "agreement", "f1"):
                row[f"{c}_points"] = 100 * (table.loc[b, c] - table.loc[a, c])
            else:
                row[f"{c}_ratio"] = table.loc[b, c] / table.loc[a, c]
        rows.append(row)
    return pd.DataFrame(rows).set_index("change") if rows else pd.DataFrame()


def variant(
    name: str, role: str, metrics: Mapping[str, Any], bench: Any = None, size: Any = None, **extra: Any
) -> dict:
    """One ``variants`` entry from a metrics dict, a row of ``lib.bench.compare`` and ``size_info``."""
    bench, size = ({} if x is None else x for x in (bench, size))
    timed = ("latency_ms_b1_p50", "latency_ms_b1_p90", "throughput_b32", "speedup_vs_reference")
    return plain({
        "name": name, "role": role, "accuracy": metrics.get("accuracy"), "f1": metrics.get("f1"),
        "size_mb": size.get("size_mb"), "num_params": size.get("num_params"),
        **{t: bench.get(t) for t in timed},
        "throughput_b32_spread": bench.get("throughput_spread"),  # (max - min) / median of the repeats
        "load_average": bench.get("load_average"),  # 1-minute load average while it was measured
        **extra,
    })  # fmt: skip
