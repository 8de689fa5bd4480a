"""Knowledge distillation: a shallower student trained to match the teacher's softened predictions.

- :func:`make_student` builds a BERT with fewer layers from the teacher's config, initialised from the
  teacher's layers (DistilBERT-style: every other layer, plus embeddings and head) or randomly.
- :func:`kd_loss` is Hinton et al.'s loss: ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) *
  CE(s, y)`` (the ``T^2`` keeps the soft term's gradients on the scale of the hard one's as ``T`` changes).
- :class:`DistillLoss` plugs it into :func:`lib.train.fit` (its ``loss_fn`` hook). The teacher's logits over
  the training set are computed once (:func:`teacher_logits`) and looked up by example index, not recomputed
  each epoch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data import Encoded, make_loader
from ..evaluate import predict_logits
from ..utils import seed_everything

INITS = ("teacher", "random")


def check_kd(temperature: float, alpha: float) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature <= 0:
        raise ValueError(
            f"temperature must be a number > 0 (1 = the teacher's own probabilities), got {temperature!r}"
        )
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1] (0 = labels only, 1 = teacher only), got {alpha!r}")


# @save
def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """Hinton et al. (2015): ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``."""
    check_kd(temperature, alpha)
    t = float(temperature)
    soft = F.kl_div(
        F.log_softmax(student_logits / t, dim=-1),
        F.log_softmax(teacher_logits / t, dim=-1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)  # T^2 keeps its gradients on CE's scale
    hard = F.cross_entropy(student_logits, labels)
    return alpha * soft + (1 - alpha) * hard


def layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """Which teacher layer initialises each student layer: evenly spaced from the bottom (6 → 3: 0, 2, 4)."""
    if not 1 <= student_layers <= teacher_layers:
        raise ValueError(
            f"a student needs 1..{teacher_layers} layers (the teacher has {teacher_layers}), "
            f"got {student_layers}"
        )
    return [i * teacher_layers // student_layers for i in range(student_layers)]


def make_student(teacher: Any, num_layers: int, init: str = "teacher", seed: int = 0) -> Any:
    """A BERT classifier like ``teacher`` (same head, vocabulary, width) with ``num_layers`` encoder layers.

    ``init="teacher"``: embeddings, head and the layers of :func:`layer_map` are copied from the teacher
    (DistilBERT's recipe); ``init="random"``: every weight freshly initialised (seeded). A student can then be
    made narrower with structured pruning (``lib.prune``), ranked by the teacher's scores of the layers it
    copies.
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    cfg = copy.deepcopy(teacher.config)
    chosen = layer_map(cfg.num_hidden_layers, num_layers)
    cfg.num_hidden_layers = num_layers
    seed_everything(seed)
    student = type(teacher)(cfg)  # the teacher's class: the mean-pooling head stays a mean-pooling head
    if init == "teacher":
        src = teacher.state_dict()
        state = {}
        for key in student.state_dict():
            if ".encoder.layer." in key:
                prefix, rest = key.split(".encoder.layer.", 1)
                i, tail = rest.split(".", 1)
                key_src = f"{prefix}.encoder.layer.{chosen[int(i)]}.{tail}"
            else:
                key_src = key
            state[key] = src[key_src].clone()
        student.load_state_dict(state, strict=True)
    student.config.distilled_from_layers = chosen if init == "teacher" else None
    return student.float().eval()


def indexed(enc: Encoded) -> Encoded:
    """The same examples, each carrying its position (``idx``) so a loss can look up cached teacher
    outputs."""
    return Encoded.from_features([dict(f, idx=i) for i, f in enumerate(enc.features)])


def teacher_logits(teacher: Any, enc: Encoded, tokenizer: Any, batch_size: int = 64) -> Any:
    """The teacher's logits for every example of ``enc``, in order, as a float tensor: computed once."""
    logits, _ = predict_logits(teacher, make_loader(enc, tokenizer, batch_size, shuffle=False))
    return torch.from_numpy(np.asarray(logits, dtype=np.float32))


@dataclass
class DistillLoss:
    """``loss_fn`` for :func:`lib.train.fit`: ``loss`` (:func:`kd_loss`, or your own with its signature)
    against cached teacher logits, looked up by each example's ``idx``."""

    cached_logits: Any  # (n_examples, n_labels) tensor from :func:`teacher_logits`
    temperature: float = 2.0
    alpha: float = 0.5
    loss: Callable[..., Any] = field(default=kd_loss)

    def __post_init__(self) -> None:
        check_kd(self.temperature, self.alpha)

    def __call__(self, model: Any, batch: dict) -> Any:
        if "idx" not in batch:
            raise KeyError(
                "distillation batches need an 'idx' per example: build the loader from "
                "lib.distill.indexed(...)"
            )
        inputs = {k: v for k, v in batch.items() if k not in ("idx", "labels")}
        logits = model(**inputs).logits
        return self.loss(
            logits, self.cached_logits[batch["idx"]], batch["labels"], self.temperature, self.alpha
        )


def sweep_points(
    temperatures: Sequence[float], alphas: Sequence[float], main: tuple[float, float]
) -> list[tuple]:
    """The (T, alpha) pairs of the sweep besides the main run: one-at-a-time around ``main``, no
    duplicates."""
    t0, a0 = main
    pts = [(t, a0) for t in temperatures if t != t0] + [(t0, a) for a in alphas if a != a0]
    return list(dict.fromkeys(pts))


def soft_targets(cached_logits: Any, temperature: float) -> dict[str, float]:
    """How peaked the teacher's answers are: mean top-class probability at T=1 and at ``temperature``."""
    return {
        "mean_max_prob_t1": float(torch.softmax(cached_logits, -1).max(-1).values.mean()),
        "mean_max_prob_t": float(torch.softmax(cached_logits / temperature, -1).max(-1).values.mean()),
    }


class without_idx:
    """An indexed loader with ``idx`` dropped: label-only runs get the very same batches as distillation
    runs."""

    def __init__(self, loader: Any):
        self.loader = loader
        self.sampler = getattr(loader, "sampler", None)
        self.batch_sampler = getattr(loader, "batch_sampler", None)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict]:
        for batch in self.loader:
            yield {k: v for k, v in batch.items() if k != "idx"}
