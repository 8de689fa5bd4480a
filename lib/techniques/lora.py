"""LoRA (Hu et al., 2021) with ``peft``: the adapters' wiring, and what merging them does.

LoRA freezes a pretrained Linear layer's weight ``W`` and learns a low-rank update: ``y = W x + b + (alpha /
r) · B A x`` with ``A`` (r × in, random at the start) and ``B`` (out × r, zero at the start, so training
starts from the pretrained model). Only ``A``, ``B`` and the new classification head train and are stored per
task. :class:`LoRALinear` writes such a layer out (01_lora_finetune checks it against peft's);
:func:`merge_lora` folds the update into ``W``, so a merged model has the base model's shapes and speed.
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, TaskType, get_peft_model

from ..models import fresh_classifier


def add_lora(
    model: Any,
    r: int,
    alpha: float,
    dropout: float,
    target_modules: Sequence[str],
    modules_to_save: Sequence[str] = (),
) -> Any:
    """Wrap ``model`` (a sequence classifier) with LoRA adapters; returns the ``peft`` model.

    ``target_modules`` are name suffixes of Linear layers (BERT: ``query``, ``key``, ``value``,
    ``attention.output.dense``, ``intermediate.dense``, ``output.dense``). The classifier head is always
    trained; ``modules_to_save`` adds more fully-trained modules (e.g. ``pooler.dense``).
    """
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [t for t in target_modules if t.rsplit(".", 1)[-1] not in names]
    if missing:
        raise ValueError(
            f"LoRA target module(s) {missing} not found in {type(model).__name__}; "
            "BERT's Linear layers are query, key, value, dense"
        )
    cfg = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        modules_to_save=list(modules_to_save) or None,
    )
    with warnings.catch_warnings():  # peft 0.21 calls a transformers-v5 method deprecated for v6: not ours
        warnings.filterwarnings(
            "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        return get_peft_model(model, cfg)


def lora_model(
    spec: str,
    num_labels: int,
    r: int,
    alpha_scale: float,
    dropout: float,
    target_modules: Sequence[str],
    seed: int,
    label_names: list[str] | None = None,
    pooling: str = "cls",
) -> Any:
    """A freshly loaded pretrained base (:func:`lib.models.fresh_classifier`) with rank-``r`` LoRA adapters,
    ``alpha = alpha_scale * r`` (the same update scale at every rank).

    Seeded first, so every call starts from the same classifier-head initialisation and the same adapter ``A``
    matrices for the same rank: runs that differ in rank or learning rate differ only in that.
    """
    base = fresh_classifier(spec, num_labels, label_names, pooling, seed=seed)
    return add_lora(base, r=r, alpha=alpha_scale * r, dropout=dropout, target_modules=target_modules)


# @save
class LoRALinear(torch.nn.Module):
    """LoRA (Hu et al., 2021) around a frozen Linear layer ``base``: ``y = W x + b + (alpha / r) · B (A x)``,
    with ``A`` (r × in) random and ``B`` (out × r) zero at the start, so that it starts as the base layer."""

    def __init__(self, base: torch.nn.Linear, r: int, alpha: float):
        super().__init__()
        self.base = base.requires_grad_(False)  # W and b stay as pretrained
        self.scale = alpha / r
        self.A = torch.nn.Parameter(torch.empty(r, base.in_features))  # down to r numbers
        self.B = torch.nn.Parameter(torch.zeros(base.out_features, r))  # back up; zero: no change at first
        torch.nn.init.kaiming_uniform_(self.A, a=5**0.5)  # A starts as torch.nn.Linear's weights do

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * (x @ self.A.T) @ self.B.T  # two thin products: r numbers between


# @save
def merge_lora(peft_model: Any) -> Any:
    """A plain copy of ``peft_model`` with every LoRA update folded into its weights: ``W <- W + (alpha / r) ·
    B A``."""
    model = copy.deepcopy(peft_model)
    for module in model.modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:  # a peft LoRA Linear
            A = module.lora_A["default"].weight  # (r, in): projects the input down to r numbers
            B = module.lora_B["default"].weight  # (out, r): and back up to the layer's outputs
            scale = module.scaling["default"]  # alpha / r
            with torch.no_grad():
                module.base_layer.weight += scale * (B @ A)  # same shape as W: no extra work at inference
    return model.unload().eval()  # drop the adapters, keep the updated base layers and the trained head


def adapter_mb(peft_model: Any) -> float:
    """What the adapter (and trained head) of ``peft_model`` costs on disk (MB, 10^6 bytes), via a temporary
    save."""
    with tempfile.TemporaryDirectory() as tmp:
        peft_model.save_pretrained(tmp)
        return (Path(tmp) / "adapter_model.safetensors").stat().st_size / 1e6
