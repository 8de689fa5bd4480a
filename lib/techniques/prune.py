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

**Vocabulary trimming** (:func:`trim_vocabulary`) prunes the token-embedding table, most of a small model's
bytes: only the rows of the token ids a training split uses are kept, every other id is read as ``[UNK]``
(:func:`vocabulary_effect` measures how often that happens on new text).

A pruned model records its per-layer shapes in ``config.pruned_layout``; :func:`lib.artifacts.load`
rebuilds those shapes before loading the weights, so it reloads like any other artifact.
"""

from __future__ import annotations

import copy
import tempfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils import prune as torch_prune
from transformers.pytorch_utils import prune_linear_layer

from ..models import encoder_layers, layout

METHODS = ("gradient", "magnitude")


def check_fraction(name: str, value: float) -> float:
    """A pruning fraction must be in [0, 1): 1 would remove everything."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be a fraction in [0, 1) (e.g. 0.5 removes half); got {value!r}")
    return float(value)


def encoder_linears(model: Any) -> list[nn.Linear]:
    return [m for layer in encoder_layers(model) for m in layer.modules() if isinstance(m, nn.Linear)]


# ------------------------------------------------------------------------ unstructured


def magnitude_prune(model: Any, sparsity: float) -> Any:
    """Zero the ``sparsity`` fraction of encoder Linear weights with the smallest |w|, ranked globally.

    The pruning masks stay attached (``weight = weight_orig * weight_mask``), so a recovery fine-tune keeps
    the zeros at zero; call :func:`make_permanent` afterwards. Works in place; returns ``model``.
    """
    check_fraction("sparsity", sparsity)
    targets = [(m, "weight") for m in encoder_linears(model)]
    torch_prune.global_unstructured(
        targets, pruning_method=torch_prune.L1Unstructured, amount=float(sparsity)
    )
    return model


def make_permanent(model: Any) -> Any:
    """Fold the pruning masks into plain weights (zeros stay), so the model saves and runs as a normal one."""
    for m in encoder_linears(model):
        if torch_prune.is_pruned(m):
            torch_prune.remove(m, "weight")
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
    return {
        "dense_mb": len(raw) / 1e6,
        "compressed_mb": len(zlib.compress(raw, 6)) / 1e6,
        "sparse_mb": sparse / 1e6,
    }


# ------------------------------------------------------------------------ structured


@dataclass
class Importance:
    """Per-unit scores (higher = more important): ``heads[l][h]`` and ``neurons[l][j]``, one tensor per layer
    (layers may differ in width: a student or an already pruned model has uneven layers)."""

    method: str
    heads: list[torch.Tensor]
    neurons: list[torch.Tensor]

    def layers(self, idx: Sequence[int]) -> Importance:
        """The scores of the layers ``idx`` only (e.g. the teacher layers a student is built from)."""
        return Importance(self.method, [self.heads[i] for i in idx], [self.neurons[i] for i in idx])


def normalised(imp: Importance) -> Importance:
    """Scores divided by their layer's L2 norm (as Michel et al. do), so a global ranking compares layers
    fairly."""
    heads = [h / h.norm().clamp(min=1e-12) for h in imp.heads]
    neurons = [n / n.norm().clamp(min=1e-12) for n in imp.neurons]
    return Importance(imp.method, heads, neurons)


# @save
def gradient_importance(model: Any, loader: Iterable[dict], max_batches: int = 0) -> Importance:
    """Michel et al. (2019): multiply each head's output and each FFN neuron's activation by a mask of ones; a
    unit's score is |d loss / d mask| summed over batches, a first-order estimate of the loss change if it is
    removed."""
    layers = encoder_layers(model)
    head_masks = [torch.ones(li.attention.self.num_attention_heads, requires_grad=True) for li in layers]
    neuron_masks = [torch.ones(li.intermediate.dense.out_features, requires_grad=True) for li in layers]
    hooks = []
    for layer, hm, nm in zip(layers, head_masks, neuron_masks):
        d = layer.attention.self.attention_head_size  # a head's output is d consecutive features
        hooks.append(
            layer.attention.self.register_forward_hook(
                lambda mod, inp, out, hm=hm, d=d: (out[0] * hm.repeat_interleave(d), *out[1:])
            )
        )
        hooks.append(layer.intermediate.register_forward_hook(lambda mod, inp, out, nm=nm: out * nm))
    model.eval()  # no dropout: score the model as it predicts
    scores = [torch.zeros_like(m) for m in head_masks + neuron_masks]
    try:
        for i, batch in enumerate(loader):
            if max_batches and i >= max_batches:
                break
            grads = torch.autograd.grad(model(**batch).loss, head_masks + neuron_masks)
            scores = [s + g.abs() for s, g in zip(scores, grads)]
    finally:
        for h in hooks:
            h.remove()
    n = len(layers)
    return normalised(Importance("gradient", scores[:n], scores[n:]))


def magnitude_importance(model: Any) -> Importance:
    """A data-free score: the L2 norm of each unit's weights (its rows in, its columns out)."""
    heads, neurons = [], []
    for layer in encoder_layers(model):
        att, d = layer.attention, int(layer.attention.self.attention_head_size)
        rows = sum(
            getattr(att.self, n).weight.detach().pow(2).view(-1, d, att.self.query.in_features).sum((1, 2))
            for n in ("query", "key", "value")
        )
        cols = att.output.dense.weight.detach().pow(2).view(att.output.dense.out_features, -1, d).sum((0, 2))
        heads.append((rows + cols).sqrt())
        neurons.append(
            (
                layer.intermediate.dense.weight.detach().pow(2).sum(1)
                + layer.output.dense.weight.detach().pow(2).sum(0)
            ).sqrt()
        )
    return normalised(Importance("magnitude", heads, neurons))


def unit_importance(
    model: Any, loader: Iterable[dict], method: str = "gradient", max_batches: int = 0
) -> Importance:
    """Scores of every head and FFN neuron by ``method``: ``gradient`` (on ``loader``) or ``magnitude``."""
    if method not in METHODS:
        raise ValueError(f"importance method must be one of {METHODS}, got {method!r}")
    return (
        gradient_importance(model, loader, max_batches)
        if method == "gradient"
        else magnitude_importance(model)
    )


@dataclass
class Plan:
    """Units to remove: ``heads[l]`` and ``neurons[l]`` are index lists per layer."""

    heads: dict[int, list[int]]
    neurons: dict[int, list[int]]


def plan(importance: Importance, fraction: float, min_heads: int = 1, min_neurons: int = 1) -> Plan:
    """Remove the ``fraction`` of heads and the same fraction of FFN neurons with the lowest scores, ranked
    across all layers, keeping at least ``min_heads`` heads and ``min_neurons`` neurons in every layer."""
    check_fraction("fraction", fraction)
    heads = _lowest(importance.heads, round(fraction * sum(len(h) for h in importance.heads)), min_heads)
    neurons = _lowest(
        importance.neurons, round(fraction * sum(len(n) for n in importance.neurons)), min_neurons
    )
    return Plan(heads, neurons)


def _lowest(scores: Sequence[torch.Tensor], k: int, keep_min: int) -> dict[int, list[int]]:
    flat = sorted((float(s), li, j) for li, layer in enumerate(scores) for j, s in enumerate(layer))
    left = {li: len(layer) for li, layer in enumerate(scores)}
    out: dict[int, list[int]] = {li: [] for li in left}
    for _, li, j in flat:
        if k <= 0:
            break
        if left[li] > keep_min:
            out[li].append(j)
            left[li] -= 1
            k -= 1
    return {li: sorted(js) for li, js in out.items()}


# @save
def remove_units(model: Any, to_remove: Plan) -> Any:
    """Cut the planned heads and FFN neurons out of ``model`` (in place): the matrices really shrink. A head
    is d rows of query/key/value and the same d columns of the attention output; a neuron is a row of the
    first FFN matrix and a column of the second."""
    for li, layer in enumerate(encoder_layers(model)):
        att = layer.attention.self
        d, n = att.attention_head_size, att.num_attention_heads
        gone = set(to_remove.heads.get(li, []))
        if gone:
            if not gone <= set(range(n)) or len(gone) >= n:
                raise ValueError(
                    f"layer {li}: cannot remove heads {sorted(gone)} of {n} (at least one must stay)"
                )
            keep = torch.tensor([h * d + i for h in range(n) if h not in gone for i in range(d)])
            att.query, att.key, att.value = (
                prune_linear_layer(getattr(att, x), keep) for x in ("query", "key", "value")
            )
            layer.attention.output.dense = prune_linear_layer(layer.attention.output.dense, keep, dim=1)
            att.num_attention_heads = n - len(gone)
            att.all_head_size = att.num_attention_heads * d
        gone = set(to_remove.neurons.get(li, []))
        if gone:
            width = layer.intermediate.dense.out_features
            if not gone <= set(range(width)) or len(gone) >= width:
                raise ValueError(
                    f"layer {li}: cannot remove {len(gone)} of {width} neurons (at least one must stay)"
                )
            keep = torch.tensor([j for j in range(width) if j not in gone])
            layer.intermediate.dense = prune_linear_layer(layer.intermediate.dense, keep)
            layer.output.dense = prune_linear_layer(layer.output.dense, keep, dim=1)
    model.config.pruned_layout = layout(model)  # lib.artifacts rebuilds these shapes on load
    return model


def pruned_copy(model: Any, importance: Importance, fraction: float) -> Any:
    """A copy of ``model`` with ``fraction`` of its heads and neurons removed by ``importance``."""
    return remove_units(copy.deepcopy(model), plan(importance, fraction))


def removed_fraction(model: Any, reference: Any) -> dict[str, float]:
    """Share of parameters removed relative to ``reference``: of the encoder and of the whole model."""

    def enc(m: Any) -> int:
        return sum(p.numel() for layer in encoder_layers(m) for p in layer.parameters())

    def total(m: Any) -> int:
        return sum(p.numel() for p in m.parameters())

    return {
        "encoder_removed": 1 - enc(model) / enc(reference),
        "params_removed": 1 - total(model) / total(reference),
    }


# ------------------------------------------------------------------------ vocabulary


def used_token_ids(encoded: Iterable[dict], tokenizer: Any) -> set[int]:
    """The token ids that occur in ``encoded`` (tokenized examples: use the **training** split only, so that
    test texts meet the trimmed vocabulary as new texts would), plus the tokenizer's special tokens."""
    used = {int(i) for f in encoded for i in f["input_ids"]}
    return used | {int(i) for i in tokenizer.all_special_ids}


class RemappedEmbedding(nn.Module):
    """A token-embedding table holding only the kept rows: ``remap[old id]`` is the row of a kept token and
    the ``[UNK]`` row for every other one, so the tokenizer and the model's inputs stay as they were."""

    def __init__(self, weight: torch.Tensor, remap: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.register_buffer("remap", remap)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(self.remap[input_ids], self.weight)


# @save
def trim_vocabulary(model: Any, keep: set[int], unk_id: int) -> Any:
    """A copy of ``model`` whose token-embedding table keeps only the rows of the token ids in ``keep``; any
    other id is looked up as ``[UNK]`` (``unk_id``). Texts made only of kept tokens get exactly the same
    vector as before; a word outside the kept vocabulary is read as ``[UNK]``: a real change in behaviour, to
    be measured."""
    if unk_id not in keep:
        raise ValueError(f"the [UNK] id {unk_id} must be kept: every dropped token is mapped to it")
    trimmed = copy.deepcopy(model)
    table = trimmed.get_input_embeddings().weight.detach()
    kept = torch.tensor(sorted(keep), device=table.device)  # on the model's device (a GPU too)
    remap = torch.full(
        (table.shape[0],), int((kept == unk_id).nonzero()[0, 0]), dtype=torch.int32, device=table.device
    )
    remap[kept] = torch.arange(len(kept), dtype=torch.int32, device=table.device)
    trimmed.set_input_embeddings(RemappedEmbedding(table[kept].clone(), remap))
    return trimmed


def vocabulary_effect(encoded: Iterable[dict], keep: set[int]) -> dict[str, float]:
    """How much of a split a trimmed vocabulary changes: the share of its tokens read as ``[UNK]`` and the
    share of its texts that contain at least one."""
    counts = [(len(f["input_ids"]), sum(int(i) not in keep for i in f["input_ids"])) for f in encoded]
    tokens, unk = sum(n for n, _ in counts), sum(m for _, m in counts)
    return {
        "tokens_unk": unk / max(tokens, 1),
        "texts_with_unk": sum(m > 0 for _, m in counts) / max(len(counts), 1),
    }
