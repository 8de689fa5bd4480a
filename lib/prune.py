"""Pruning: zero weights (unstructured) or remove whole attention heads and FFN neurons (structured).

**Unstructured** magnitude pruning (``torch.nn.utils.prune``, global L1 over the encoder's Linear weights)
zeroes the smallest weights across all layers. The tensors keep their shapes, so dense kernels do the same
work: no speed-up, and the checkpoint keeps its size unless it is stored compressed or sparse.

**Structured** pruning removes units, so the matrices really shrink: a head is ``head_size`` rows of the
query/key/value projections and the same columns of the attention output projection; an FFN neuron is a
row of ``intermediate.dense`` and a column of ``output.dense``. transformers v5 dropped ``prune_heads``;
:func:`remove_units` does it on top of ``transformers.pytorch_utils.prune_linear_layer`` and keeps each
attention module's head counts consistent. Which units go is decided by an importance score on the
validation split (:func:`unit_importance`): ``gradient`` (Michel et al., 2019: |∂loss/∂mask| of a mask on
every head/neuron) or ``magnitude`` (norm of the unit's weights).

A pruned model records its per-layer shapes in ``config.pruned_layout``; :func:`lib.models.load_artifact`
rebuilds those shapes before loading the weights, so it reloads like any other artifact.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
from torch import nn

METHODS = ("gradient", "magnitude")


def check_fraction(name: str, value: float) -> float:
    """A pruning fraction must be in [0, 1): 1 would remove everything."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be a fraction in [0, 1) (e.g. 0.5 removes half); got {value!r}")
    return float(value)


def encoder_layers(model: Any) -> list[nn.Module]:
    """The transformer blocks of a (possibly peft-wrapped) BERT-style classifier."""
    base = getattr(model, "base_model", model)
    base = getattr(base, "bert", base)
    encoder = getattr(base, "encoder", None)
    if encoder is None or not hasattr(encoder, "layer"):
        raise ValueError(f"{type(model).__name__} has no BERT-style encoder (.bert.encoder.layer): pruning here "
                         "supports BERT-architecture models")
    return list(encoder.layer)


def encoder_linears(model: Any) -> list[nn.Linear]:
    return [m for layer in encoder_layers(model) for m in layer.modules() if isinstance(m, nn.Linear)]


# ---------------------------------------------------------------------------------------------- unstructured

def magnitude_prune(model: Any, sparsity: float) -> Any:
    """Zero the ``sparsity`` fraction of encoder Linear weights with the smallest |w|, ranked globally.

    The pruning masks stay attached (``weight = weight_orig * weight_mask``), so a recovery fine-tune keeps
    the zeros at zero; call :func:`make_permanent` afterwards. Works in place; returns ``model``.
    """
    from torch.nn.utils import prune

    check_fraction("sparsity", sparsity)
    targets = [(m, "weight") for m in encoder_linears(model)]
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=float(sparsity))
    return model


def make_permanent(model: Any) -> Any:
    """Fold the pruning masks into plain weights (zeros stay), so the model saves and runs as a normal one."""
    from torch.nn.utils import prune

    for m in encoder_linears(model):
        if prune.is_pruned(m):
            prune.remove(m, "weight")
    return model


def encoder_sparsity(model: Any) -> float:
    """Fraction of encoder Linear weights that are exactly zero."""
    ws = [m.weight for m in encoder_linears(model)]
    return float(sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws))


def storage_mb(model: Any) -> dict[str, float]:
    """What the weights cost to store, three ways (MB, 10^6 bytes), measured on the real bytes:

    ``dense_mb`` the safetensors file; ``compressed_mb`` that file deflate-compressed (zlib level 6, what a
    zip or a compressed download holds; zeros compress, random floats barely); ``sparse_mb`` encoder weights
    in CSR form (fp32 values + int32 column indices + row pointers), everything else dense.
    """
    import tempfile
    import zlib
    from pathlib import Path

    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "w.safetensors"
        save_file(state, str(f))
        raw = f.read_bytes()
    enc = {id(m.weight) for m in encoder_linears(model)}
    sparse = 0
    for p in model.parameters():
        if id(p) in enc:
            nnz = int((p != 0).sum())
            sparse += nnz * 4 + nnz * 4 + (p.shape[0] + 1) * 4
        else:
            sparse += p.numel() * p.element_size()
    return {"dense_mb": len(raw) / 1e6, "compressed_mb": len(zlib.compress(raw, 6)) / 1e6, "sparse_mb": sparse / 1e6}


# ---------------------------------------------------------------------------------------------- structured

@dataclass
class Importance:
    """Per-unit scores (higher = more important): ``heads[l, h]`` and ``neurons[l][j]``."""

    method: str
    heads: torch.Tensor
    neurons: list[torch.Tensor]


def _head_size(layer: nn.Module) -> int:
    return int(layer.attention.self.attention_head_size)


def unit_importance(model: Any, loader: Iterable[dict], method: str = "gradient", max_batches: int = 0) -> Importance:
    """Score every attention head and FFN neuron of ``model``.

    ``gradient``: a mask of ones multiplies each head's output and each neuron's activation; the score is the
    sum over batches of |∂loss/∂mask| (Michel et al., 2019 — a first-order estimate of the loss change if the
    unit is removed). ``magnitude``: the L2 norm of the unit's weights (rows in, columns out).
    Scores are normalised per layer (divided by the layer's L2 norm, as Michel et al. do) so that global
    ranking compares layers fairly.
    """
    if method not in METHODS:
        raise ValueError(f"importance method must be one of {METHODS}, got {method!r}")
    layers = encoder_layers(model)
    if method == "magnitude":
        heads, neurons = [], []
        for layer in layers:
            att, d = layer.attention, _head_size(layer)
            rows = sum(getattr(att.self, n).weight.detach().pow(2).view(-1, d, att.self.query.in_features).sum((1, 2))
                       for n in ("query", "key", "value"))
            cols = att.output.dense.weight.detach().pow(2).view(att.output.dense.out_features, -1, d).sum((0, 2))
            heads.append((rows + cols).sqrt())
            neurons.append((layer.intermediate.dense.weight.detach().pow(2).sum(1)
                            + layer.output.dense.weight.detach().pow(2).sum(0)).sqrt())
        return _normalised(Importance(method, torch.stack(heads), neurons))

    head_masks = [torch.ones(l.attention.self.num_attention_heads, requires_grad=True) for l in layers]
    neuron_masks = [torch.ones(l.intermediate.dense.out_features, requires_grad=True) for l in layers]
    hooks = []
    for layer, hm, nm in zip(layers, head_masks, neuron_masks):
        d = _head_size(layer)
        hooks.append(layer.attention.self.register_forward_hook(
            lambda mod, inp, out, hm=hm, d=d: (out[0] * hm.repeat_interleave(d), *out[1:])))
        hooks.append(layer.intermediate.register_forward_hook(lambda mod, inp, out, nm=nm: out * nm))
    was_training = model.training
    model.eval()  # no dropout: score the model as it predicts
    try:
        for i, batch in enumerate(loader):
            if max_batches and i >= max_batches:
                break
            loss = model(**batch).loss
            grads = torch.autograd.grad(loss, head_masks + neuron_masks)
            for m, g in zip(head_masks + neuron_masks, grads):
                m.grad = g.abs() if m.grad is None else m.grad + g.abs()
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return _normalised(Importance(method, torch.stack([m.grad for m in head_masks]),
                                  [m.grad for m in neuron_masks]))


def _normalised(imp: Importance) -> Importance:
    heads = imp.heads / imp.heads.norm(dim=1, keepdim=True).clamp(min=1e-12)
    neurons = [n / n.norm().clamp(min=1e-12) for n in imp.neurons]
    return Importance(imp.method, heads, neurons)


@dataclass
class Plan:
    """Units to remove: ``heads[l]`` and ``neurons[l]`` are index lists per layer."""

    heads: dict[int, list[int]]
    neurons: dict[int, list[int]]


def plan(importance: Importance, fraction: float, min_heads: int = 1, min_neurons: int = 1) -> Plan:
    """Remove the ``fraction`` of heads and the same fraction of FFN neurons with the lowest scores, ranked
    across all layers, keeping at least ``min_heads`` heads and ``min_neurons`` neurons in every layer."""
    check_fraction("fraction", fraction)
    n_layers, n_heads = importance.heads.shape
    heads = _lowest([importance.heads[l] for l in range(n_layers)], round(fraction * n_layers * n_heads), min_heads)
    neurons = _lowest(importance.neurons, round(fraction * sum(len(n) for n in importance.neurons)), min_neurons)
    return Plan(heads, neurons)


def _lowest(scores: Sequence[torch.Tensor], k: int, keep_min: int) -> dict[int, list[int]]:
    flat = sorted((float(s), l, j) for l, layer in enumerate(scores) for j, s in enumerate(layer))
    left = {l: len(layer) for l, layer in enumerate(scores)}
    out: dict[int, list[int]] = {l: [] for l in left}
    for _, l, j in flat:
        if k <= 0:
            break
        if left[l] > keep_min:
            out[l].append(j)
            left[l] -= 1
            k -= 1
    return {l: sorted(js) for l, js in out.items()}


def remove_units(model: Any, to_remove: Plan) -> Any:
    """Physically remove the planned heads and neurons (in place); records the new shapes in
    ``config.pruned_layout``. Removing a unit whose weights are zero leaves every output unchanged."""
    from transformers.pytorch_utils import prune_linear_layer

    for l, layer in enumerate(encoder_layers(model)):
        att = layer.attention.self
        d, n = _head_size(layer), att.num_attention_heads
        gone = set(to_remove.heads.get(l, []))
        if gone:
            if not gone <= set(range(n)) or len(gone) >= n:
                raise ValueError(f"layer {l}: cannot remove heads {sorted(gone)} of {n} (at least one must stay)")
            keep = torch.tensor([h * d + i for h in range(n) if h not in gone for i in range(d)], dtype=torch.long)
            att.query, att.key, att.value = (prune_linear_layer(getattr(att, x), keep) for x in ("query", "key", "value"))
            layer.attention.output.dense = prune_linear_layer(layer.attention.output.dense, keep, dim=1)
            att.num_attention_heads = n - len(gone)
            att.all_head_size = att.num_attention_heads * d
        gone = set(to_remove.neurons.get(l, []))
        if gone:
            width = layer.intermediate.dense.out_features
            if not gone <= set(range(width)) or len(gone) >= width:
                raise ValueError(f"layer {l}: cannot remove neurons {len(gone)} of {width} (at least one must stay)")
            keep = torch.tensor([j for j in range(width) if j not in gone], dtype=torch.long)
            layer.intermediate.dense = prune_linear_layer(layer.intermediate.dense, keep)
            layer.output.dense = prune_linear_layer(layer.output.dense, keep, dim=1)
    model.config.pruned_layout = layout(model)
    return model


def layout(model: Any) -> dict[str, list[int]]:
    """Per-layer head counts and FFN widths."""
    layers = encoder_layers(model)
    return {"heads": [int(l.attention.self.num_attention_heads) for l in layers],
            "intermediate": [int(l.intermediate.dense.out_features) for l in layers]}


def shrink_to(model: Any, target: dict[str, list[int]]) -> Any:
    """Give a freshly built full-size model the shapes in ``target`` (a ``pruned_layout``), e.g. before
    loading a pruned checkpoint's weights into it. Which units are dropped does not matter: the weights
    are overwritten by the checkpoint."""
    now = layout(model)
    heads = {l: list(range(t, n)) for l, (n, t) in enumerate(zip(now["heads"], target["heads"]))}
    neurons = {l: list(range(t, n)) for l, (n, t) in enumerate(zip(now["intermediate"], target["intermediate"]))}
    return remove_units(model, Plan(heads, neurons))


def pruned_copy(model: Any, importance: Importance, fraction: float) -> Any:
    """A copy of ``model`` with ``fraction`` of its heads and neurons removed by ``importance``."""
    return remove_units(copy.deepcopy(model), plan(importance, fraction))


def removed_fraction(model: Any, reference: Any) -> dict[str, float]:
    """Share of parameters removed relative to ``reference``: of the encoder and of the whole model."""
    def enc(m: Any) -> int:
        return sum(p.numel() for layer in encoder_layers(m) for p in layer.parameters())

    total = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {"encoder_removed": 1 - enc(model) / enc(reference), "params_removed": 1 - total(model) / total(reference)}


# ---------------------------------------------------------------------------------------------- experiments

def unstructured_sweep(teacher: Any, sparsities: Sequence[float], loaders: Any, recovery: Any):
    """For each sparsity: prune a copy of ``teacher`` globally by magnitude, test it, fine-tune it briefly with
    the zeros held at zero (``recovery``: a :class:`lib.train.TrainConfig`, usually with ``max_steps``), test
    again, and measure its storage. Returns ``(table, models)``: one row per sparsity, the recovered models."""
    import pandas as pd
    from tqdm.auto import tqdm

    from .evaluate import evaluate
    from .train import fit

    rows, models = [], {}
    for s in tqdm(list(sparsities), desc="sparsity", unit="model"):
        m = magnitude_prune(copy.deepcopy(teacher), s)
        before = evaluate(m, loaders.test)
        hist = fit(m, loaders.train, None, recovery)
        make_permanent(m)
        after = evaluate(m, loaders.test)
        rows.append({"sparsity": s, "measured_sparsity": encoder_sparsity(m), "accuracy": before["accuracy"],
                     "f1": before["f1"], "accuracy_recovered": after["accuracy"], "f1_recovered": after["f1"],
                     "recovery_steps": len(hist.step_losses), "test_recovered": after, **storage_mb(m)})
        models[s] = m
    return pd.DataFrame(rows).set_index("sparsity"), models


def compare_importance(teacher: Any, importances: dict[str, Importance], fractions: Sequence[float],
                       loader: Any):
    """Accuracy on ``loader`` (validation) of ``teacher`` with each fraction removed by each importance method,
    *before* any recovery: how well each score picks what can go. One row per (method, fraction)."""
    import pandas as pd

    from .evaluate import evaluate

    rows = []
    for method, imp in importances.items():
        for f in fractions:
            m = pruned_copy(teacher, imp, f)
            rows.append({"importance": method, "fraction": f, **removed_fraction(m, teacher),
                         "val_accuracy": evaluate(m, loader)["accuracy"]})
    return pd.DataFrame(rows)


def structured_sweep(teacher: Any, importance: Importance, fractions: Sequence[float], loaders: Any,
                     recovery: Any, method: str = "") -> tuple[list[dict], dict[float, Any]]:
    """For each fraction: cut a copy of ``teacher`` by ``importance``, test it, recover it with
    :func:`lib.train.fit` (``recovery``: a ``TrainConfig``, best epoch on validation kept), test it again.

    Returns the rows for :func:`structured_table` and the recovered models by fraction.
    """
    from .evaluate import evaluate
    from .train import fit

    rows, models = [], {}
    for f in fractions:
        m = pruned_copy(teacher, importance, f)
        before = evaluate(m, loaders.test)
        hist = fit(m, loaders.train, loaders.val, recovery)
        rows.append({"importance": method, "fraction": f, **removed_fraction(m, teacher),
                     "accuracy": before["accuracy"], "f1": before["f1"], "test_recovered": evaluate(m, loaders.test),
                     "train_samples_per_s": hist.samples_per_s})
        models[f] = m
    return rows, models


def structured_table(rows: Sequence[dict], bench: Any, names: dict[float, str], teacher_accuracy: float):
    """One row per structured fraction: what was removed, accuracy before/after recovery, measured speed."""
    import pandas as pd

    df = pd.DataFrame(rows)
    df["accuracy_recovered"] = [r["test_recovered"]["accuracy"] for r in rows]
    df["f1_recovered"] = [r["test_recovered"]["f1"] for r in rows]
    for col in ("latency_ms_b1_p50", "throughput_b32", "speedup_vs_reference", "latency_ratio_vs_reference"):
        df[col] = [float(bench.loc[names[f], col]) for f in df["fraction"]]
    df["points_vs_teacher"] = 100 * (df["accuracy_recovered"] - teacher_accuracy)
    return df


def pick_for_artifact(table: Any, teacher_accuracy: float, max_points_lost: float = 1.5) -> float:
    """The largest fraction whose recovered accuracy is within ``max_points_lost`` of the teacher; if none is,
    the fraction with the best recovered accuracy."""
    ok = table[100 * (table["accuracy_recovered"] - teacher_accuracy) >= -max_points_lost]
    if len(ok):
        return float(ok["fraction"].max())
    return float(table.loc[table["accuracy_recovered"].idxmax(), "fraction"])


def variants(teacher_test: dict, teacher_size: dict, sparse_bench: Any, sweep: Any, struct_bench: Any, table: Any,
             pruned_models: dict[float, Any], names: dict[float, str], sparse_models: dict[float, Any]) -> list[dict]:
    """The ``variants`` of 02_prune's record: the teacher (reference), every unstructured and structured model
    before (``recovered: false``) and after recovery. Timing exists for the recovered models (each measured
    side by side with the teacher); ``sparsity`` is the share of encoder weights zeroed or removed."""
    from .bench import size_info
    from .results import variant

    out = [variant("teacher", "reference", teacher_test, struct_bench.loc["teacher"], teacher_size, method="none",
                   sparsity=0.0, recovered=False)]
    for s, row in sweep.iterrows():
        size = size_info(sparse_models[s])
        tag = f"unstructured-{round(100 * s)}"
        out.append(variant(tag, "variant", {"accuracy": row["accuracy"], "f1": row["f1"]}, None, size,
                           method="unstructured", sparsity=row["measured_sparsity"], recovered=False))
        out.append(variant(f"{tag}-recovered", "variant", row["test_recovered"],
                           sparse_bench.loc[f"{s:.0%} zeros"], size, method="unstructured",
                           sparsity=row["measured_sparsity"], recovered=True, recovery_steps=row["recovery_steps"],
                           compressed_mb=row["compressed_mb"], sparse_mb=row["sparse_mb"]))
    for _, row in table.iterrows():
        f = float(row["fraction"])
        size = size_info(pruned_models[f])
        tag = f"structured-{round(100 * f)}"
        common = dict(method="structured", sparsity=row["encoder_removed"], importance=row["importance"],
                      params_removed=row["params_removed"])
        out.append(variant(tag, "variant", {"accuracy": row["accuracy"], "f1": row["f1"]}, None, size, recovered=False,
                           **common))
        out.append(variant(f"{tag}-recovered", "variant", row["test_recovered"], struct_bench.loc[names[f]], size,
                           recovered=True, train_samples_per_s=row["train_samples_per_s"], **common))
    return out
