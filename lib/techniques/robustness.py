"""Adversarial attacks on a text classifier, built offline on their published definitions (TextAttack's
TextFooler and DeepWordBug recipes fetch embeddings and language models from a hub at run time).

Both attacks share one search (:func:`greedy_attack`, the ``# @save`` mechanism of 09_robustness): rank a
text's words by how much the true class's probability drops when the word is deleted (DeepWordBug's scoring,
Gao et al. 2018), then, most important first, replace each word by whichever of its substitutes lowers that
probability most, until the label flips or the budget of changed words is spent (TextAttack's greedy search
with word importance ranking, Morris et al. 2020). Where the model is a torch model and queries are what
costs, :class:`GradientRank` ranks the words by one backward pass per text instead (TextAttack's gradient
ranking). The attacks differ in the substitutes:

- **character level** (:class:`CharEdits`): DeepWordBug's four edits of one word — swap two adjacent letters,
  substitute, delete or insert a letter — at seeded random positions;
- **word level** (:class:`Neighbours`): the nearest whole-word rows of a pretrained embedding table (cosine),
  filtered by a sentiment lexicon (VADER, Hutto & Gilbert 2014, shipped by the ``vaderSentiment`` package) so
  a word is never replaced by one of the opposite polarity, nor a neutral word by a strongly polar one.

Stop words (scikit-learn's list, which holds "not", "no", "never") are never changed: a negation swapped
away would change the true label, not fool the model. Substitutes are a pure function of the word and the
seed, so the same text is attacked the same way on every model.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from ..errors import LabError
from ..utils import to_device

WORD = re.compile(r"([A-Za-z]+)")  # re.split with a group keeps the text between words: "".join() restores it
LETTERS = "abcdefghijklmnopqrstuvwxyz"
Proba = Callable[[Sequence[str]], np.ndarray]  # texts -> class probabilities (lib.predict.TextProba)
Rank = Callable[
    [list[list[str]], np.ndarray], list[dict[int, float]]
]  # (pieces, labels) -> {position: score}


def pieces(text: str) -> list[str]:
    """``text`` cut into separators (even positions) and words (odd positions); ``"".join`` gives it back."""
    return WORD.split(text)


def attackable(word: str) -> bool:
    """A word the attacks may change: two letters or more and not a stop word."""
    return len(word) >= 2 and word.lower() not in ENGLISH_STOP_WORDS


def replaced(parts: Sequence[str], position: int, word: str) -> str:
    """The text of ``parts`` with the word at ``position`` replaced (``""`` deletes it)."""
    return "".join(word if i == position else p for i, p in enumerate(parts))


# @save
def greedy_attack(
    texts: Sequence[str],
    labels: Sequence[int],
    proba: Proba,
    substitutes: Callable[[str], list[str]],
    max_share: float,
    max_words: int,
    rank: Rank | None = None,
) -> pd.DataFrame:
    """Attack every text at once: rank its words by how much p(true label) drops when the word is deleted
    (or by ``rank``'s scores: one query per text), then, most important first, swap each word for the
    substitute that lowers p(true label) most, until the label flips or ``max_share`` of the words (at most
    ``max_words``, at least 1) are changed. Texts the model gets wrong are not attacked. One batched
    ``proba`` call per step for all texts still being attacked."""
    labels = np.asarray(labels)
    parts = [pieces(t) for t in texts]
    slots = [[i for i in range(1, len(p), 2) if attackable(p[i])] for p in parts]
    first = proba(texts)
    p_true, queries = first[np.arange(len(texts)), labels], np.ones(len(texts), dtype=int)
    correct = first.argmax(-1) == labels
    right = [k for k in range(len(texts)) if correct[k]]
    # 1 · importance of each word: the drop of p(true label) when it is deleted, for all texts in one call
    if rank is None:
        cut = [(k, i) for k in right for i in slots[k]]
        deleted = proba([replaced(parts[k], i, "") for k, i in cut]) if cut else first[:0]
        score: dict[int, dict[int, float]] = {k: {} for k in right}
        for (k, i), p in zip(cut, deleted):
            score[k][i] = p_true[k] - p[labels[k]]
    else:  # ... or a score per word from one call per text (a gradient: GradientRank)
        score = dict(zip(right, rank([parts[k] for k in right], labels[right]))) if right else {}
    queries += np.where(correct, [len(s) for s in slots] if rank is None else 1, 0)
    order = {k: sorted(slots[k], key=lambda i: -score[k].get(i, 0.0)) for k in right}
    # 2 · greedy substitution, most important word first
    words_total = np.array([(len(p) - 1) // 2 for p in parts])
    budget = np.minimum(max_words, np.maximum(1, (max_share * words_total).astype(int)))
    changed, flipped = np.zeros(len(texts), dtype=int), np.zeros(len(texts), dtype=bool)
    active, step = [k for k in right if order[k]], 0
    while active:
        jobs = [(k, order[k][step], w) for k in active for w in substitutes(parts[k][order[k][step]])]
        probs = proba([replaced(parts[k], i, w) for k, i, w in jobs]) if jobs else first[:0]
        best: dict[int, tuple[float, str, bool]] = {}
        for (k, _, w), p in zip(jobs, probs):
            queries[k] += 1
            if p[labels[k]] < best.get(k, (p_true[k],))[0]:
                best[k] = (p[labels[k]], w, p.argmax() != labels[k])
        for k, (p, w, flips) in best.items():
            parts[k][order[k][step]], p_true[k], flipped[k], changed[k] = w, p, flips, changed[k] + 1
        step += 1
        active = [k for k in active if not flipped[k] and changed[k] < budget[k] and step < len(order[k])]
    return pd.DataFrame(
        {
            "text": list(texts),
            "adversarial": ["".join(p) for p in parts],
            "label": labels,
            "clean_correct": correct,
            "success": flipped,
            "queries": queries,
            "words_changed": changed,
            "words_total": words_total,
            "p_true_after": p_true,
        }
    )


def attack_summary(attacked: pd.DataFrame) -> dict[str, float]:
    """Per attack on one model: clean accuracy, accuracy under attack, success rate (over the texts it got
    right), queries per attacked text, the most words one text had changed and the share of words changed by a
    successful attack."""
    right = attacked[attacked["clean_correct"]]
    won = right[right["success"]]
    return {
        "texts": len(attacked),
        "clean_accuracy": float(attacked["clean_correct"].mean()),
        "robust_accuracy": float((attacked["clean_correct"] & ~attacked["success"]).mean()),
        "attack_success_rate": float(won.shape[0] / right.shape[0]) if len(right) else float("nan"),
        "queries_per_text": float(right["queries"].mean()) if len(right) else float("nan"),
        "most_words_changed": int(attacked["words_changed"].max()) if len(attacked) else 0,
        "words_changed_share": float((won["words_changed"] / won["words_total"]).mean())
        if len(won)
        else float("nan"),
    }


class GradientRank:
    """Word importance from one forward and backward pass per text instead of one query per word: the
    gradient of the loss at the true label with respect to the word embeddings, averaged over each word's
    tokens, its L1 norm the word's score (TextAttack's ``gradient`` word-importance ranking, Morris et al.
    2020). White-box: a torch model only. Words cut off by ``max_length`` get no score (ranked last). The
    model's weights get no gradient and its train/eval mode is restored."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, max_length: int, batch_size: int = 64):
        self.model, self.tokenizer, self.max_length, self.batch_size = (
            model,
            tokenizer,
            max_length,
            batch_size,
        )

    def __call__(self, parts: Sequence[Sequence[str]], labels: np.ndarray) -> list[dict[int, float]]:
        texts, out = ["".join(p) for p in parts], []
        mode, dev = self.model.training, next(self.model.parameters()).device
        leaf: list[torch.Tensor] = []

        def capture(module: Any, inputs: Any, output: torch.Tensor) -> torch.Tensor:
            leaf.append(output.detach().requires_grad_(True))  # the embeddings, as a leaf to differentiate by
            return leaf[-1]

        hook = self.model.get_input_embeddings().register_forward_hook(capture)
        self.model.eval()
        try:
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    texts[start : start + self.batch_size],
                    truncation=True,
                    max_length=self.max_length,
                    padding=True,
                    return_offsets_mapping=True,
                    return_tensors="pt",
                )
                offsets = batch.pop("offset_mapping").numpy()
                leaf.clear()
                logits = self.model(**to_device(dict(batch), dev)).logits
                target = torch.as_tensor(np.asarray(labels[start : start + self.batch_size]), device=dev)
                loss = torch.nn.functional.cross_entropy(logits.float(), target, reduction="sum")
                (grads,) = torch.autograd.grad(loss, leaf[0])
                grads = grads.float().cpu().numpy()
                for row, p in enumerate(parts[start : start + self.batch_size]):
                    out.append(word_gradients(p, offsets[row], grads[row]))
        finally:
            hook.remove()
            self.model.train(mode)
        return out


def word_gradients(parts: Sequence[str], offsets: np.ndarray, grads: np.ndarray) -> dict[int, float]:
    """Each word's score from its tokens' gradients: the L1 norm of their mean (``offsets``: each token's
    character span, ``(0, 0)`` for special and padding tokens)."""
    starts = np.cumsum([0] + [len(p) for p in parts])
    real = offsets[:, 1] > offsets[:, 0]
    owner = np.searchsorted(starts, offsets[:, 0], side="right") - 1  # the piece each token starts in
    return {
        int(i): float(np.abs(grads[real & (owner == i)].mean(axis=0)).sum())
        for i in np.unique(owner[real])
        if i % 2 == 1
    }


class Memo:
    """``proba`` with every text's answer remembered: the two attacks of one model rank the same words by the
    same deletions, and a text asked twice is computed once (``computed`` counts the texts the model saw)."""

    def __init__(self, proba: Proba):
        self.proba, self.known, self.computed = proba, {}, 0

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        new = list(dict.fromkeys(t for t in texts if t not in self.known))
        if new:
            self.known.update(zip(new, self.proba(new)))
            self.computed += len(new)
        return np.array([self.known[t] for t in texts]).reshape(len(texts), -1)


# ------------------------------------------------------------------------ substitutes


class CharEdits:
    """DeepWordBug's edits of one word (Gao et al. 2018): swap two adjacent letters, substitute one, delete
    one, insert one; each at a position drawn from a generator seeded by the word and ``seed``: the same
    word gets the same candidates on every model."""

    def __init__(self, seed: int):
        self.seed = seed

    def __call__(self, word: str) -> list[str]:
        rng = np.random.default_rng([self.seed, zlib.crc32(word.encode())])
        n, out = len(word), []
        if n >= 2:
            i = int(rng.integers(n - 1))
            out.append(word[:i] + word[i + 1] + word[i] + word[i + 2 :])  # swap
        i = int(rng.integers(n))
        letter = rng.choice([c for c in LETTERS if c != word[i].lower()])
        out.append(word[:i] + letter + word[i + 1 :])  # substitute
        if n >= 3:
            i = int(rng.integers(n))
            out.append(word[:i] + word[i + 1 :])  # delete
        i = int(rng.integers(n + 1))
        out.append(word[:i] + rng.choice(list(LETTERS)) + word[i:])  # insert
        return [w for w in dict.fromkeys(out) if w != word]


def vader_lexicon() -> dict[str, float]:
    """VADER's sentiment lexicon (word -> mean valence, -4 to +4), read from the installed ``vaderSentiment``
    package (no import of the package needed)."""
    try:
        text = resources.files("vaderSentiment").joinpath("vader_lexicon.txt").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise LabError(
            f"the VADER lexicon is missing ({e}): `pip install vaderSentiment` (make install does it)"
        ) from None
    out = {}
    for line in text.splitlines():
        cells = line.split("\t")
        if len(cells) >= 2 and cells[0].isalpha():
            out[cells[0]] = float(cells[1])
    return out


class Neighbours:
    """Word-level substitutes: the ``k`` nearest whole-word rows (cosine) of an embedding table with
    similarity ≥ ``min_similarity``, less any word of the opposite polarity in ``lexicon`` and, for a word the
    lexicon calls neutral, any word with |valence| ≥ ``neutral_limit``. Capitalisation is kept."""

    def __init__(
        self,
        table: torch.Tensor,
        tokenizer: Any,
        lexicon: dict[str, float],
        k: int,
        min_similarity: float,
        neutral_limit: float = 1.0,
    ):
        vocab = tokenizer.get_vocab()
        self.words = sorted(w for w in vocab if w.isalpha() and w.islower() and attackable(w))
        rows = table.detach().float().cpu()[[vocab[w] for w in self.words]]
        self.vectors = torch.nn.functional.normalize(rows, dim=-1)
        self.index = {w: i for i, w in enumerate(self.words)}
        self.lexicon, self.k, self.min_similarity, self.neutral_limit = (
            lexicon,
            k,
            min_similarity,
            neutral_limit,
        )
        self._cached = lru_cache(maxsize=None)(self._lookup)

    def __call__(self, word: str) -> list[str]:
        found = self._cached(word.lower())
        return [w.capitalize() for w in found] if word[:1].isupper() else list(found)

    def _lookup(self, word: str) -> tuple[str, ...]:
        if word not in self.index:
            return ()
        sims = self.vectors @ self.vectors[self.index[word]]
        top = torch.topk(sims, min(len(self.words), 4 * self.k + 1))
        valence = self.lexicon.get(word, 0.0)
        out = []
        for s, j in zip(top.values.tolist(), top.indices.tolist()):
            other = self.words[j]
            v = self.lexicon.get(other, 0.0)
            if other == word or s < self.min_similarity or valence * v < 0:
                continue
            if valence == 0 and abs(v) >= self.neutral_limit:
                continue
            out.append(other)
            if len(out) == self.k:
                break
        return tuple(out)


# ------------------------------------------------------------------------ transfer and adversarial data


def transfer(crafted: pd.DataFrame, proba: Proba) -> dict[str, float]:
    """Replay the successful adversarial texts crafted on another model: this model's accuracy on their
    originals and on the adversarial texts, the very same strings for every model."""
    won = crafted[crafted["success"]]
    if won.empty:
        return {
            "transfer_texts": 0,
            "transfer_clean_accuracy": float("nan"),
            "transfer_accuracy": float("nan"),
        }
    labels = won["label"].to_numpy()
    clean = proba(list(won["text"])).argmax(-1) == labels
    adversarial = proba(list(won["adversarial"])).argmax(-1) == labels
    return {
        "transfer_texts": len(won),
        "transfer_clean_accuracy": float(clean.mean()),
        "transfer_accuracy": float(adversarial.mean()),
    }


def robustness_row(char: Mapping[str, float], word: Mapping[str, float], either: float) -> dict[str, float]:
    """One variant's robustness figures for the record from each attack's :func:`attack_summary`, and
    ``robust_accuracy`` (``either``): the share of texts that are right and survive *both* attacks."""
    return {
        "robust_accuracy": float(either),
        "robust_accuracy_char": float(char["robust_accuracy"]),
        "robust_accuracy_word": float(word["robust_accuracy"]),
        "attack_success_rate": float(char["attack_success_rate"]),
        "attack_success_rate_word": float(word["attack_success_rate"]),
        "queries_per_text": float(char["queries_per_text"]),
        "words_changed_share": float(char["words_changed_share"]),
    }


def survived_both(char: pd.DataFrame, word: pd.DataFrame) -> float:
    """The share of texts a model gets right and neither attack breaks (both attacks on the same texts)."""
    if list(char["text"]) != list(word["text"]):
        raise ValueError("the two attacks ran on different texts: attack the same texts with both")
    return float((char["clean_correct"] & ~char["success"] & ~word["success"]).mean())
