"""Differential privacy: DP-SGD fine-tuning with Opacus, and a membership-inference audit of what a model
leaks.

**DP-SGD** (Abadi et al., 2016) changes one thing in a training step: each example's gradient is clipped to
norm ``C`` (``max_grad_norm``) *before* the batch is summed, and Gaussian noise of standard deviation ``σ·C``
is added to the sum. No single example can then move the model by more than the noise hides; batches are drawn
by Poisson sampling (each example joins each step with probability ``q``, so batch sizes vary and may be
empty), which is what the accountant's analysis assumes. Opacus does all of it: per-example gradients
(``GradSampleModule`` hooks), the clipping and noise (``DPOptimizer``), the sampling (``DPDataLoader``) and
the accounting (RDP or PRV: the ``ε`` spent after so many steps at ``q`` and ``σ``, for a chosen ``δ``).
:class:`Private` plugs it into ``lib.train.fit``'s ``prepare`` hook, so a private run is the same training
loop as every other notebook's.

**What is trained.** Per-example gradients cost memory and time per trained weight, and the noise grows with
the number of trained dimensions, so private fine-tuning is kept parameter-efficient: the **top ``k`` encoder
layers (``k = 0``: none) and the head** (optionally with a hidden layer) train, everything below stays as
pretrained (:class:`TopLayers`). The frozen bottom then computes the same thing at every step, so it runs
**once** (:func:`frozen_features`) and training only runs the top: far cheaper per step than LoRA, whose
adapters sit in every layer and need a backward pass through all of them. (Tramèr & Boneh, 2021: private
learning on good pretrained features beats private end-to-end training at small ε.) The trained top is made of
the very modules of the full model, so the full model is the trained model: a test checks that it predicts,
from text, exactly what the top predicts from the cached features.

**The audit** (:func:`loss_attack`): an attacker who sees an example's loss guesses "member of the training
set" when it is low (Yeom et al., 2018). Its ROC curve over training members and held-out non-members, the
AUC, and the true- positive rate at 1% and 0.1% false positives (Carlini et al., 2022: what matters is
confident guesses) measure the leak. ``(ε, δ)``-DP bounds every such attack: ``TPR ≤ min(e^ε·FPR + δ, 1 −
e^−ε·(1 − δ − FPR))`` (:func:`tpr_bound`, Kairouz et al., 2015).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from opacus import GradSampleModule, PrivacyEngine
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from sklearn.metrics import roc_auc_score, roc_curve
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler
from torch.utils.data._utils.collate import default_collate
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import SequenceClassifierOutput

from ..data import Encoded, make_loader
from ..errors import ParamError
from ..evaluate import in_dataset_order
from ..heads import masked_mean, set_hidden_head
from ..models import encoder_layers, pooling_of
from ..train import History, TrainConfig, fit
from ..utils import device, progress, to_device

# Opacus records each layer's output gradient with a full backward hook; torch warns that such a hook fires
# "with respect to module outputs" when the layer's input needs no gradient, which is exactly the case of the
# first trained layer on frozen features. It is what Opacus needs (the per-example gradient is input x output
# gradient), not a fault.
warnings.filterwarnings(
    "ignore",
    message="Full backward hook is firing when gradients are computed with respect to module outputs",
    category=UserWarning,
)

ACCOUNTANTS = ("prv", "rdp")
FPR_LEVELS = (0.01, 0.001)  # the low false-positive rates an audit reports the true-positive rate at


# ------------------------------------------------------------------------ checks


def resolve_delta(delta: float, n_train: int) -> float:
    """δ for ``n_train`` training examples: ``0`` means ``1/n_train``; a larger δ is refused (a mechanism may
    publish one whole training example with probability δ·n, so δ above 1/n promises nothing)."""
    if n_train < 1:
        raise ParamError(
            "no training examples: DP training needs data (check max_train_samples and the split)"
        )
    limit = 1.0 / n_train
    if delta == 0:
        return limit
    if not 0 < delta <= limit:
        raise ParamError(
            f"delta = {delta:g} must be in (0, 1/n_train] = (0, {limit:.3g}] for n_train = {n_train}: "
            "with a larger δ the guarantee allows publishing a training example outright. Use 0 (= "
            "1/n_train) "
            "or a smaller value, e.g. 1.0e-5"
        )
    return float(delta)


def check_trainable(model: nn.Module) -> list[str]:
    """Why Opacus cannot train ``model``'s trainable parameters privately, one line per module (empty: it
    can).

    Opacus' own validator (BatchNorm mixes examples, ...) plus two traps of Hugging Face models: a trainable
    position or token-type embedding (BERT builds their ids with batch dimension 1, so their per-example
    gradients come out wrong or fail) and a trainable module Opacus has no per-example gradient rule for."""
    problems = [f"{e}" for e in ModuleValidator.validate(model, strict=False)]
    supported = tuple(GradSampleModule.GRAD_SAMPLERS)
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        if isinstance(module, nn.Embedding) and any(k in name for k in ("position", "token_type")):
            problems.append(
                f"{name} ({type(module).__name__}) is trainable: BERT passes it ids with batch dimension 1, "
                "which breaks per-example gradients. Freeze it (requires_grad=False) or pass expanded ids"
            )
        elif not isinstance(module, supported):
            problems.append(
                f"{name} ({type(module).__name__}) has no per-example gradient rule in Opacus: freeze it, "
                "or replace it with supported layers (opacus.validators.ModuleValidator.fix)"
            )
    return problems


def require_trainable(model: nn.Module) -> None:
    """Raise a :class:`ParamError` naming every module Opacus cannot train privately, and what to do."""
    problems = check_trainable(model)
    if problems:
        raise ParamError("this model cannot be trained with DP-SGD as it is:\n  - " + "\n  - ".join(problems))


# ------------------------------------------------------------------------ what trains


class TopLayers(nn.Module):
    """The last ``k`` encoder layers and the head of a BERT classifier, applied to the hidden states of layer
    ``L − k`` (``k = 0``: the head alone, on the frozen encoder's output). ``head_hidden > 0`` first replaces
    the model's linear classifier by a head with one hidden layer of that width (seeded with ``seed``). The
    modules are the model's own: training this trains the model, whose every other weight is frozen here.
    ``.model`` is the whole model (kept outside the module tree, so Opacus and the optimizer see only the
    top)."""

    def __init__(self, model: nn.Module, k: int, head_hidden: int = 0, seed: int = 0):
        super().__init__()
        layers = encoder_layers(model)
        if not 0 <= k <= len(layers):
            raise ParamError(
                f"trainable_layers = {k}: the model has {len(layers)} encoder layers, so use 0 to "
                f"{len(layers)}"
            )
        if head_hidden:
            set_hidden_head(model, head_hidden, seed)
        self.config, self.k = model.config, k
        self.__dict__["model"] = model  # not a submodule
        self.layers = nn.ModuleList(layers[len(layers) - k :])
        self.pooling = pooling_of(model)
        self.pooler = model.bert.pooler if self.pooling == "cls" else None
        self.dropout, self.classifier = model.dropout, model.classifier
        for p in model.parameters():
            p.requires_grad_(False)
        for p in self.parameters():
            p.requires_grad_(True)

    def forward(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None
    ) -> SequenceClassifierOutput:
        empty = hidden.shape[0] == 0
        if (
            empty
        ):  # Poisson sampling drew nobody: one blank stand-in, weighted 0, keeps BERT's reshapes and Opacus'
            # hooks working; it adds a zero gradient, and the step adds only noise, as DP-SGD prescribes
            hidden, attention_mask = hidden.new_zeros(1, 1, hidden.shape[-1]), attention_mask.new_ones(1, 1)
        mask = create_bidirectional_mask(
            config=self.config, inputs_embeds=hidden, attention_mask=attention_mask
        )
        for layer in self.layers:
            hidden = layer(hidden, mask)
        pooled = masked_mean(hidden, attention_mask) if self.pooler is None else self.pooler(hidden)
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            loss = logits.sum() * 0.0 if empty else nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits[:0] if empty else logits)


@dataclass
class Features(Dataset):
    """Hidden states of the frozen layers for every example (padded to the longest), with masks and labels."""

    hidden: torch.Tensor  # (n, tokens, dim)
    attention_mask: torch.Tensor  # (n, tokens)
    labels: torch.Tensor  # (n,)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"hidden": self.hidden[i], "attention_mask": self.attention_mask[i], "labels": self.labels[i]}

    def subset(self, idx: Sequence[int] | np.ndarray) -> Features:
        idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        return Features(self.hidden[idx], self.attention_mask[idx], self.labels[idx])


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack examples and cut the padding no example of the batch needs."""
    batch = default_collate(items)
    width = max(int(batch["attention_mask"].sum(1).max()), 1)
    return {
        "hidden": batch["hidden"][:, :width],
        "attention_mask": batch["attention_mask"][:, :width],
        "labels": batch["labels"],
    }


def frozen_features(
    model: nn.Module, enc: Encoded, tokenizer: Any, k: int, batch_size: int = 64, desc: str = "features"
) -> Features:
    """Run the frozen part of ``model`` (embeddings and the first ``L − k`` encoder layers) once over
    ``enc``."""
    layers = encoder_layers(model)
    bottom = layers[: len(layers) - k]
    bert, dev = model.bert, device()
    model.to(dev).eval()
    loader = make_loader(enc, tokenizer, batch_size, shuffle=False)
    width = max(enc.lengths)
    hidden, masks, labels = [], [], []
    with torch.inference_mode():
        for batch in progress(loader, desc=desc, unit="batch", disable=len(loader) < 20):
            batch = to_device(batch, dev)
            h = bert.embeddings(input_ids=batch["input_ids"], token_type_ids=batch.get("token_type_ids"))
            mask = create_bidirectional_mask(
                config=model.config, inputs_embeds=h, attention_mask=batch["attention_mask"]
            )
            for layer in bottom:
                h = layer(h, mask)
            pad = width - h.shape[1]
            hidden.append(nn.functional.pad(h, (0, 0, 0, pad)).cpu())
            masks.append(nn.functional.pad(batch["attention_mask"], (0, pad)).cpu())
            labels.append(batch["labels"].cpu())
    h, m, y = in_dataset_order(
        loader, torch.cat(hidden).numpy(), torch.cat(masks).numpy(), torch.cat(labels).numpy()
    )
    return Features(torch.from_numpy(h), torch.from_numpy(m), torch.from_numpy(y))


def feature_loader(features: Features, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    """Batches of cached features: random (training: a seeded ``RandomSampler``, which ``fit`` reseeds) or in
    order."""
    sampler = RandomSampler(features, generator=torch.Generator().manual_seed(seed)) if shuffle else None
    return DataLoader(features, batch_size=batch_size, sampler=sampler, collate_fn=collate)


# ------------------------------------------------------------------------ DP-SGD


class Private:
    """DP-SGD for ``lib.train.fit(..., prepare=Private(...))``: Opacus' ``make_private_with_epsilon`` picks
    the noise multiplier σ that spends ``target_epsilon`` at ``delta`` over ``epochs`` epochs of
    Poisson-sampled batches (expected size: the loader's ``batch_size``), and wraps model, optimizer and
    loader. After training, :meth:`epsilon` is the ε the accountant says was spent; :meth:`close` removes
    Opacus' hooks from the model.

    Give ``fit`` a ``TrainConfig`` with ``max_grad_norm=0``: the DP optimizer clips each example's gradient
    itself; clipping the noisy sum again would only shrink the update."""

    def __init__(
        self,
        target_epsilon: float,
        delta: float,
        epochs: int,
        max_grad_norm: float,
        accountant: str = "prv",
        seed: int = 0,
    ):
        if not target_epsilon > 0:
            raise ParamError(
                f"target epsilon must be > 0, got {target_epsilon!r} (ε = 0 would allow no learning at all)"
            )
        if not max_grad_norm > 0:
            raise ParamError(
                f"max_grad_norm must be > 0, got {max_grad_norm!r} (each example's gradient is clipped to it)"
            )
        if accountant not in ACCOUNTANTS:
            raise ParamError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
        self.target_epsilon, self.delta, self.epochs = float(target_epsilon), float(delta), int(epochs)
        self.max_grad_norm, self.accountant, self.seed = float(max_grad_norm), accountant, seed
        self.engine = PrivacyEngine(accountant=accountant)
        self.module: Any = None
        self.noise_multiplier = self.sample_rate = float("nan")

    def __call__(self, model: nn.Module, optimizer: Any, loader: DataLoader) -> tuple[Any, Any, Any]:
        require_trainable(model)
        noise = torch.Generator(device=device()).manual_seed(
            self.seed
        )  # reproducible noise (secure_mode off)
        self.module, optimizer, loader = self.engine.make_private_with_epsilon(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            target_epsilon=self.target_epsilon,
            target_delta=self.delta,
            epochs=self.epochs,
            max_grad_norm=self.max_grad_norm,
            poisson_sampling=True,
            noise_generator=noise,
            grad_sample_mode="hooks",
        )
        self.noise_multiplier, self.sample_rate = float(optimizer.noise_multiplier), 1.0 / len(loader)
        _empty_batches_like(loader)
        return self.module, optimizer, loader

    def epsilon(self) -> float:
        """The ε spent so far at ``delta``, by the accountant."""
        return float(self.engine.get_epsilon(self.delta))

    def summary(self) -> dict[str, Any]:
        return {
            "target_epsilon": self.target_epsilon,
            "epsilon": self.epsilon(),
            "delta": self.delta,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "max_grad_norm": self.max_grad_norm,
            "accountant": self.accountant,
            "steps": int(sum(n for _, _, n in self.engine.accountant.history)),
        }

    def close(self) -> None:
        if self.module is not None:
            self.module._close()  # remove the hooks and the per-example gradients from the (shared) modules


def _empty_batches_like(loader: DataLoader) -> None:
    """Poisson sampling can draw nobody. Opacus' collate then returns an empty batch shaped like the first
    non-empty one, or, when the very *first* batch is empty, a bare list the model cannot take; tell it the
    shape up front."""
    empty = getattr(loader, "collate_fn", None)
    if getattr(empty, "first_batch", "absent") is None and len(loader.dataset):
        empty.first_batch = (empty.wrapped_collator_fn or default_collate)([loader.dataset[0]])


def fit_top_layers(
    model: nn.Module,
    k: int,
    train_set: Features,
    val_set: Features | None,
    cfg: TrainConfig,
    batch_size: int,
    private: Private | None = None,
    head_hidden: int = 0,
) -> tuple[TopLayers, History]:
    """Train the top ``k`` layers and the head of ``model`` (:class:`TopLayers`) on cached features with
    ``lib.train.fit``: batches of ``batch_size`` drawn at random, or, with ``private``, Poisson-sampled DP-SGD
    batches of that expected size. Returns the trained :class:`TopLayers` (whose modules are ``model``'s) and
    the history."""
    top = TopLayers(model, k, head_hidden, seed=cfg.seed)
    loader = feature_loader(train_set, batch_size, shuffle=True, seed=cfg.seed)
    val_loader = feature_loader(val_set, 256, shuffle=False) if val_set is not None else None
    try:
        hist = fit(top, loader, val_loader, cfg, prepare=private)
    finally:
        if private is not None:
            private.close()
    return top.eval(), hist


# @save
def private_gradient(
    per_example: dict[str, torch.Tensor],
    max_grad_norm: float,
    noise_multiplier: float,
    expected_batch_size: int,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """DP-SGD's gradient from per-example gradients ``{name: (B, *shape)}``: clip each example's whole
    gradient to L2 norm ``max_grad_norm``, sum over the examples, add Gaussian noise of standard deviation
    ``noise_multiplier * max_grad_norm``, divide by the *expected* batch size (under Poisson sampling the
    actual size would itself tell something about who was sampled)."""
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in per_example.values()], dim=1).norm(
        dim=1
    )  # one per example
    factor = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)  # 1 for a short gradient, C / |g| for a long one
    out = {}
    for name, g in per_example.items():
        summed = torch.einsum("i,i...->...", factor, g)  # no example contributes more than C to the sum
        noise = torch.normal(
            0.0, noise_multiplier * max_grad_norm, summed.shape, generator=generator, device=summed.device
        )
        out[name] = (summed + noise) / expected_batch_size
    return out


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def opacus_gradients(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    max_grad_norm: float,
    noise_multiplier: float,
    expected_batch_size: int,
    seed: int,
) -> tuple[dict, dict, dict]:
    """One forward and backward pass over ``batch`` through Opacus (the model in train mode), and three views
    of it: the per-example gradients ``{name: (B, *shape)}``, the ordinary gradient of the batch's mean loss,
    and the gradient Opacus' ``DPOptimizer`` hands to the optimizer (each example clipped to
    ``max_grad_norm``, summed, Gaussian noise from a generator seeded with ``seed``, divided by
    ``expected_batch_size``). One pass, so dropout is the same in all three."""
    gsm = GradSampleModule(model, loss_reduction="mean")
    params = [p for _, p in _trainable(model)]
    opt = DPOptimizer(
        torch.optim.SGD(params, lr=0.0),
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=expected_batch_size,
        generator=torch.Generator(device=device()).manual_seed(seed),
    )
    try:
        gsm.train()
        opt.zero_grad(set_to_none=True)
        gsm(**to_device(batch, device())).loss.backward()
        per_example = {n: p.grad_sample.detach().clone() for n, p in _trainable(model)}
        ordinary = {n: p.grad.detach().clone() for n, p in _trainable(model)}
        opt.pre_step()  # clip, accumulate, add noise, scale: everything but the parameter update
        private = {n: p.grad.detach().clone() for n, p in _trainable(model)}
    finally:
        gsm._close()
        model.zero_grad(set_to_none=True)
    return per_example, ordinary, private


# ------------------------------------------------------------------------ the audit


def confident_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per example as ``log1p(Σ_{j≠y} exp(z_j − z_y))`` in float64: equal to the usual formula,
    but the loss of a confident answer keeps its size (float32 rounds every loss below ~6e-8, i.e. any margin
    above ~17, to exactly 0, and then memorised members tie with confident non-members at the attack's low-FPR
    end)."""
    z = logits.double()
    others = (z - z.gather(1, labels[:, None])).scatter(1, labels[:, None], float("-inf"))
    return torch.log1p(others.exp().sum(1))


def per_example_losses(model: nn.Module, features: Features, batch_size: int = 256) -> np.ndarray:
    """Cross-entropy of every example (dataset order, float64), the model in eval mode: what a loss attack
    sees."""
    model.to(device()).eval()
    out = []
    with torch.inference_mode():
        for batch in feature_loader(features, batch_size, shuffle=False):
            batch = to_device(batch, device())
            labels = batch.pop("labels")
            logits = model(**batch).logits
            out.append(confident_cross_entropy(logits, labels).cpu().numpy())
    return np.concatenate(out) if out else np.empty(0)


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, level: float) -> float:
    """The best true-positive rate an ROC curve reaches without exceeding false-positive rate ``level``."""
    ok = fpr <= level + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def loss_attack(
    member_losses: np.ndarray, nonmember_losses: np.ndarray, levels: Sequence[float] = FPR_LEVELS
) -> dict[str, Any]:
    """The loss-threshold membership attack: "member" when the loss is below a threshold, every threshold
    tried. Returns the ROC curve (``fpr``, ``tpr``), ``auc`` and ``tpr_at`` each false-positive ``level``."""
    m, n = np.asarray(member_losses, dtype=float), np.asarray(nonmember_losses, dtype=float)
    if len(m) == 0 or len(n) == 0:
        raise ValueError(f"an audit needs members and non-members, got {len(m)} and {len(n)}")
    y = np.r_[np.ones(len(m)), np.zeros(len(n))]
    score = -np.r_[m, n]  # a lower loss is more "member"
    fpr, tpr, _ = roc_curve(y, score)
    return {
        "fpr": fpr,
        "tpr": tpr,
        "auc": float(roc_auc_score(y, score)),
        "tpr_at": {lv: tpr_at_fpr(fpr, tpr, lv) for lv in levels},
        "members": len(m),
        "nonmembers": len(n),
    }


def tpr_bound(fpr: np.ndarray | float, epsilon: float, delta: float) -> np.ndarray:
    """The most any attack's true-positive rate can be at false-positive rate ``fpr`` against an (ε, δ)-DP
    model."""
    fpr = np.asarray(fpr, dtype=float)
    if epsilon is None or not math.isfinite(epsilon):
        return np.ones_like(fpr)
    return np.clip(
        np.minimum(math.exp(epsilon) * fpr + delta, 1 - math.exp(-epsilon) * (1 - delta - fpr)), 0, 1
    )


def audit_sample(n_members: int, n_nonmembers: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of ``size`` members and ``size`` non-members (0: as many as the smaller side has), drawn with
    ``seed``: equal numbers, so neither side's share moves the AUC's meaning."""
    size = min(n_members, n_nonmembers) if size == 0 else min(size, n_members, n_nonmembers)
    rng = np.random.default_rng(seed)
    return (
        np.sort(rng.choice(n_members, size, replace=False)),
        np.sort(rng.choice(n_nonmembers, size, replace=False)),
    )
