"""Explanations of a text classifier, and how far to trust them.

Two explainers, each giving one score per *word* of a text (its contribution toward a class):

- :func:`lime_scores`: LIME (Ribeiro et al., 2016) through ``lime.lime_text.LimeTextExplainer``:
  ``num_samples`` copies of the text with random words replaced by the tokenizer's unknown token, the model's
  probabilities on them, and a weighted linear model fitted to those; its coefficients are the scores.
  Model-agnostic: works on an ONNX int8 model.
- :class:`IntegratedGradients`: Integrated Gradients (Sundararajan et al., 2017) through captum's
  ``LayerIntegratedGradients`` on the word-embedding layer: the gradient of the class probability, averaged
  along the straight path from a baseline (``[PAD]`` tokens between ``[CLS]`` and ``[SEP]``) to the text,
  times the difference; word pieces are summed into words (:func:`merge_pieces`). Needs a torch model.
  :func:`integrated_gradients` is the same computation written out (06_explain's ``# @save`` cell), which a
  test checks against captum's.

And the measures of trust:

- :func:`faithfulness`: ERASER's comprehensiveness (how much the predicted class's probability drops when the
  top-k% words are deleted) and sufficiency (how much it drops when *only* they are kept), averaged over
  several k (AOPC, DeYoung et al., 2020). A faithful explanation has high comprehensiveness and low
  sufficiency; a random ranking of the words is the floor to beat.
- :func:`agreement`: Spearman rank correlation and top-k overlap between two explanations of the same text.

Words are maximal runs of word characters (``\\w+``), the same split LIME makes: both explainers score the
same list.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from captum.attr import LayerIntegratedGradients
from lime.lime_text import LimeTextExplainer
from scipy.stats import spearmanr

from ..errors import LabError
from ..utils import device, to_device

WORD = re.compile(r"\w+")
KS = (0.01, 0.05, 0.1, 0.2, 0.5)  # ERASER's shares of words removed or kept (AOPC bins)


@dataclass(frozen=True)
class Words:
    """A text and its words: ``spans[i]`` is word ``i``'s (start, end) character range."""

    text: str
    spans: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, text: str) -> Words:
        return cls(text, tuple(m.span() for m in WORD.finditer(text)))

    @property
    def words(self) -> list[str]:
        return [self.text[a:b] for a, b in self.spans]

    def __len__(self) -> int:
        return len(self.spans)

    def without(self, drop: Iterable[int]) -> str:
        """The text with words ``drop`` deleted (punctuation and the other words kept)."""
        gone = set(drop)
        out, at = [], 0
        for i, (a, b) in enumerate(self.spans):
            if i in gone:
                out.append(self.text[at:a])
                at = b
        out.append(self.text[at:])
        return re.sub(r"\s{2,}", " ", "".join(out)).strip()

    def only(self, keep: Iterable[int]) -> str:
        """Just the words ``keep``, in their order, separated by spaces."""
        return " ".join(self.text[a:b] for i, (a, b) in enumerate(self.spans) if i in set(keep))


class ExplainError(LabError, ValueError):
    """An explanation cannot be made as asked; the message says why and what to do."""


# ------------------------------------------------------------------------ LIME


def lime_explainer(class_names: Sequence[str], mask: str, seed: int) -> LimeTextExplainer:
    """LIME for text, masking a word by replacing it with ``mask`` (the tokenizer's unknown token: the model
    sees a token it knows means "something here") instead of deleting it (``bow=False``: each occurrence is
    its own feature)."""
    return LimeTextExplainer(
        class_names=list(class_names), bow=False, mask_string=mask, split_expression=r"\W+", random_state=seed
    )


def lime_scores(
    explainer: LimeTextExplainer,
    proba: Callable[[list[str]], np.ndarray],
    text: str,
    label: int,
    num_samples: int,
) -> tuple[np.ndarray, Any]:
    """One score per word of ``text`` toward ``label`` (LIME's coefficients) and LIME's explanation object."""
    words = Words.of(text)
    if not len(words):
        raise ExplainError(f"no words to explain in {text!r}")
    exp = explainer.explain_instance(
        text, proba, labels=(label,), num_features=len(words), num_samples=num_samples
    )
    lime_words = list(exp.domain_mapper.indexed_string.inverse_vocab)
    if lime_words != words.words:  # both must score the same list of words
        raise ExplainError(
            f"LIME split {text!r} into other words than \\w+ does: {lime_words} vs {words.words}"
        )
    scores = np.zeros(len(words))
    for i, weight in exp.as_map()[label]:
        scores[i] = weight
    return scores, exp


# ------------------------------------------------------------------------ Integrated Gradients


def merge_pieces(
    offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]], token_scores: Sequence[float]
) -> np.ndarray:
    """Word scores from token scores: each token's score goes to the word whose character span holds the
    token's start (word pieces of one word are summed; special tokens, offset (0, 0), and punctuation belong
    to no word). Words past the truncation get no token: score 0."""
    starts = np.array([a for a, _ in spans])
    out = np.zeros(len(spans))
    for (a, b), score in zip(offsets, token_scores):
        if b <= a:  # [CLS], [SEP], padding
            continue
        i = int(np.searchsorted(starts, a, side="right")) - 1
        if i >= 0 and spans[i][0] <= a < spans[i][1]:
            out[i] += float(score)
    return out


class IntegratedGradients:
    """Integrated Gradients of a torch classifier's class probability, attributed to its word embeddings."""

    def __init__(self, model: Any, tokenizer: Any, max_length: int, n_steps: int = 32):
        self.model, self.tokenizer, self.max_length, self.n_steps = (
            model.eval(),
            tokenizer,
            max_length,
            n_steps,
        )
        self.device = device()
        self.model.to(self.device)

        def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return torch.softmax(
                self.model(input_ids=input_ids, attention_mask=attention_mask).logits, dim=-1
            )

        self.lig = LayerIntegratedGradients(forward, self.model.get_input_embeddings())

    def inputs(self, text: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
        """The text's token ids, its baseline (every token but the special ones replaced by ``[PAD]``), its
        attention mask and each token's character span."""
        enc = self.tokenizer(
            text,
            truncation=True,
            max_length=self.max_length,
            return_offsets_mapping=True,
            return_tensors="pt",
        )
        offsets = [tuple(o) for o in enc.pop("offset_mapping")[0].tolist()]
        enc = to_device(dict(enc), self.device)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        special = torch.tensor(
            self.tokenizer.get_special_tokens_mask(ids[0].tolist(), already_has_special_tokens=True),
            device=ids.device,
            dtype=torch.bool,
        )
        baseline = torch.where(special, ids, torch.full_like(ids, self.tokenizer.pad_token_id))
        return ids, baseline, mask, offsets

    def token_scores(
        self,
        ids: torch.Tensor,
        baseline: torch.Tensor,
        mask: torch.Tensor,
        label: int,
        method: str = "gausslegendre",
    ) -> tuple[torch.Tensor, float]:
        """captum's attributions, one per token (summed over the embedding), and the completeness gap."""
        attributions, delta = self.lig.attribute(
            ids,
            baselines=baseline,
            target=label,
            additional_forward_args=(mask,),
            n_steps=self.n_steps,
            method=method,
            internal_batch_size=self.n_steps,
            return_convergence_delta=True,
        )
        return attributions.sum(dim=-1)[0].detach(), float(delta.abs().max())

    def __call__(self, text: str, label: int) -> tuple[np.ndarray, float]:
        """One score per word toward ``label``, and the completeness gap: |sum of attributions - (p(text) -
        p(baseline))|, which IG's theory makes 0 as the steps grow (a large gap means too few steps)."""
        ids, baseline, mask, offsets = self.inputs(text)
        scores, gap = self.token_scores(ids, baseline, mask, label)
        return merge_pieces(offsets, Words.of(text).spans, scores.cpu().numpy()), gap


# @save
def integrated_gradients(
    model: Any,
    input_ids: torch.Tensor,
    baseline_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    target: int,
    steps: int,
) -> torch.Tensor:
    """Integrated Gradients (Sundararajan et al., 2017) of p(target), on the word embeddings: for each token,
    (x - x') times the gradient averaged along the straight path from the baseline x' to the text x (a
    midpoint Riemann sum of ``steps`` points), summed over the embedding dimensions."""
    embed = model.get_input_embeddings()
    x, x0 = embed(input_ids).detach(), embed(baseline_ids).detach()  # (1, tokens, dim): the text, the blank
    alphas = (torch.arange(steps, dtype=x.dtype, device=x.device) + 0.5) / steps  # the steps' midpoints
    path = (x0 + alphas.view(-1, 1, 1) * (x - x0)).requires_grad_(True)  # (steps, tokens, dim)
    logits = model(inputs_embeds=path, attention_mask=attention_mask.expand(steps, -1)).logits
    (grads,) = torch.autograd.grad(torch.softmax(logits, dim=-1)[:, target].sum(), path)
    return ((x - x0)[0] * grads.mean(dim=0)).sum(dim=-1)  # one score per token


# ------------------------------------------------------------------------ trust


def random_scores(n_words: int, rng: np.random.Generator) -> np.ndarray:
    """The floor every explainer must beat: a random ranking of the words."""
    return rng.random(n_words)


def top_words(scores: np.ndarray, k: float) -> list[int]:
    """The ``ceil(k * n)`` highest-scoring words (at least one; ties by position)."""
    n = max(1, int(np.ceil(k * len(scores))))
    return list(np.argsort(-np.asarray(scores), kind="stable")[:n])


# @save
def faithfulness(
    proba: Callable[[list[str]], np.ndarray],
    items: Sequence[tuple[Words, np.ndarray, int]],
    ks: Sequence[float] = KS,
) -> pd.DataFrame:
    """ERASER comprehensiveness and sufficiency of each explanation ``(words, scores, label)``, per k and
    averaged over ``ks`` (AOPC), computed with one batched call to ``proba``. Columns: ``comprehensiveness``,
    ``sufficiency`` (AOPC), ``p_full`` and the per-k values."""
    texts: list[str] = []
    for words, scores, _ in items:
        texts.append(words.text)
        for k in ks:
            top = top_words(scores, k)
            texts += [words.without(top), words.only(top)]
    p = proba(texts)
    rows, at = [], 0
    for _, _, label in items:
        full = p[at, label]
        row: dict[str, float] = {"p_full": float(full)}
        for j, k in enumerate(ks):
            row[f"comp@{k:g}"] = float(full - p[at + 1 + 2 * j, label])
            row[f"suff@{k:g}"] = float(full - p[at + 2 + 2 * j, label])
        rows.append(row)
        at += 1 + 2 * len(ks)
    frame = pd.DataFrame(rows)
    frame.insert(0, "comprehensiveness", frame[[f"comp@{k:g}" for k in ks]].mean(axis=1))
    frame.insert(1, "sufficiency", frame[[f"suff@{k:g}" for k in ks]].mean(axis=1))
    return frame


def agreement(a: np.ndarray, b: np.ndarray, k: float = 0.2) -> dict[str, float]:
    """How alike two explanations of one text are: Spearman correlation of the word scores (nan for fewer than
    3 words or a constant explanation) and the share of the top-k% words they have in common."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    rho = float(spearmanr(a, b).statistic) if len(a) >= 3 and a.std() > 0 and b.std() > 0 else float("nan")
    ta, tb = set(top_words(a, k)), set(top_words(b, k))
    return {"spearman": rho, "top_overlap": len(ta & tb) / len(ta)}


def toward(scores: np.ndarray, label: int) -> np.ndarray:
    """Scores toward class 1 of a binary classifier, from scores toward ``label``."""
    return np.asarray(scores) if label == 1 else -np.asarray(scores)


def global_words(items: Iterable[tuple[Words, np.ndarray]], min_count: int = 3) -> pd.DataFrame:
    """Mean score per (lower-cased) word over many explanations (scores toward one class), each explanation
    divided by its largest |score| first (every text and method weighs the same, whatever its scale), for
    words seen at least ``min_count`` times; sorted from most toward that class to most against."""
    total: dict[str, list[float]] = {}
    for words, scores in items:
        scores = np.asarray(scores, dtype=float)
        scores = scores / (np.abs(scores).max() or 1.0)
        for w, s in zip(words.words, scores):
            total.setdefault(w.lower(), []).append(float(s))
    rows = [
        {"word": w, "mean_score": float(np.mean(v)), "count": len(v)}
        for w, v in total.items()
        if len(v) >= min_count
    ]
    if not rows:
        return pd.DataFrame(columns=["mean_score", "count"])
    return pd.DataFrame(rows).set_index("word").sort_values("mean_score", ascending=False)


def pick_examples(probs: np.ndarray, labels: np.ndarray, per_role: int = 1) -> dict[str, int]:
    """Test examples worth looking at: the most confident correct and wrong predictions, the least confident
    (closest to a coin flip) correct and wrong ones. Keys name the role (``confident-correct-1``, ...)."""
    pred, conf = probs.argmax(-1), probs.max(-1)
    right = pred == labels
    picks: dict[str, int] = {}
    for role, mask, order in (
        ("confident-correct", right, -conf),
        ("confident-wrong", ~right, -conf),
        ("uncertain-correct", right, conf),
        ("uncertain-wrong", ~right, conf),
    ):
        idx = [i for i in np.argsort(order, kind="stable") if mask[i] and int(i) not in picks.values()][
            :per_role
        ]
        for j, i in enumerate(idx, 1):
            picks[f"{role}-{j}"] = int(i)
    return picks


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """``fn(*args, **kwargs)`` and its wall time in seconds."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def summarize_faithfulness(per_text: dict[tuple[str, str], pd.DataFrame]) -> pd.DataFrame:
    """One row per (model, method): mean comprehensiveness and sufficiency over the texts, their standard
    errors, and how many texts."""
    rows = {}
    for key, frame in per_text.items():
        n = len(frame)
        rows[key] = {
            "comprehensiveness": frame["comprehensiveness"].mean(),
            "comprehensiveness_se": frame["comprehensiveness"].std(ddof=1) / np.sqrt(n) if n > 1 else np.nan,
            "sufficiency": frame["sufficiency"].mean(),
            "sufficiency_se": frame["sufficiency"].std(ddof=1) / np.sqrt(n) if n > 1 else np.nan,
            "texts": n,
        }
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index = pd.MultiIndex.from_tuples(out.index, names=["model", "method"])
    return out
