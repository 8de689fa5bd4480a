"""Evaluation: predictions of any model or predictor, accuracy / macro-F1 / confusion matrix, agreement."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

from .data import Encoded, make_loader
from .heads import masked_mean
from .models import pooling_of
from .predict import as_predictor
from .utils import device, progress, to_device


def predict_logits(model: Any, loader: Iterable[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Run ``model`` (a torch model or any ``batch -> logits`` predictor) over ``loader``.

    Returns ``(logits, labels)`` as numpy arrays, in dataset order (a loader whose sampler has ``indices``,
    like the length-sorted evaluation loaders of :func:`lib.data.make_loader`, is put back in order).
    """
    call = as_predictor(model)
    logits, labels = [], []
    with torch.inference_mode():
        for batch in progress(loader, desc="predict", unit="batch", leave=False, disable=len(loader) < 20):
            batch = dict(batch)
            labels.append(batch.pop("labels").cpu().numpy())
            logits.append(np.asarray(call(batch), dtype=np.float32))
    logits_, labels_ = in_dataset_order(loader, np.concatenate(logits), np.concatenate(labels))
    return logits_, labels_


def in_dataset_order(loader: Any, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Arrays predicted in ``loader``'s batch order, put back in dataset order when the loader's sampler says
    what that order was (``indices``: the length-sorted evaluation loaders of :func:`lib.data.make_loader`).
    """
    order = getattr(getattr(loader, "sampler", None), "indices", None)
    if order is None or len(order) != len(arrays[0]):
        return arrays
    restored = []
    for a in arrays:
        r = np.empty_like(a)
        r[np.asarray(order)] = a
        restored.append(r)
    return tuple(restored)


def sentence_vectors(model: Any, enc: Encoded, tokenizer: Any, batch_size: int = 64) -> torch.Tensor:
    """The frozen encoder's sentence vector of every example, in dataset order: the model's own pooling
    (``cls``: BERT's pooler; ``mean``: the mean over the tokens), computed once."""
    model.to(device()).eval()
    mean = pooling_of(model) == "mean"
    out = []
    loader = make_loader(enc, tokenizer, batch_size, shuffle=False)  # length-sorted batches
    with torch.inference_mode():
        for batch in progress(loader, desc="sentence vectors"):
            batch = to_device(batch, device())
            hidden = model.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            h = (
                masked_mean(hidden.last_hidden_state, batch["attention_mask"])
                if mean
                else hidden.pooler_output
            )
            out.append(h.float().cpu())
    return torch.from_numpy(in_dataset_order(loader, torch.cat(out).numpy())[0])


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, num_labels: int | None = None
) -> dict[str, Any]:
    """Accuracy, macro-F1 and the confusion matrix (rows = true class, columns = predicted)."""
    labels = list(range(num_labels if num_labels else int(max(y_true.max(), y_pred.max())) + 1))
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1": float(f1_score(y_true, y_pred, average="macro", labels=labels, zero_division=0)),
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "n": int(len(y_true)),
    }


def evaluate(model: Any, loader: Iterable[dict], num_labels: int | None = None) -> dict[str, Any]:
    """Metrics of ``model`` on ``loader`` (see :func:`classification_metrics`)."""
    logits, labels = predict_logits(model, loader)
    return classification_metrics(labels, logits.argmax(-1), num_labels or logits.shape[-1])


def agreement(reference_logits: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """Share of identical predicted labels and the largest |logit difference| against the reference."""
    if reference_logits.shape != logits.shape:
        raise ValueError(f"logits shapes differ: {reference_logits.shape} vs {logits.shape}")
    return {
        "agreement": float(np.mean(reference_logits.argmax(-1) == logits.argmax(-1))),
        "max_abs_logit_diff": float(np.max(np.abs(reference_logits - logits))),
    }


def compare_predictions(a: Any, b: Any, loader: Iterable[dict]) -> dict[str, float]:
    """How closely predictor ``b`` reproduces ``a`` on ``loader``: label agreement and max |Δ logit|."""
    ag = agreement(predict_logits(a, loader)[0], predict_logits(b, loader)[0])
    return {"label_agreement": ag["agreement"], "max_abs_logit_diff": ag["max_abs_logit_diff"]}


def quality_flags(
    name: str,
    accuracy: float,
    majority: float,
    reference: float | None = None,
    reference_name: str = "the TF-IDF reference",
    margin_points: float = 1.0,
) -> list[str]:
    """Warnings for a model that has not learned: no better than always guessing the majority class, or more
    than ``margin_points`` behind a classical reference. Each is also raised as a visible ``UserWarning``."""
    flags = []
    if accuracy <= majority:
        flags.append(
            f"{name} accuracy {accuracy:.4f} does not beat always guessing the majority class "
            f"({majority:.4f}): "
            "it has not learned the task (more epochs or data, or check the learning rate)"
        )
    if reference is not None and accuracy < reference - margin_points / 100:
        flags.append(
            f"{name} accuracy {accuracy:.4f} is {100 * (reference - accuracy):.1f} points behind "
            f"{reference_name} ({reference:.4f}): the transformer does not earn its cost here"
        )
    for flag in flags:
        warnings.warn(flag, UserWarning, stacklevel=2)
    return flags
