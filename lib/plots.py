"""Figures. Each function draws one readable figure, saves it (atomically) as PNG under
the run folder's ``figures/`` and returns ``(fig, path)``; a notebook just shows it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt  # headless: matplotlib falls back to Agg; in Jupyter: inline
import numpy as np
import pandas as pd

from .runner import folders
from .utils import atomic_path

plt.rcParams.update(
    {
        "figure.dpi": 110,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "font.size": 10,
    }
)


def save(fig: Any, profile: str, name: str) -> Path:
    """Save ``fig`` as ``figures/<name>.png`` via a temp file + rename."""
    out = folders.figures_dir(profile) / f"{name}.png"
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return out


def data_overview(
    summary: Any,
    lengths: Mapping[str, Sequence[int]],
    max_length: int,
    profile: str,
    name: str = "data_overview",
):
    """Left: class counts per split. Right: token-length distribution per split, with the truncation cut."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.6))
    classes = [c for c in summary.columns if c not in ("rows", "groups") and not str(c).endswith("%")]
    x = np.arange(len(summary.index))
    width = 0.8 / max(len(classes), 1)
    for i, c in enumerate(classes):
        a.bar(x + i * width - 0.4 + width / 2, summary[c], width, label=str(c))
    a.set_xticks(x, summary.index)
    a.set_ylabel("examples")
    a.set_title("Class balance per split")
    a.legend()
    bins = np.arange(0, max(max(v) for v in lengths.values()) + 2, 2)
    for split, lens in lengths.items():
        b.hist(lens, bins=bins, alpha=0.5, density=True, label=split)
    b.axvline(max_length, color="k", ls="--", lw=1, label=f"max_length={max_length}")
    b.set_xlabel("tokens per example (incl. [CLS]/[SEP])")
    b.set_ylabel("density")
    b.set_title("Length distribution")
    b.legend()
    fig.tight_layout()
    return fig, save(fig, profile, name)


def learning_curve(history: Any, profile: str, name: str = "learning_curve"):
    """Training loss per step (and its running mean) with validation accuracy per epoch."""
    fig, a = plt.subplots(figsize=(8, 3.6))
    losses = np.asarray(history.step_losses)
    a.plot(np.arange(1, len(losses) + 1), losses, alpha=0.3, color="C0", label="train loss (step)")
    k = max(1, len(losses) // 30)
    if len(losses) >= k:
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        a.plot(np.arange(k, len(losses) + 1), smooth, color="C0", label=f"train loss (mean of {k})")
    a.set_xlabel("step")
    a.set_ylabel("loss")
    frame = history.frame()
    if "val_accuracy" in frame:
        b = a.twinx()
        steps_per_epoch = len(losses) / max(len(frame), 1)
        xs = [e * steps_per_epoch for e in frame.index]
        averaged = "val_accuracy_raw" in frame  # fit kept a moving average of the weights
        b.plot(
            xs,
            frame["val_accuracy"],
            "o-",
            color="C1",
            label="val accuracy, averaged weights" if averaged else "val accuracy (epoch)",
        )
        if averaged:
            b.plot(
                xs, frame["val_accuracy_raw"], "s--", color="C2", alpha=0.8, label="val accuracy, raw weights"
            )
        b.set_ylabel("validation accuracy")
        b.grid(False)
        b.legend(loc="center right")
    a.legend(loc="upper right")
    a.set_title("Learning curve")
    fig.tight_layout()
    return fig, save(fig, profile, name)


def confusion(
    cm: Sequence[Sequence[int]],
    label_names: Sequence[str],
    profile: str,
    name: str = "confusion",
    title: str = "Confusion matrix (test)",
):
    cm = np.asarray(cm)
    fig, a = plt.subplots(figsize=(4.2, 3.6))
    im = a.imshow(cm, cmap="Blues")
    a.set_xticks(range(len(label_names)), label_names)
    a.set_yticks(range(len(label_names)), label_names)
    a.set_xlabel("predicted")
    a.set_ylabel("true")
    a.grid(False)
    for (i, j), v in np.ndenumerate(cm):
        a.text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
    fig.colorbar(im, ax=a, fraction=0.046)
    a.set_title(title)
    fig.tight_layout()
    return fig, save(fig, profile, name)


def loop_comparison(df: Any, profile: str, name: str = "lib_vs_trainer"):
    """Per-step training loss of each loop (left) and samples/s (right)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [2, 1]})
    for loop, row in df.iterrows():
        a.plot(np.arange(1, len(row["losses"]) + 1), row["losses"], label=loop)
    a.set_xlabel("step")
    a.set_ylabel("training loss")
    a.set_title("Same model, data, batch size and seed")
    a.legend()
    b.barh(list(df.index), df["samples_per_s"], color=["C0", "C1"][: len(df)])
    b.set_xlabel("samples / s")
    b.set_title("Training throughput")
    fig.tight_layout()
    return fig, save(fig, profile, name)


def bench_bars(df: Any, profile: str, name: str = "benchmark"):
    """Batch-1 latency (p50 with p90 whisker) and batch-32 throughput per model."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 0.6 * len(df) + 2.2))
    names = list(df.index)
    a.barh(
        names,
        df["latency_ms_b1_p50"],
        xerr=[np.zeros(len(df)), df["latency_ms_b1_p90"] - df["latency_ms_b1_p50"]],
        color="C2",
        capsize=3,
    )
    a.set_xlabel("ms per example (batch 1, p50; whisker to p90)")
    a.set_title("Latency")
    b.barh(names, df["throughput_b32"], color="C3")
    b.set_xlabel("samples / s (batch 32)")
    b.set_title("Throughput")
    fig.tight_layout()
    return fig, save(fig, profile, name)


def quantization_tradeoff(table: Any, profile: str, name: str = "quantization"):
    """Left: test accuracy vs measured batch-32 throughput ratio, one point per variant (marker area ~ file
    size). Right: serialized size per variant, fp32 reference dashed."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1.3, 1]})
    colors = {"fp32": "C0", "int8": "C1", "bf16": "C2"}
    ref = table.iloc[0]
    for i, (label, row) in enumerate(table.iterrows()):
        marker = "o" if row["backend"] == "torch" else "s"
        a.scatter(
            row["speedup_vs_reference"],
            100 * row["accuracy"],
            s=20 + 4 * row["size_mb"],
            marker=marker,
            color=colors.get(row["dtype"], "C4"),
            alpha=0.75,
            edgecolor="k",
        )
        a.annotate(
            label,
            (row["speedup_vs_reference"], 100 * row["accuracy"]),
            fontsize=8,
            xytext=(6, 4 - 9 * (i % 2)),
            textcoords="offset points",
        )
    a.axhline(100 * ref["accuracy"] - 1, color="C3", ls=":", lw=1, label="fp32 - 1 point")
    a.axvline(1.0, color="k", lw=0.8)
    a.margins(x=0.18, y=0.08)  # room for the labels
    a.set_xlabel("throughput / fp32 torch (batch 32, measured side by side)")
    a.set_ylabel("test accuracy (%)")
    a.set_title("Accuracy vs speed (circle: torch, square: ONNX Runtime; area ~ MB)")
    a.legend(fontsize=8, loc="lower left")
    y = np.arange(len(table))
    b.barh(y, table["size_mb"], color=[colors.get(d, "C4") for d in table["dtype"]])
    b.axvline(ref["size_mb"], color="k", ls="--", lw=0.8)
    b.set_yticks(y, table.index, fontsize=8)
    b.invert_yaxis()
    for yi, mb in zip(y, table["size_mb"]):
        b.text(mb, yi, f" {mb:.0f} MB ({ref['size_mb'] / mb:.1f}x)", va="center", fontsize=8)
    b.set_xlim(0, ref["size_mb"] * 1.45)
    b.set_xlabel("serialized size (MB)")
    b.set_title("Size on disk (blue fp32, orange int8, green bf16)")
    fig.tight_layout()
    return fig, save(fig, profile, name)


def distill_tradeoff(table: Any, profile: str, name: str = "distill"):
    """Left: test accuracy vs measured batch-32 throughput ratio (teacher and students). Right: retention
    (student accuracy / teacher accuracy), with DistilBERT's 97% marked."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11.5, 4), gridspec_kw={"width_ratios": [1.2, 1]})
    for i, (label, row) in enumerate(table.iterrows()):
        a.scatter(
            row["speedup_vs_reference"], 100 * row["accuracy"], s=70, color=f"C{i}", edgecolor="k", zorder=3
        )
        a.annotate(
            label,
            (row["speedup_vs_reference"], 100 * row["accuracy"]),
            fontsize=8,
            xytext=(6, 8 if i % 2 else -12),
            textcoords="offset points",
        )  # neighbours: one above, one below
    a.margins(x=0.2, y=0.15)
    a.set_xlabel("throughput / teacher (batch 32, measured side by side)")
    a.set_ylabel("test accuracy (%)")
    a.set_title("Accuracy vs speed")
    y = np.arange(len(table))
    b.barh(y, 100 * table["retention"], color=[f"C{i}" for i in range(len(table))])
    b.axvline(97, color="C3", ls=":", label="DistilBERT: 97%")
    b.set_yticks(y, table.index, fontsize=9)
    b.invert_yaxis()
    lo = max(0.0, 100 * float(table["retention"].min()) - 5)
    b.set_xlim(lo, 101)
    for yi, r in zip(y, table["retention"]):
        b.text(100 * r, yi, f" {r:.1%}", va="center", fontsize=8)
    b.set_xlabel("retention: accuracy / teacher's (%)")
    b.set_title("How much of the teacher is kept")
    b.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig, save(fig, profile, name)


def accuracy_vs_params(table: Any, profile: str, name: str = "lora_rank_sweep"):
    """Test accuracy against trainable parameters (log scale): the LoRA ranks (rows with a ``rank``) and the
    reference (full fine-tuning)."""
    fig, a = plt.subplots(figsize=(7, 3.8))
    lora = table[table["rank"].notna()].sort_values("trainable_params")
    a.plot(lora["trainable_params"], lora["accuracy"], "o-", color="C0", label="LoRA")
    for _, row in lora.iterrows():
        a.annotate(
            f"r={row['rank']:g}\n{row['trainable_pct']:.2f}%",
            (row["trainable_params"], row["accuracy"]),
            textcoords="offset points",
            xytext=(0, 8),
            ha="center",
            fontsize=8,
        )
    full = table[table["role"] == "reference"].iloc[0]
    a.plot([full["trainable_params"]], [full["accuracy"]], "s", color="C3", label=f"{full.name} (reference)")
    a.axhline(full["accuracy"], color="C3", ls=":", lw=1)
    a.set_xscale("log")
    a.set_xlabel("trainable parameters (log scale)")
    a.set_ylabel("test accuracy")
    a.set_title("Accuracy vs what trains")
    a.legend(loc="lower right")
    fig.tight_layout()
    return fig, save(fig, profile, name)


def sparsity_sweep(table: Any, profile: str, name: str = "prune_unstructured"):
    """Left: test accuracy vs sparsity, before and after recovery. Right: batch-1 latency and three kinds of
    storage relative to the reference, vs sparsity. ``table``: a comparison table whose unstructured rows have
    ``sparsity``, ``accuracy_before_recovery`` and the storage columns of :func:`lib.prune.storage_mb`."""
    ref = table[table["role"] == "reference"].iloc[0]
    rows = table[table["method"] == "unstructured"].sort_values("sparsity")
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    x = 100 * rows["sparsity"].to_numpy(dtype=float)
    a.plot(x, rows["accuracy_before_recovery"], "o-", label="pruned, no recovery")
    a.plot(x, rows["accuracy"], "s-", label="pruned + recovery fine-tune")
    a.axhline(ref["accuracy"], color="C3", ls=":", label="teacher")
    a.set_xlabel("encoder weights zeroed (%)")
    a.set_ylabel("test accuracy")
    a.set_title("Accuracy vs sparsity")
    a.legend()
    b.plot(x, rows["latency_ratio_vs_reference"], "o-", label="batch-1 latency (dense kernels)")
    for col, label, style in (
        ("dense_mb", "safetensors file", "s--"),
        ("compressed_mb", "file, deflate-compressed", "^-"),
        ("sparse_mb", "CSR encoder weights", "v-"),
    ):
        b.plot(x, rows[col] / ref[col], style, label=label)
    b.axhline(1.0, color="k", lw=0.8)
    b.set_xlabel("encoder weights zeroed (%)")
    b.set_ylabel("relative to the teacher")
    b.set_title("What zeros buy: time and bytes")
    b.legend(fontsize=8)
    fig.tight_layout()
    return fig, save(fig, profile, name)


def structured_tradeoff(table: Any, profile: str, choice: Any = None, name: str = "prune_structured"):
    """Accuracy (middle) and measured batch-32 throughput ratio (right) against the share of encoder
    parameters removed; dashed = before recovery. With ``choice`` (validation accuracy per importance method
    and fraction, before recovery), a left panel compares the importance methods."""
    ref = table[table["role"] == "reference"].iloc[0]
    rows = table[table["method"] == "structured"].sort_values("encoder_removed")
    panels = 3 if choice is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 3.8))
    if choice is not None:
        c = axes[0]
        for i, (method, part) in enumerate(choice.groupby("importance")):
            part = part.sort_values("encoder_removed")
            c.plot(100 * part["encoder_removed"], part["val_accuracy"], "o-", color=f"C{i + 2}", label=method)
        c.set_xlabel("encoder parameters removed (%)")
        c.set_ylabel("validation accuracy, no recovery")
        c.set_title("Which units to remove? Scores compared")
        c.legend()
    a, b = axes[-2], axes[-1]
    x = 100 * rows["encoder_removed"].astype(float)
    a.plot(x, rows["accuracy"], "o-", color="C0", label="recovered")
    a.plot(x, rows["accuracy_before_recovery"], "o--", color="C0", alpha=0.5, label="before recovery")
    b.plot(x, rows["speedup_vs_reference"], "o-", color="C0", label="structured")
    a.axhline(ref["accuracy"], color="C3", ls=":", label="teacher")
    a.set_xlabel("encoder parameters removed (%)")
    a.set_ylabel("test accuracy")
    a.set_title("Accuracy vs what was removed")
    a.legend(fontsize=8)
    b.axhline(1.0, color="k", lw=0.8)
    b.set_xlabel("encoder parameters removed (%)")
    b.set_ylabel("throughput / teacher (batch 32)")
    b.set_title("Measured speed-up")
    b.legend()
    fig.tight_layout()
    return fig, save(fig, profile, name)


def runs_compare(
    histories: Mapping[str, Any], profile: str, name: str, title: str = "Training runs compared"
):
    """Several :class:`lib.train.History` side by side: training loss per step (running mean of 20 steps,
    left) and validation accuracy per epoch (right)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.6))
    for i, (label, h) in enumerate(histories.items()):
        losses = np.asarray(h.step_losses, dtype=float)
        k = min(20, max(len(losses), 1))
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid") if len(losses) else losses
        a.plot(np.arange(k, len(losses) + 1), smooth, color=f"C{i}", label=label)
        epochs = [e["epoch"] for e in h.epochs if "val_accuracy" in e]
        b.plot(
            epochs,
            [e["val_accuracy"] for e in h.epochs if "val_accuracy" in e],
            "o-",
            color=f"C{i}",
            label=label,
        )
    a.set_xlabel("step")
    a.set_ylabel("training loss (running mean of 20)")
    a.set_title(title)
    a.legend()
    b.set_xlabel("epoch")
    b.set_ylabel("validation accuracy")
    b.set_title("Validation accuracy per epoch")
    b.xaxis.get_major_locator().set_params(integer=True)
    b.legend()
    fig.tight_layout()
    return fig, save(fig, profile, name)


def distributed_runs(
    table: Any, losses: Mapping[str, Sequence[float]], profile: str, name: str = "distributed_runs"
):
    """Data-parallel runs side by side: the training loss of each global batch (running mean of 5, left) and
    where a step's time goes (right: forward, backward, the communication left over after overlapping
    backward, the rest)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    for i, (label, values) in enumerate(losses.items()):
        v = np.asarray(values, dtype=float)
        k = min(5, max(len(v), 1))
        a.plot(
            np.arange(k, len(v) + 1), np.convolve(v, np.ones(k) / k, mode="valid"), color=f"C{i}", label=label
        )
    a.set_xlabel("step")
    a.set_ylabel("training loss (global batch, running mean of 5)")
    a.set_title("Same steps, same data")
    a.legend()
    parts = [
        ("forward_s", "forward"),
        ("backward_s", "backward"),
        ("exposed_comm_s", "communication not hidden"),
        ("other_s", "optimizer, data, rest"),
    ]
    y = np.arange(len(table.index))
    split = table["forward_s"].notna().to_numpy() if "forward_s" in table else np.zeros(len(y), bool)
    left = np.zeros(len(y))
    for j, (col, label) in enumerate(parts):
        vals = np.where(split, table[col].fillna(0).to_numpy(dtype=float), 0.0)
        b.barh(y, vals, left=left, color=f"C{j}", label=label)
        left += vals
    if (~split).any():  # no DDP timers in one process: its step is shown whole
        b.barh(
            y[~split],
            table["step_s"].to_numpy(dtype=float)[~split],
            color="0.6",
            label="whole step (no DDP timers)",
        )
    b.set_yticks(y, table.index)
    b.invert_yaxis()
    b.set_xlabel("seconds per step (median)")
    b.set_title("Where a step's time goes")
    b.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3)
    fig.tight_layout()
    return fig, save(fig, profile, name)


def scaling_model(
    frame: Any,
    profile: str,
    scheme: str = "allreduce",
    network: str | None = None,
    name: str = "scaling_model",
):
    """The scaling model's prediction: efficiency against the number of workers, per network for ``scheme``
    (left), and per communication scheme on ``network`` (right; default the slowest). Solid: no overlap;
    dashed: communication hidden under the backward pass where it fits."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    network = network or frame["network"].iloc[0]
    for ax, key, fixed, title in (
        (a, "network", ("scheme", scheme), f"{scheme}: by network"),
        (b, "scheme", ("network", network), f"{network}: by scheme"),
    ):
        sub = frame[frame[fixed[0]] == fixed[1]]
        for i, value in enumerate(dict.fromkeys(sub[key])):
            for overlap, style in (("none", "-"), ("backward", "--")):
                part = sub[(sub[key] == value) & (sub["overlap"] == overlap)].sort_values("workers")
                ax.plot(
                    part["workers"],
                    part["efficiency"],
                    style,
                    marker="o",
                    ms=3,
                    color=f"C{i}",
                    label=value if overlap == "none" else None,
                )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("workers (machines like this one)")
        ax.set_title(title)
        ax.legend(fontsize=8)
    a.set_ylabel("scaling efficiency (1 = linear)")
    a.set_ylim(0, 1.05)
    fig.text(
        0.5,
        -0.02,
        "solid: no overlap; dashed: communication hidden under the backward pass where it fits",
        ha="center",
        fontsize=8,
    )
    fig.tight_layout()
    return fig, save(fig, profile, name)


def word_attributions(
    examples: Sequence[tuple[str, Sequence[str], Mapping[str, Sequence[float]]]],
    profile: str,
    name: str = "explanations",
):
    """One panel per explained text: each word's score from each method (bars side by side; right of 0 =
    toward the predicted class). Scores are scaled per method to the largest |score| of that text, so methods
    on different scales (LIME's coefficients, IG's probability shares) compare by rank and sign."""
    n = len(examples)
    cols = 2 if n > 1 else 1
    rows = -(-n // cols)
    height = max(3.0, max(len(words) for _, words, _ in examples) * 0.22 + 1.2)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, height * rows), squeeze=False)
    for ax, (title, words, by_method) in zip(axes.flat, examples):
        y = np.arange(len(words))
        width = 0.8 / max(len(by_method), 1)
        for j, (method, scores) in enumerate(by_method.items()):
            s = np.asarray(scores, dtype=float)
            top = np.abs(s).max() or 1.0
            ax.barh(y + j * width - 0.4 + width / 2, s / top, width, color=f"C{j}", label=method)
        ax.set_yticks(y, words, fontsize=8)
        ax.invert_yaxis()
        ax.axvline(0, color="k", lw=0.8)
        ax.set_xlim(-1.05, 1.05)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("score / largest |score| (right: toward the predicted class)", fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.tight_layout()
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(labels), fontsize=9)
    return fig, save(fig, profile, name)


METHOD_COLORS = {"lime": "C0", "integrated_gradients": "C1", "random": "0.6"}


def faithfulness(table: Any, profile: str, name: str = "faithfulness"):
    """ERASER AOPC per model and method: comprehensiveness (left, higher is more faithful) and sufficiency
    (right, lower is more faithful), with the standard error over the explained texts."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
    labels = [f"{m} · {e}" for m, e in table.index]
    y = np.arange(len(labels))
    for ax, metric, hint in (
        (axes[0], "comprehensiveness", "higher = more faithful"),
        (axes[1], "sufficiency", "lower = more faithful"),
    ):
        colors = [METHOD_COLORS.get(e, "C3") for _, e in table.index]
        ax.barh(y, table[metric], xerr=table.get(f"{metric}_se"), color=colors, capsize=3)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_title(f"{metric} (AOPC; {hint})")
        ax.set_xlabel("drop in the predicted class's probability")
    axes[0].set_yticks(y, labels)
    axes[0].invert_yaxis()
    fig.tight_layout()
    return fig, save(fig, profile, name)


def global_words(
    frame: Any, class_names: Sequence[str], profile: str, top: int = 12, name: str = "global_words"
):
    """The words with the largest mean score toward each class (``frame``: mean score toward
    ``class_names[1]``)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.3 * top + 1.4))
    for ax, part, cls, color in (
        (axes[0], frame.head(top), class_names[1], "C2"),
        (axes[1], frame.tail(top).iloc[::-1], class_names[0], "C3"),
    ):
        ax.barh(np.arange(len(part)), part["mean_score"].abs(), color=color)
        ax.set_yticks(
            np.arange(len(part)), [f"{w} ({c})" for w, c in zip(part.index, part["count"])], fontsize=8
        )
        ax.invert_yaxis()
        ax.set_title(f"toward '{cls}'")
        ax.set_xlabel("mean score (word count in brackets)")
    fig.tight_layout()
    return fig, save(fig, profile, name)


def privacy_utility(table: Any, profile: str, name: str = "privacy_utility"):
    """Test accuracy (left, with ±1 standard error) and the loss attack's AUC (right) against the ε each DP
    model spent (log scale); the non-private models, which have no ε, are horizontal lines."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    private = table[table["epsilon"].notna()].sort_values("epsilon")
    public = table[table["epsilon"].isna()]
    for ax, col, title in (
        (axes[0], "accuracy", "test accuracy"),
        (axes[1], "mia_auc", "loss attack AUC (0.5 = chance)"),
    ):
        ax.errorbar(
            private["epsilon"],
            private[col],
            yerr=private.get(f"{col}_se") if col == "accuracy" else None,
            marker="o",
            capsize=3,
            color="C0",
            label="DP-SGD",
        )
        for j, (label, row) in enumerate(public.iterrows()):
            ax.axhline(row[col], ls="--", color=f"C{j + 1}", label=f"{label} (no DP)")
        ax.set_xscale("log")
        ax.set_xlabel("ε spent (log scale; smaller = more private)")
        ax.set_title(title)
        ax.legend(fontsize=8)
    axes[1].axhline(0.5, color="k", lw=0.8)
    fig.tight_layout()
    return fig, save(fig, profile, name)


def membership_roc(
    audits: Mapping[str, Mapping[str, Any]],
    bounds: Mapping[str, Any],
    profile: str,
    name: str = "membership_roc",
    title: str = "Membership inference: loss-threshold attack",
):
    """ROC curves of the loss attack on log-log axes (the corner of few false positives is where an attack
    matters), the chance diagonal, and for each DP model the most any attack could reach against its (ε, δ),
    dashed in its colour. ``bounds[name]`` is an array of the bound at ``audits[name]["fpr"]`` (absent for
    non-private models)."""
    fig, ax = plt.subplots(figsize=(6.2, 5))
    floor = min(1.0 / max(a["nonmembers"], 1) for a in audits.values())
    grid = np.logspace(np.log10(floor), 0, 200)
    ax.plot(grid, grid, color="k", lw=0.8, label="chance")
    for j, (label, a) in enumerate(audits.items()):
        fpr, tpr = np.maximum(a["fpr"], floor), np.maximum(a["tpr"], floor)
        ax.plot(fpr, tpr, color=f"C{j}", lw=1.5, label=f"{label} (AUC {a['auc']:.3f})")
        if label in bounds:
            ax.plot(
                np.maximum(a["fpr"], floor),
                np.maximum(bounds[label], floor),
                color=f"C{j}",
                ls="--",
                lw=1,
                label=f"{label}: DP bound",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(floor, 1)
    ax.set_ylim(floor, 1.02)
    ax.set_xlabel("false-positive rate (non-members called members)")
    ax.set_ylabel("true-positive rate (members found)")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig, save(fig, profile, name)


def pareto(
    table: Any, fronts: Mapping[str, Any], profile: str, highlight: Sequence[str] = (), name: str = "pareto"
):
    """Accuracy against speed-up over the teacher (left) and against size (right, log scale): every variant
    with both numbers, coloured by its notebook; the Pareto front of each panel (``fronts[x column]``: a
    boolean Series) is joined by a line and its points are labelled; ``highlight`` names get a star."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    sources = sorted(table["source"].dropna().unique())
    colour = {s: f"C{i}" for i, s in enumerate(sources)}
    on_front = pd.concat([table.loc[f[f].index, "accuracy"] for f in fronts.values()]).astype(float)
    floor = (
        float(on_front.min()) - 0.03 if len(on_front) else 0.0
    )  # zoom on the front: far-worse variants are counted
    for ax, x, xlabel in (
        (axes[0], "speedup_vs_teacher", "speed-up over the teacher (batch-32 throughput, ×)"),
        (axes[1], "size_mb", "size on disk (MB, log scale)"),
    ):
        placed = table[table[x].notna() & table["accuracy"].notna()]
        shown = placed[placed["accuracy"].astype(float) >= floor]
        for src in sources:
            part = shown[shown["source"] == src]
            if len(part):
                ax.scatter(part[x], part["accuracy"], s=28, color=colour[src], label=src, alpha=0.8)
        front = shown[fronts[x].reindex(shown.index, fill_value=False)].sort_values(x)
        ax.plot(front[x], front["accuracy"], color="k", lw=1.2, ls="--", label="Pareto front")
        for j, (label, row) in enumerate(
            front.iterrows()
        ):  # alternate above/below: neighbours on the front are close
            ax.annotate(
                str(label),
                (row[x], row["accuracy"]),
                fontsize=7,
                xytext=(4, 5 if j % 2 == 0 else -11),
                textcoords="offset points",
            )
        for label in highlight:
            if label in shown.index:
                ax.scatter(
                    shown.loc[label, x],
                    shown.loc[label, "accuracy"],
                    marker="*",
                    s=220,
                    color="gold",
                    edgecolor="k",
                    zorder=5,
                    label=f"{label}",
                )
        if x == "size_mb":
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(
            "test accuracy"
            + (
                f" ({len(placed) - len(shown)} variant(s) below {floor:.2f} not shown)"
                if len(placed) > len(shown)
                else ""
            )
        )
    axes[0].set_title("accuracy vs speed (up and right is better)")
    axes[1].set_title("accuracy vs size (up and left is better)")
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    return fig, save(fig, profile, name)


def stack_stages(table: Any, profile: str, name: str = "stacked"):
    """The stacked variant stage by stage against the teacher: speed-up (left), times smaller (middle) and
    test accuracy (right), one bar per stage, each labelled with its value."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 0.45 * len(table) + 1.8), sharey=True)
    y = np.arange(len(table))
    for ax, col, title, fmt in (
        (axes[0], "speedup_vs_reference", "speed-up (batch 32, ×)", "{:.2f}×"),
        (axes[1], "smaller_x", "times smaller than the teacher", "{:.1f}×"),
        (axes[2], "accuracy", "test accuracy", "{:.3f}"),
    ):
        values = table[col].astype(float)
        ax.barh(y, values, color=["C7"] + ["C0"] * (len(table) - 2) + ["C2"] if len(table) > 1 else "C7")
        for yi, v in zip(y, values):
            ax.text(v, yi, " " + fmt.format(v), va="center", fontsize=8)
        ax.set_title(title)
        if col == "accuracy":
            ax.set_xlim(max(0.0, values.min() - 0.08), min(1.0, values.max() + 0.04))
        else:
            ax.set_xlim(0, values.max() * 1.25)
    axes[0].set_yticks(y, table.index, fontsize=8)
    axes[0].invert_yaxis()
    fig.tight_layout()
    return fig, save(fig, profile, name)


def client_splits(tables: Mapping[str, Any], profile: str, name: str = "federated_splits"):
    """How each split cuts the training data: one panel per split, one stacked bar per client (its examples
    of each label), the clients sorted by their share of the first label."""
    fig, axes = plt.subplots(
        1, len(tables), figsize=(3.1 * len(tables) + 0.8, 3.2), sharey=True, squeeze=False
    )
    for ax, (split, table) in zip(axes[0], tables.items()):
        order = table.iloc[:, 0].div(table.sum(axis=1)).sort_values().index
        bottom = np.zeros(len(table))
        for j, label in enumerate(table.columns):
            values = table.loc[order, label].to_numpy()
            ax.bar(np.arange(len(table)), values, bottom=bottom, color=f"C{j}", label=str(label))
            bottom += values
        ax.set_title(split, fontsize=9)
        ax.set_xticks([])
        ax.set_xlabel("clients (sorted)")
    axes[0][0].set_ylabel("training examples")
    axes[0][-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    return fig, save(fig, profile, name)


def federated_curves(
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    reference: Sequence[float],
    profile: str,
    name: str = "federated_curves",
):
    """Global test accuracy per round: one panel per strategy (``curves[strategy][split]``: accuracy before
    round 1 and after each), the centralized reference (the same budget, in one place) dashed in each."""
    fig, axes = plt.subplots(1, len(curves), figsize=(5.6 * len(curves), 3.8), sharey=True, squeeze=False)
    for ax, (strategy, by_split) in zip(axes[0], curves.items()):
        for i, (split, acc) in enumerate(by_split.items()):
            ax.plot(np.arange(len(acc)), acc, color=f"C{i}", label=split)
        ax.plot(np.arange(len(reference)), reference, "k--", lw=1.2, label="centralized")
        ax.set_title(strategy)
        ax.set_xlabel("round (centralized: the same epochs)")
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[0][0].set_ylabel("global model's test accuracy")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig, save(fig, profile, name)


def client_spread(table: Any, profile: str, name: str = "federated_clients"):
    """Each final model on each client's own held-out slice: the mean over clients (bar) and the worst client
    (dot), per split, one bar colour per strategy; the test accuracy of the global model as a tick."""
    splits, strategies = list(dict.fromkeys(table["split"])), list(dict.fromkeys(table["strategy"]))
    fig, ax = plt.subplots(figsize=(1.5 * len(splits) * len(strategies) / 2 + 3, 3.8))
    width = 0.8 / len(strategies)
    for j, strategy in enumerate(strategies):
        rows = table[table["strategy"] == strategy].set_index("split").reindex(splits)
        x = np.arange(len(splits)) + (j - (len(strategies) - 1) / 2) * width
        ax.bar(
            x, rows["mean_client_accuracy"], width, color=f"C{j}", alpha=0.7, label=f"{strategy}: mean client"
        )
        ax.scatter(x, rows["worst_client_accuracy"], color="k", marker="v", zorder=3,
                   label="worst client" if j == 0 else None)  # fmt: skip
        ax.scatter(x, rows["global_accuracy"], color="C3", marker="_", s=300, zorder=3,
                   label="global test accuracy" if j == 0 else None)  # fmt: skip
    ax.set_xticks(np.arange(len(splits)), splits)
    ax.set_ylabel("accuracy")
    low = float(np.nanmin(table[["worst_client_accuracy", "global_accuracy"]].to_numpy(dtype=float)))
    ax.set_ylim(max(0.0, low - 0.05), 1.0)
    ax.set_title("The final model on each client's own held-out data")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    return fig, save(fig, profile, name)


def behaviour_heatmap(table: Any, profile: str, name: str = "behaviour_tests"):
    """Failure rate of every behaviour test (rows, with its type) for every variant (columns), as a heatmap
    with the rates written in."""
    fig, ax = plt.subplots(figsize=(1.3 * table.shape[1] + 4.5, 0.38 * table.shape[0] + 1.5))
    im = ax.imshow(table.to_numpy(dtype=float), cmap="Reds", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(np.arange(table.shape[1]), table.columns, rotation=20, ha="right")
    ax.set_yticks(np.arange(table.shape[0]), table.index)
    ax.grid(False)
    for (i, j), v in np.ndenumerate(table.to_numpy(dtype=float)):
        ax.text(j, i, "–" if np.isnan(v) else f"{v:.0%}", ha="center", va="center", fontsize=8,
                color="white" if v > 0.6 else "black")  # fmt: skip
    fig.colorbar(im, ax=ax, label="failure rate", fraction=0.03)
    ax.set_title("Behaviour tests: share of cases failed")
    fig.tight_layout()
    return fig, save(fig, profile, name)


def robustness_bars(table: Any, profile: str, name: str = "robustness"):
    """Per variant: clean accuracy on the attacked texts, accuracy under each attack, and accuracy on the
    teacher's adversarial texts (transfer), side by side."""
    columns = {"clean_accuracy": "clean", "robust_accuracy_char": "char attack",
               "robust_accuracy_word": "word attack",
               "transfer_accuracy": "teacher's attacks replayed"}  # fmt: skip
    columns = {c: label for c, label in columns.items() if c in table}
    fig, ax = plt.subplots(figsize=(1.4 * len(table) + 3, 3.8))
    width = 0.8 / len(columns)
    for j, (c, label) in enumerate(columns.items()):
        x = np.arange(len(table)) + (j - (len(columns) - 1) / 2) * width
        ax.bar(x, table[c].astype(float), width, label=label, color=f"C{j}")
    ax.set_xticks(np.arange(len(table)), table.index, rotation=15, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy, clean and under attack (the same texts for every variant)")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    return fig, save(fig, profile, name)


def fairness_gaps(table: Any, profile: str, name: str = "fairness"):
    """Each variant's gap in mean P(positive) between two groups, per attribute, with its 95% interval; the
    dotted line is no gap."""
    attrs, variants = list(dict.fromkeys(table["attribute"])), list(dict.fromkeys(table["variant"]))
    fig, axes = plt.subplots(
        1, len(attrs), figsize=(3.6 * len(attrs), 0.35 * len(variants) + 1.8), sharey=True
    )
    for ax, attr in zip(np.atleast_1d(axes), attrs):
        rows = table[table["attribute"] == attr].set_index("variant").reindex(variants)
        y = np.arange(len(variants))
        err = np.vstack([rows["gap"] - rows["low"], rows["high"] - rows["gap"]]).astype(float)
        ax.errorbar(rows["gap"].astype(float), y, xerr=err, fmt="o", capsize=3)
        ax.axvline(0, color="k", ls=":", lw=1)
        ax.set_yticks(y, variants)
        ax.set_title(attr, fontsize=9)
        ax.set_xlabel("gap in mean P(positive), A − B")
    fig.suptitle("Counterfactual fairness gaps with 95% intervals", y=1.02)
    fig.tight_layout()
    return fig, save(fig, profile, name)


def latency_vs_load(
    sweeps: Mapping[tuple[str, str], Any], slo_ms: float, profile: str, name: str = "serve_latency"
):
    """One column per served model: top, p99 (solid) and p50 (dotted) latency against the offered rate, one
    colour per configuration, the SLO dashed; bottom, the answered rate against the offered one."""
    models = list(dict.fromkeys(m for m, _ in sweeps))
    fig, axes = plt.subplots(2, len(models), figsize=(5.6 * len(models), 7.2), squeeze=False)
    for j, model in enumerate(models):
        top, bottom = axes[0, j], axes[1, j]
        mine = {c: t for (m, c), t in sweeps.items() if m == model}
        for config, t in mine.items():
            (line,) = top.plot(t.index, t["p99_ms"], marker="o", label=f"{config}")
            top.plot(t.index, t["p50_ms"], ls=":", color=line.get_color())
            bottom.plot(t.index, t["achieved_rps"], marker="o", color=line.get_color(), label=config)
        top.axhline(slo_ms, color="k", ls="--", lw=1, label=f"SLO: p99 ≤ {slo_ms:g} ms")
        top.set_yscale("log")
        top.set_ylabel("latency from the scheduled send (ms)\np99 solid, p50 dotted")
        top.set_title(f"{model}: latency against offered load")
        top.legend(fontsize=8)
        most = max(float(t.index.max()) for t in mine.values())
        bottom.plot([0, most], [0, most], color="grey", ls="--", lw=1, label="answered = offered")
        bottom.set_xlabel("offered requests/s (open loop, Poisson)")
        bottom.set_ylabel("answered requests/s")
        bottom.legend(fontsize=8)
    fig.tight_layout()
    return fig, save(fig, profile, name)


def serve_metrics(
    batch_sizes: Mapping[str, Any], depth: Any, queue_limit: int, profile: str, name: str = "serve_metrics"
):
    """Left: the share of model calls per batch-size bucket, per configuration (scraped from ``/metrics``).
    Right: the queue depth over time under overload (``depth``: rows of seconds and texts waiting), with the
    admission limit."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 3.8))
    labels = [f"≤{int(le)}" if np.isfinite(le) else "more" for le in next(iter(batch_sizes.values())).index]
    x = np.arange(len(labels))
    width = 0.8 / max(len(batch_sizes), 1)
    for i, (config, counts) in enumerate(batch_sizes.items()):
        a.bar(x + i * width - 0.4 + width / 2, counts / max(counts.sum(), 1), width, label=config)
    a.set_xticks(x, labels)
    a.set_xlabel("texts per model call")
    a.set_ylabel("share of model calls")
    a.set_title("Batch sizes the batcher formed (over each sweep)")
    a.legend(fontsize=7)
    for label, series in depth.items():
        b.plot(series[:, 0], series[:, 1], label=label)
    b.axhline(queue_limit, color="k", ls="--", lw=1, label=f"admission limit ({queue_limit} texts)")
    b.set_xlabel("seconds into the run")
    b.set_ylabel("texts waiting (scraped /metrics)")
    b.set_title("Queue depth under overload")
    b.legend(fontsize=8)
    fig.tight_layout()
    return fig, save(fig, profile, name)
