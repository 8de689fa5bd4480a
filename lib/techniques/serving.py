"""Serving a classifier to many clients at once: the mechanisms of 11_serve, free of any web framework (the
HTTP app around them is :mod:`lib.serve`).

- :class:`MicroBatcher` (the notebook's ``# @save`` mechanism): requests that arrive while the model is busy,
  or within ``max_wait_ms`` of the first one, are run as one batch; each request awaits its own future. The
  queue is bounded: past ``max_queue`` waiting texts a request is refused at once (:class:`Overloaded`), never
  left to wait without bound. The model runs in a worker thread, so the event loop keeps accepting requests;
  one batch at a time (the model has the cores the server was given).
- :class:`Classifier`: texts → labels and probabilities for any saved variant (a torch model or an ONNX
  Runtime predictor), a batch cut into groups of similar length first (:func:`length_groups`): a batch is
  padded to its longest text, and one long review in a batch of short ones makes every row pay for it.
- :class:`ResponseCache`: an LRU cache of answers keyed by the normalised text (``cachetools.LRUCache``), with
  its hit and miss counts.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from typing import Any

import cachetools
import numpy as np
import torch

from ..errors import LabError
from ..predict import as_predictor


class Overloaded(LabError, RuntimeError):
    """The queue is full: the request is refused now (HTTP 429) instead of waiting without bound."""

    def __init__(self, waiting: int, retry_after_s: float):
        super().__init__(
            f"{waiting} texts are waiting, the most this server queues; retry after {retry_after_s:g} s"
        )
        self.waiting, self.retry_after_s = waiting, retry_after_s


# @save
class MicroBatcher:
    """Concurrent ``submit(text)`` calls become one ``run_batch(texts)`` call (in a worker thread): a batch
    starts with the first waiting text, takes whatever else arrives within ``max_wait_ms`` (0: only what is
    already waiting), at most ``max_batch_size`` texts; each caller gets its own answer, in order. A batch
    that raises fails its own requests only. Past ``max_queue`` waiting texts, ``submit`` raises
    ``Overloaded``."""

    def __init__(self, run_batch, max_batch_size=32, max_wait_ms=2.0, max_queue=256, on_batch=None):
        self.run_batch, self.max_batch_size, self.max_wait = run_batch, max_batch_size, max_wait_ms / 1000
        self.queue = asyncio.Queue(maxsize=max_queue)
        self.on_batch = on_batch or (lambda size, seconds: None)  # metrics: the size and time of each batch
        self.batch_seconds = 0.01  # a running estimate of one batch's time: the Retry-After of a refusal

    async def submit(self, text):
        future = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait((text, future))
        except asyncio.QueueFull:
            raise Overloaded(self.queue.qsize(), self.retry_after_s()) from None
        return await future

    def retry_after_s(self):  # the time to serve what is waiting now, at least one second (HTTP says seconds)
        return max(1.0, round(self.queue.qsize() / self.max_batch_size * self.batch_seconds, 1))

    async def next_batch(self):
        batch = [await self.queue.get()]  # wait for the first text as long as it takes
        try:
            async with asyncio.timeout(self.max_wait):
                while len(batch) < self.max_batch_size:
                    batch.append(
                        self.queue.get_nowait() if not self.queue.empty() else await self.queue.get()
                    )
        except TimeoutError:  # max_wait passed: go with what came
            pass
        return batch

    async def run(self):  # the server runs this loop as a task for as long as it serves
        loop = asyncio.get_running_loop()
        while True:
            batch = await self.next_batch()
            start = loop.time()
            try:
                answers = await asyncio.to_thread(self.run_batch, [text for text, _ in batch])
            except Exception as error:  # this batch's callers get the error; the loop goes on
                answers = [error] * len(batch)
            seconds = loop.time() - start
            self.batch_seconds = 0.8 * self.batch_seconds + 0.2 * seconds
            self.on_batch(len(batch), seconds)
            for (_, future), answer in zip(batch, answers, strict=True):
                if future.done():  # the caller went away (its connection closed)
                    continue
                if isinstance(answer, Exception):
                    future.set_exception(answer)
                else:
                    future.set_result(answer)


def length_groups(lengths: Sequence[int], max_padding: float) -> list[list[int]]:
    """Indices of ``lengths`` (token counts) cut into groups of similar length, shortest first: a group grows
    while its padded size (its longest × its count) stays within ``1 + max_padding`` times its real tokens.
    ``max_padding`` < 0: one group, in the given order (no grouping)."""
    if max_padding < 0:
        return [list(range(len(lengths)))] if len(lengths) else []
    groups: list[list[int]] = []
    tokens = 0
    for i in sorted(range(len(lengths)), key=lambda k: lengths[k]):
        if groups and lengths[i] * (len(groups[-1]) + 1) <= (1 + max_padding) * (tokens + lengths[i]):
            groups[-1].append(i)
            tokens += lengths[i]
        else:
            groups.append([i])
            tokens = lengths[i]
    return groups


def pad_rows(encoded: Any, rows: Sequence[int], pad_id: int, side: str = "right") -> dict[str, torch.Tensor]:
    """Rows of an unpadded tokenizer output (lists of token ids per text) as one batch padded to its longest
    row, as int64 tensors: what ``tokenizer.pad`` returns, without tokenizing again (``input_ids`` padded with
    ``pad_id``, every other field with 0, on the tokenizer's ``padding_side``)."""
    longest = max(len(encoded["input_ids"][i]) for i in rows)
    batch = {}
    for key in encoded.keys():
        out = np.full((len(rows), longest), pad_id if key == "input_ids" else 0, dtype=np.int64)
        for r, i in enumerate(rows):
            seq = encoded[key][i]
            if side == "right":
                out[r, : len(seq)] = seq
            else:
                out[r, longest - len(seq) :] = seq
        batch[key] = torch.from_numpy(out)
    return batch


class Classifier:
    """``texts -> [{"label", "probabilities"}]`` for a model or predictor and its tokenizer: the batch
    tokenized once (one call of the tokenizer's Rust code), cut into :func:`length_groups`, each group padded
    to its own longest text (:func:`pad_rows`). ``calls`` counts model calls and ``padded_tokens`` /
    ``real_tokens`` what they cost (the padding share)."""

    def __init__(
        self, model: Any, tokenizer: Any, label_names: Sequence[str], max_length: int, max_padding: float
    ):
        self.predict, self.tokenizer = as_predictor(model), tokenizer
        self.label_names, self.max_length, self.max_padding = list(label_names), max_length, max_padding
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.calls = self.padded_tokens = self.real_tokens = 0

    def __call__(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        texts = list(texts)
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        lengths = [len(ids) for ids in encoded["input_ids"]]
        if len(texts) == 1 or self.max_padding < 0:  # nothing to group
            groups = [list(range(len(texts)))]
        else:
            groups = length_groups(lengths, self.max_padding)
        out: list[dict[str, Any]] = [{}] * len(texts)
        for group in groups:
            batch = pad_rows(encoded, group, self.pad_id, self.tokenizer.padding_side)
            logits = np.asarray(self.predict(batch), dtype=np.float64)
            proba = np.exp(logits - logits.max(axis=-1, keepdims=True))
            proba /= proba.sum(axis=-1, keepdims=True)
            self.calls += 1
            self.padded_tokens += len(group) * max(lengths[i] for i in group)
            self.real_tokens += sum(lengths[i] for i in group)
            for row, i in enumerate(group):
                p = proba[row].tolist()
                out[i] = {
                    "label": self.label_names[max(range(len(p)), key=p.__getitem__)],
                    "probabilities": dict(zip(self.label_names, p, strict=True)),
                }
        return out

    def warm_up(self, max_batch_size: int, lengths: Sequence[int] = (8, 16, 32, 64)) -> int:
        """Run every batch size up to ``max_batch_size`` (powers of two and the maximum) at a few sequence
        lengths once, so that no client pays for a first call (ONNX Runtime prepares each new shape on its
        first run). Returns the number of shapes run."""
        sizes = sorted(
            {*(2**k for k in range(max_batch_size.bit_length()) if 2**k <= max_batch_size), max_batch_size}
        )
        shapes = 0
        for n in sizes:
            for length in sorted({min(x, self.max_length) for x in lengths}):
                enc = self.tokenizer([" ".join(["good"] * length)] * n, truncation=True, max_length=length)
                self.predict(dict(self.tokenizer.pad(enc, return_tensors="pt")))
                shapes += 1
        return shapes


WHITESPACE = re.compile(r"\s+")


def normalise(text: str, lowercase: bool) -> str:
    """The cache key of a text: whitespace collapsed, and lower case for a model that lowercases anyway."""
    key = WHITESPACE.sub(" ", text).strip()
    return key.lower() if lowercase else key


class ResponseCache:
    """An LRU cache of answers (``size`` 0: off) keyed by :func:`normalise`, counting hits and misses."""

    def __init__(self, size: int, lowercase: bool):
        self.cache: cachetools.LRUCache | None = cachetools.LRUCache(size) if size > 0 else None
        self.lowercase, self.hits, self.misses = lowercase, 0, 0

    def get(self, text: str) -> Any:
        if self.cache is None:
            return None
        answer = self.cache.get(normalise(text, self.lowercase))
        self.hits += answer is not None
        self.misses += answer is None
        return answer

    def put(self, text: str, answer: Any) -> None:
        if self.cache is not None:
            self.cache[normalise(text, self.lowercase)] = answer

    @property
    def hit_ratio(self) -> float:
        return self.hits / (self.hits + self.misses) if self.hits + self.misses else 0.0


AnswerFn = Callable[[Sequence[str]], list[dict[str, Any]]]
