"""Shared fixtures: tiny data and the tiny random BERT (no download, a few MB, fast)."""

from __future__ import annotations

import numpy as np
import pytest

import lib


@pytest.fixture(scope="session")
def tiny():
    """``(model_factory, tokenizer)`` for the tiny random BERT."""
    _, tokenizer = lib.models.load_model(lib.models.TINY, 2)

    def make(num_labels: int = 2, seed: int = 0):
        lib.utils.seed_everything(seed)
        return lib.models.load_model(lib.models.TINY, num_labels)[0]

    return make, tokenizer


def toy_dataset(n: int = 96, seed: int = 0) -> lib.data.TextDataset:
    """A trivially learnable two-class corpus with groups (positive words vs negative words)."""
    rng = np.random.default_rng(seed)
    pos, neg = ["great", "superb", "moving", "brilliant"], ["awful", "boring", "dull", "terrible"]
    texts, labels = [], []
    for i in range(n):
        y = i % 2
        words = rng.choice(pos if y else neg, size=rng.integers(2, 6))
        texts.append("the film was " + " ".join(words))
        labels.append(y)
    return lib.data.TextDataset(
        texts, np.array(labels), np.array([f"g{i // 3}" for i in range(n)]), ["neg", "pos"], "toy"
    )


@pytest.fixture
def toy():
    return toy_dataset()


@pytest.fixture
def outputs(tmp_path, monkeypatch):
    """A fresh outputs folder for one test."""
    monkeypatch.setenv("MUXL_OUTPUTS", str(tmp_path / "outputs"))
    return tmp_path / "outputs"


def loaders_for(tokenizer, n=96, batch_size=16, seed=0):
    """Train/validation/test loaders over three toy corpora."""
    ds = toy_dataset(n, seed)
    splits = lib.data.Splits(ds, toy_dataset(32, seed + 1), toy_dataset(32, seed + 2))
    return lib.data.make_loaders(splits, tokenizer, 16, batch_size, seed)


def train_save_reload(model, tokenizer, loaders, path, epochs=1):
    """Train ``model`` briefly, save it as an artifact at ``path`` and load it back: ``(reloaded, the largest
    |logit difference| between the two on the test loader)``."""
    config = lib.train.TrainConfig(num_epochs=epochs, learning_rate=1e-3, progress=False)
    lib.train.fit(model, loaders.train, loaders.val, config)
    again, _, _ = lib.artifacts.load(lib.artifacts.save(path, model, tokenizer, {"epochs": epochs}))
    return again, lib.evaluate.compare_predictions(model, again, loaders.test)["max_abs_logit_diff"]


def pytest_collection_modifyitems(items):
    """The smoke run (``tests/test_notebooks.py``, by far the longest file) first: under ``make test``'s two
    workers (``--dist loadfile`` hands out files in this order) it starts at once on one worker, and the other
    takes every other file meanwhile."""
    items.sort(key=lambda item: item.path.name != "test_notebooks.py")  # stable: the rest keep their order
