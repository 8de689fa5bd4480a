"""Knowledge distillation: a shallower student trained to match the teacher's softened predictions.

- :func:`make_student` builds a BERT with fewer layers from the teacher's config, initialised from the teacher's
  layers (DistilBERT-style: every other layer, plus embeddings and head) or randomly.
- :func:`kd_loss` is Hinton et al.'s loss: ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``
  (the ``T^2`` keeps the soft term's gradients on the scale of the hard one's as ``T`` changes).
- :class:`DistillLoss` plugs it into :func:`lib.train.fit` (its ``loss_fn`` hook). The teacher's logits over the
  training set are computed once (:func:`teacher_logits`) and looked up by example index, not recomputed each epoch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .data import Encoded

INITS = ("teacher", "random")


def check_kd(temperature: float, alpha: float) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature <= 0:
        raise ValueError(f"temperature must be a number > 0 (1 = the teacher's own probabilities), got {temperature!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1] (0 = labels only, 1 = teacher only), got {alpha!r}")


def kd_loss(student_logits: Any, teacher_logits: Any, labels: Any, temperature: float, alpha: float) -> Any:
    """``alpha * T^2 * KL(p_teacher^T || p_student^T) + (1 - alpha) * cross_entropy(student, labels)``."""
    import torch.nn.functional as F

    check_kd(temperature, alpha)
    t = float(temperature)
    soft = F.kl_div(F.log_softmax(student_logits / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1),
                    reduction="batchmean", log_target=True) * (t * t)
    hard = F.cross_entropy(student_logits, labels)
    return alpha * soft + (1 - alpha) * hard


def layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """Which teacher layer initialises each student layer: evenly spaced from the bottom (6 → 3: 0, 2, 4)."""
    if not 1 <= student_layers <= teacher_layers:
        raise ValueError(f"a student needs 1..{teacher_layers} layers (the teacher has {teacher_layers}), "
                         f"got {student_layers}")
    return [i * teacher_layers // student_layers for i in range(student_layers)]


def make_student(teacher: Any, num_layers: int, init: str = "teacher", seed: int = 0, importance: Any = None,
                 narrow: float = 0.0) -> Any:
    """A BERT classifier like ``teacher`` (same head, vocabulary, width) with ``num_layers`` encoder layers.

    ``init="teacher"``: embeddings, head and the layers of :func:`layer_map` are copied from the teacher;
    ``init="random"``: every weight freshly initialised (seeded).
    ``narrow`` > 0 also removes that share of attention heads and FFN neurons (:mod:`lib.prune`), ranked by the
    teacher's ``importance`` scores (:func:`lib.prune.unit_importance`) of the layers the student's come from; a
    random student gets the very same shapes, so the two stay comparable.
    """
    from .prune import Importance, plan, remove_units
    from .utils import seed_everything

    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if narrow and importance is None:
        raise ValueError("narrow > 0 needs the teacher's importance scores (lib.prune.unit_importance)")
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
    if narrow:
        sub = Importance(importance.method, importance.heads[chosen], [importance.neurons[i] for i in chosen])
        remove_units(student, plan(sub, narrow))
    student.config.distilled_from_layers = chosen if init == "teacher" else None
    return student.float().eval()


def indexed(enc: Encoded) -> Encoded:
    """The same examples, each carrying its position (``idx``) so a loss can look up cached teacher outputs."""
    return Encoded.from_features([dict(f, idx=i) for i, f in enumerate(enc.features)])


def teacher_logits(teacher: Any, enc: Encoded, tokenizer: Any, batch_size: int = 64) -> Any:
    """The teacher's logits for every example of ``enc``, in order, as a float tensor: computed once."""
    import torch

    from .data import make_loader
    from .evaluate import predict_logits

    logits, _ = predict_logits(teacher, make_loader(enc, tokenizer, batch_size, shuffle=False))
    return torch.from_numpy(np.asarray(logits, dtype=np.float32))


@dataclass
class DistillLoss:
    """``loss_fn`` for :func:`lib.train.fit`: :func:`kd_loss` against cached teacher logits (batches need ``idx``)."""

    cached_logits: Any  # (n_examples, n_labels) tensor from :func:`teacher_logits`
    temperature: float = 2.0
    alpha: float = 0.5

    def __post_init__(self) -> None:
        check_kd(self.temperature, self.alpha)

    def __call__(self, model: Any, batch: dict) -> Any:
        if "idx" not in batch:
            raise KeyError("distillation batches need an 'idx' per example: build the loader from lib.distill.indexed(...)")
        inputs = {k: v for k, v in batch.items() if k not in ("idx", "labels")}
        logits = model(**inputs).logits
        return kd_loss(logits, self.cached_logits[batch["idx"]], batch["labels"], self.temperature, self.alpha)


def sweep_points(temperatures: Sequence[float], alphas: Sequence[float], main: tuple[float, float]) -> list[tuple]:
    """The (T, alpha) pairs of the sweep besides the main run: one-at-a-time around ``main``, no duplicates."""
    t0, a0 = main
    pts = [(t, a0) for t in temperatures if t != t0] + [(t0, a) for a in alphas if a != a0]
    return list(dict.fromkeys(pts))


# ---------------------------------------------------------------------------------------------- notebook steps

def soft_targets(cached_logits: Any, temperature: float) -> dict[str, float]:
    """How peaked the teacher's answers are: mean top-class probability at T=1 and at ``temperature``."""
    import torch

    return {"mean_max_prob_t1": float(torch.softmax(cached_logits, -1).max(-1).values.mean()),
            "mean_max_prob_t": float(torch.softmax(cached_logits / temperature, -1).max(-1).values.mean())}


@dataclass
class StudentShape:
    """How to build a student from the teacher: layers, and optionally narrower (see :func:`make_student`)."""

    num_layers: int
    narrow: float = 0.0
    importance: Any = None


def train_student(teacher: Any, shape: StudentShape, init: str, temperature: float | None, alpha: float | None,
                  cached_logits: Any, kd_train: Any, loaders: Any, cfg: Any) -> tuple[Any, Any]:
    """Build a student (:func:`make_student`, seeded with ``cfg.seed``) and train it with :func:`lib.train.fit`:
    with :class:`DistillLoss` when ``temperature`` is given, on the labels alone (``temperature`` and ``alpha`` None) otherwise. ``kd_train`` is the
    indexed training loader (:func:`indexed`); both kinds of run see the same batches in the same order."""
    from .train import fit

    student = make_student(teacher, shape.num_layers, init=init, seed=cfg.seed, importance=shape.importance,
                           narrow=shape.narrow)
    if temperature is None:
        plain = _without_idx(kd_train)
        return student, fit(student, plain, loaders.val, cfg)
    loss = DistillLoss(cached_logits, temperature, alpha)
    return student, fit(student, kd_train, loaders.val, cfg, loss_fn=loss)


class _without_idx:
    """The indexed loader with ``idx`` dropped: label-only runs get the very same batches as distillation runs."""

    def __init__(self, loader: Any):
        self.loader = loader
        self.sampler = getattr(loader, "sampler", None)
        self.batch_sampler = getattr(loader, "batch_sampler", None)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            yield {k: v for k, v in batch.items() if k != "idx"}


def train_students(teacher: Any, runs: dict[str, tuple], shape: StudentShape, cached_logits: Any, kd_train: Any,
                   loaders: Any, cfg: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train every run ``name -> (init, temperature or None, alpha or None)``; returns (students, histories)."""
    students, histories = {}, {}
    for name, (init, t, a) in runs.items():
        students[name], histories[name] = train_student(teacher, shape, init, t, a, cached_logits, kd_train,
                                                        loaders, cfg)
    return students, histories


def table(models: dict[str, Any], test_loader: Any, bench: Any, histories: dict[str, Any],
          reference: str = "teacher") -> Any:
    """One row per model: test accuracy/F1, retention (accuracy / reference's), size, parameters, speed."""
    import pandas as pd

    from .bench import size_info
    from .evaluate import evaluate

    rows = []
    for name, model in models.items():
        m = evaluate(model, test_loader)
        h = histories.get(name)
        rows.append({"name": name, "accuracy": m["accuracy"], "f1": m["f1"], **size_info(model),
                     "layers": model.config.num_hidden_layers,
                     "best_epoch": h.best_epoch if h else None,
                     "train_samples_per_s": h.samples_per_s if h else None})
    t = pd.DataFrame(rows).set_index("name").join(bench)
    t["retention"] = t["accuracy"] / t.loc[reference, "accuracy"]
    return t


def sweep(teacher: Any, points: Sequence[tuple[float, float]], shape: StudentShape, cached_logits: Any, kd_train: Any,
          loaders: Any, cfg: Any) -> Any:
    """Train one teacher-initialised student per ``(temperature, alpha)``; validation (best epoch) and test accuracy."""
    import pandas as pd
    from tqdm.auto import tqdm

    from .evaluate import evaluate

    rows = []
    for t, a in tqdm(list(points), desc="sweep"):
        student, hist = train_student(teacher, shape, "teacher", t, a, cached_logits, kd_train, loaders, cfg)
        best = max(hist.epochs, key=lambda r: r.get("val_accuracy", 0))
        test = evaluate(student, loaders.test)
        rows.append({"temperature": t, "alpha": a, "val_accuracy": best.get("val_accuracy"),
                     "accuracy": test["accuracy"], "f1": test["f1"]})
    return pd.DataFrame(rows).set_index(["temperature", "alpha"])


def variants_record(t: Any, sweep_table: Any | None = None, reference: str = "teacher") -> list[dict[str, Any]]:
    """The ``variants`` of 04_distill's record: teacher (reference), the students, then the sweep points
    (accuracy only: they were not timed)."""
    from .results import variant

    out = []
    for name, row in t.iterrows():
        r = row.to_dict()
        out.append(variant(name, "reference" if name == reference else "variant", r, r, r,
                           retention=r["retention"], layers=r["layers"], latency_ms_b1_p90=r["latency_ms_b1_p90"]))
    if sweep_table is not None:
        ref_acc = t.loc[reference, "accuracy"]
        for (temp, a), row in sweep_table.iterrows():
            r = row.to_dict()
            out.append(variant(f"student-kd-T{temp:g}-a{a:g}", "variant", r, temperature=temp, alpha=a,
                               val_accuracy=r["val_accuracy"], retention=r["accuracy"] / ref_acc, sweep=True))
    return out
