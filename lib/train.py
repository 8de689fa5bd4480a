"""The one training loop every notebook uses (its check against ``transformers.Trainer`` is in
:mod:`lib.baselines`).

``fit`` does AdamW (no weight decay on biases and LayerNorm), linear warm-up then linear decay, gradient
clipping, evaluation on the validation split after every epoch, keep-best (the best epoch's weights are
restored at the end), seeding, and a tqdm progress bar. Extension points for later notebooks:

- ``loss_fn(model, batch) -> loss``: a custom loss (distillation); default is the model's own
  cross-entropy;
- ``optimizer``: pass your own (otherwise AdamW over the parameters with ``requires_grad``, so freezing
  or LoRA just works);
- ``prepare(model, optimizer, loader) -> (model, optimizer, loader)``: wrap them before training
  (DP-SGD: ``lib.privacy.Private``, Opacus' ``make_private_with_epsilon``).

A batch is a dict of tensors with ``labels``; what else it holds is the model's business (token ids, or the
cached hidden states of ``lib.privacy``).

``TrainConfig.ema_decay`` > 0 keeps an exponential moving average of the weights (``torch.optim.swa_utils``):
the averaged weights are what gets evaluated, kept and returned; the raw weights' validation accuracy is
logged next to them (``val_accuracy_raw``).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from transformers import get_linear_schedule_with_warmup

from .bench import PeakMemory
from .data import Encoded, make_loader
from .evaluate import classification_metrics, evaluate, predict_logits
from .models import load_tokenizer, trainable_summary
from .utils import cpu_support, device, progress, seed_everything, setup, to_device

LossFn = Callable[[Any, dict], Any]
Prepare = Callable[[Any, Any, Any], tuple[Any, Any, Any]]


@dataclass
class TrainConfig:
    num_epochs: int = 1  # passes over the training data
    learning_rate: float = 5e-5  # peak learning rate, reached after warm-up
    weight_decay: float = 0.01  # AdamW decoupled weight decay (not on biases / LayerNorm)
    warmup_frac: float = 0.1  # fraction of all steps spent warming up linearly from 0
    max_grad_norm: float = 1.0  # clip the global gradient norm (stabilises early fine-tuning)
    max_steps: int = 0  # stop after this many optimizer steps (0 = run all epochs)
    stop_after_epochs: int = 0  # stop after this many epochs, on the full num_epochs schedule (0 = run all)
    seed: int = 42  # seeds dropout and init of anything created during training
    keep_best: bool = True  # restore the weights of the epoch with the best validation metric
    ema_decay: float = 0.0  # > 0: evaluate and keep an exponential moving average of the weights (0 = off)
    metric: str = "accuracy"  # validation metric used for keep-best
    precision: str = (
        "fp32"  # "bf16": forward under bfloat16 autocast (weights, optimizer, evaluation stay fp32)
    )
    progress: bool = True  # show a tqdm bar


PRECISIONS = ("fp32", "bf16", "auto")


def resolve_precision(precision: str) -> str:
    """The precision a training run uses: ``"auto"`` is bf16 autocast where the CPU has native bf16
    instructions (AVX512-BF16 or AMX: measured 2x the samples/s of fp32 on MiniLM) and fp32 elsewhere
    (emulated bf16 ran at 0.14x fp32's speed on an AVX2-only CPU)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        if device().type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if cpu_support()["bf16"] else "fp32"
    return precision


@dataclass
class History:
    """What happened during :func:`fit`: per-epoch rows, per-step losses, speed and memory."""

    epochs: list[dict] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(
        default_factory=list
    )  # wall time of each optimizer step, data loading included
    best_epoch: int = 0
    train_seconds: float = 0.0  # time in training steps only (evaluation excluded)
    samples: int = 0
    peak_mem_mb: float = 0.0  # peak process RSS during training
    peak_mem_delta_mb: float = 0.0  # ... minus RSS before training started
    precision: str = "fp32"  # what the training steps ran in (see :func:`resolve_precision`)
    val_predictions: list[np.ndarray] = field(default_factory=list)  # predicted validation labels, per epoch
    val_labels: np.ndarray | None = None  # ... and the true ones (dataset order): paired tests at any epoch

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.train_seconds if self.train_seconds else 0.0

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.epochs).set_index("epoch") if self.epochs else pd.DataFrame()

    def brief(self) -> dict[str, Any]:
        """The few numbers a comparison table shows for a trained variant."""
        val = [e["val_accuracy"] for e in self.epochs if "val_accuracy" in e]
        return {
            "best_epoch": self.best_epoch,
            "val_accuracy": max(val) if val else None,
            "train_samples_per_s": self.samples_per_s,
            "train_precision": self.precision,
        }

    def summary(self) -> dict[str, Any]:
        return {
            "best_epoch": self.best_epoch,
            "train_seconds": self.train_seconds,
            "samples": self.samples,
            "precision": self.precision,
            "samples_per_s": self.samples_per_s,
            "peak_mem_mb": self.peak_mem_mb,
            "peak_mem_delta_mb": self.peak_mem_delta_mb,
            "epochs": self.epochs,
        }


def default_loss(model: Any, batch: dict) -> Any:
    """The model's own loss (cross-entropy for a sequence classifier given ``labels``)."""
    return model(**batch).loss


def make_optimizer(model: Any, cfg: TrainConfig):
    """AdamW over trainable parameters; biases and LayerNorm weights get no weight decay.

    ``fused=True``: one kernel per step for all parameters (what ``transformers.Trainer`` uses by default,
    ``adamw_torch_fused``); the per-parameter loop costs ~10% of a MiniLM training step on 2 CPU cores.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters (all have requires_grad=False)")
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.learning_rate, fused=True)


def fit(
    model: Any,
    train_loader: Iterable[dict],
    val_loader: Iterable[dict] | None = None,
    cfg: TrainConfig | None = None,
    loss_fn: LossFn | None = None,
    optimizer: Any = None,
    prepare: Prepare | None = None,
) -> History:
    """Train ``model`` in place; return its :class:`History`. See the module docstring for the hooks."""
    cfg = cfg or TrainConfig()
    dev = device()  # lib.setup(seed, device) chose it: the model and every batch go there
    model.to(dev)
    bf16 = resolve_precision(cfg.precision) == "bf16"
    seed_everything(cfg.seed)
    _reseed_batches(train_loader, cfg.seed)
    loss_fn = loss_fn or default_loss
    optimizer = optimizer or make_optimizer(model, cfg)
    if prepare is not None:
        model, optimizer, train_loader = prepare(model, optimizer, train_loader)
    steps_per_epoch = len(train_loader)  # type: ignore[arg-type]
    total = steps_per_epoch * cfg.num_epochs
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_frac * total), total)
    if cfg.stop_after_epochs:  # the schedule stays the full run's: the first epochs of it, identical
        total = min(total, steps_per_epoch * cfg.stop_after_epochs)
    params = [p for p in model.parameters() if p.requires_grad]
    ema = _make_ema(model, cfg.ema_decay)
    kept = ema.module if ema is not None else model  # the weights that are evaluated, kept and returned

    hist = History(precision="bf16" if bf16 else "fp32")
    best_score, best_state = -np.inf, None
    step = 0
    bar = progress(total=total, desc="train", unit="step", disable=not cfg.progress)
    with PeakMemory() as mem:
        for epoch in range(1, cfg.num_epochs + 1):
            model.train()
            t0, n, losses = time.perf_counter(), 0, []
            tick = t0
            for batch in train_loader:
                batch = to_device(batch, dev)
                with torch.autocast(
                    dev.type, dtype=torch.bfloat16, enabled=bf16
                ):  # backward follows the cast ops
                    loss = loss_fn(model, batch)
                loss.backward()
                if cfg.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.update_parameters(model)
                losses.append(float(loss.detach()))  # waits for the step to finish (also on a GPU)
                now = time.perf_counter()
                hist.step_seconds.append(now - tick)
                tick = now
                n += int(batch["labels"].shape[0])  # varies under Poisson sampling (DP-SGD), may be 0
                step += 1
                bar.update(1)
                bar.set_postfix(
                    loss=f"{np.mean(losses[-20:]):.4f}", epoch=epoch, refresh=False
                )  # redraw at its own pace
                if step >= total:
                    break
            seconds = time.perf_counter() - t0
            hist.train_seconds += seconds
            hist.samples += n
            hist.step_losses += losses
            row = {
                "epoch": epoch,
                "train_loss": float(np.mean(losses)) if losses else float("nan"),
                "seconds": seconds,
                "samples_per_s": n / seconds if seconds else 0.0,
            }
            if val_loader is not None:
                logits, hist.val_labels = predict_logits(kept, val_loader)
                hist.val_predictions.append(logits.argmax(-1))
                val = classification_metrics(hist.val_labels, hist.val_predictions[-1], logits.shape[-1])
                row.update(val_accuracy=val["accuracy"], val_f1=val["f1"])
                if ema is not None:
                    row["val_accuracy_raw"] = evaluate(model, val_loader)["accuracy"]
                score = val[cfg.metric]
                if score > best_score:
                    best_score, hist.best_epoch = score, epoch
                    if cfg.keep_best:
                        best_state = copy.deepcopy(kept.state_dict())
            hist.epochs.append(row)
            if step >= total:
                break
    bar.close()
    hist.peak_mem_mb, hist.peak_mem_delta_mb = mem.peak_mb, mem.delta_mb
    if best_state is not None:
        model.load_state_dict(best_state)
    elif ema is not None:
        model.load_state_dict(ema.module.state_dict())
    model.eval()
    return hist


def _make_ema(model: Any, decay: float) -> Any:
    """An exponential moving average of ``model``'s weights (``None`` when ``decay`` is 0): after every step,
    ``avg = decay * avg + (1 - decay) * weights``. It smooths out the last steps' noise; with ~280 steps per
    epoch, 0.99 averages over roughly the last 100 steps."""
    if not decay:
        return None
    if not 0.0 < decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1) (0 turns it off), got {decay}")
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def _reseed_batches(loader: Any, seed: int) -> None:
    """Restart the loader's shuffling from ``seed``, so every ``fit`` with the same seed sees the same batches
    in the same order, however many runs used the loader before (a notebook's third run = a fresh one)."""
    generator = getattr(getattr(loader, "sampler", None), "generator", None)
    if generator is not None:
        generator.manual_seed(seed)


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    return asdict(cfg)


# ------------------------------------------------------------------------ speed probe


def training_speed(
    factory: Callable[..., Any],
    factory_kwargs: dict[str, Any],
    tokenizer_spec: str,
    features: list[dict],
    batch_size: int,
    steps: int,
    learning_rate: float,
    seed: int,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Build a model with ``factory(**factory_kwargs)`` (e.g. :func:`lib.models.fresh_classifier`, or a
    technique's builder such as ``lib.lora.lora_model``), train it for ``steps`` length-grouped batches of
    ``features``, and report speed, memory and what trains.

    Meant to run in a fresh process (``lib.bench.isolated(lib.train.training_speed, ...)``) so that peak
    memory is this training's own: ``peak_mem_mb`` is the process's peak RSS during training,
    ``peak_mem_delta_mb`` that minus the RSS with the model loaded, before the first step.
    """
    setup(seed)
    net = factory(**factory_kwargs)
    loader = make_loader(
        Encoded.from_features(features), load_tokenizer(tokenizer_spec), batch_size, shuffle=True, seed=seed
    )
    cfg = TrainConfig(
        num_epochs=max(1, -(-steps // len(loader))),
        learning_rate=learning_rate,
        max_steps=steps,
        seed=seed,
        keep_best=False,
        precision=precision,
        progress=False,
    )
    hist = fit(net, loader, None, cfg)
    return {
        "samples_per_s": hist.samples_per_s,
        "seconds_per_step": hist.train_seconds / max(len(hist.step_losses), 1),
        "step_seconds": list(hist.step_seconds),  # each step's time: the noise of a speed ratio (lib.verdict)
        "peak_mem_mb": hist.peak_mem_mb,
        "peak_mem_delta_mb": hist.peak_mem_delta_mb,
        "steps": len(hist.step_losses),
        **trainable_summary(net),
    }
