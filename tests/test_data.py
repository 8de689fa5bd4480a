"""Data: the built-in corpus, CSV input with every bad case, grouped deterministic splits, loaders."""

from __future__ import annotations

import numpy as np
import pytest

import lib
from lib.errors import DataError, OfflineError
from tests.conftest import toy_dataset


@pytest.fixture(scope="module")
def rt():
    return lib.data.load_dataset("rotten_tomatoes")


def test_rotten_tomatoes(rt):
    assert rt.label_names == ["rotten", "fresh"]
    assert 12000 < len(rt) < 12808  # fresh+rotten snippets minus exact duplicates
    assert len(set(rt.texts)) == len(rt)
    assert set(np.unique(rt.labels)) == {0, 1}
    assert 0.5 < rt.labels.mean() < 0.65  # fresh is the majority
    assert len(np.unique(rt.groups)) > 400


def test_split_is_deterministic_and_grouped(rt):
    a = lib.data.split(rt, 0.1, 0.2, seed=42)
    b = lib.data.split(rt, 0.1, 0.2, seed=42)
    c = lib.data.split(rt, 0.1, 0.2, seed=7)
    assert a.test.texts == b.test.texts and a.train.texts == b.train.texts
    assert a.test.texts != c.test.texts
    groups = [set(part.groups) for _, part in a.items()]
    assert not (groups[0] & groups[1]) and not (groups[0] & groups[2]) and not (groups[1] & groups[2])
    assert sum(len(p) for _, p in a.items()) == len(rt)
    assert 0.12 < len(a.test) / len(rt) < 0.28


def test_caps_subsample_deterministically(rt):
    a = lib.data.split(rt, 0.1, 0.2, 42, max_train_samples=100, max_eval_samples=50)
    b = lib.data.split(rt, 0.1, 0.2, 42, max_train_samples=100, max_eval_samples=50)
    assert (len(a.train), len(a.val), len(a.test)) == (100, 50, 50)
    assert a.train.texts == b.train.texts


def test_summary_and_majority(rt):
    s = lib.data.split(rt, 0.1, 0.2, 42)
    table = lib.data.summary(s)
    assert list(table.index) == ["train", "val", "test"]
    assert table["rows"].sum() == len(rt)
    assert 0.5 < lib.data.majority_accuracy(s) < 0.7


def write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return f"csv:{path}"


def test_csv_any_labels_and_groups(tmp_path):
    rows = "\n".join(f"text {i},{['cat', 'dog', 'emu'][i % 3]},g{i // 2}" for i in range(30))
    spec = write(tmp_path / "d.csv", "review,kind,grp\n" + rows)
    ds = lib.data.load_dataset(spec, text_column="review", label_column="kind", group_column="grp")
    assert ds.label_names == ["cat", "dog", "emu"] and ds.num_labels == 3
    s = lib.data.split(ds, 0.2, 0.2, 0)
    assert not set(s.train.groups) & set(s.test.groups)


@pytest.mark.parametrize(
    "content, kwargs, fragment",
    [
        (None, {}, "does not exist"),
        ("", {}, "empty"),
        ("text,label\n", {}, "no usable rows"),
        ("body,label\na,1\nb,0\n", {}, r"lacks column\(s\) \['text'\].*has \['body', 'label'\]"),
        ("text,label\na,1\nb,1\nc,1\n", {}, "only one class"),
        ("text,label\na,1\nb,0\n", {"group_column": "movie"}, "lacks column"),
    ],
)
def test_csv_errors(tmp_path, content, kwargs, fragment):
    path = tmp_path / "d.csv"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=fragment):
        lib.data.load_dataset(f"csv:{path}", **kwargs)


def test_csv_not_utf8(tmp_path):
    spec = write(tmp_path / "d.csv", "text,label\ncafé crème,1\nnaïve,0\n", encoding="utf-16")
    with pytest.raises(DataError, match="not UTF-8"):
        lib.data.load_dataset(spec)


def test_too_few_groups_or_one_class_train(tmp_path):
    spec = write(tmp_path / "d.csv", "text,label,g\na,1,x\nb,0,x\nc,1,y\n")
    with pytest.raises(DataError, match="at least 3"):
        lib.data.split(lib.data.load_dataset(spec, group_column="g"), 0.2, 0.2, 0)


def test_unknown_dataset_spec():
    with pytest.raises(DataError, match="unknown dataset"):
        lib.data.load_dataset("imdb")


def test_hf_dataset_fails_clearly_offline():
    with pytest.raises((DataError, OfflineError), match=r"pip install -e '\.\[hub\]'|offline|HF_HUB_OFFLINE"):
        lib.data.load_dataset("hf:rotten_tomatoes")


def test_loaders_pad_dynamically_and_group_lengths(toy, tiny):
    _, tokenizer = tiny
    splits = lib.data.Splits(toy, toy.subset(range(10)), toy.subset(range(10, 20)))
    loaders = lib.data.make_loaders(splits, tokenizer, max_length=8, batch_size=16, seed=0)
    batches = list(loaders.train)
    assert sum(b["input_ids"].shape[0] for b in batches) == len(toy)
    assert max(b["input_ids"].shape[1] for b in batches) <= 8
    assert {"input_ids", "attention_mask", "labels"} <= set(batches[0])
    again = [b["input_ids"].shape for b in lib.data.make_loaders(splits, tokenizer, 8, 16, seed=0).train]
    assert again == [b["input_ids"].shape for b in batches]  # same seed, same batches


def test_eval_loader_is_length_sorted_and_predictions_come_back_in_dataset_order(tiny):
    make, tok = tiny
    ds = toy_dataset(50, 3)
    enc = lib.data.Encoded(ds, tok, 16)
    loader = lib.data.make_loader(enc, tok, 8, shuffle=False)
    widths = [b["input_ids"].shape[1] for b in loader]
    assert widths == sorted(widths)  # short batches first: little padding
    logits, labels = lib.evaluate.predict_logits(make(), loader)
    assert list(labels) == list(ds.labels)  # back in dataset order
    one_by_one = lib.evaluate.predict_logits(make(), torch_loader_in_order(enc, tok))[0]
    assert abs(logits - one_by_one).max() < 1e-5


def torch_loader_in_order(enc, tok):
    from torch.utils.data import DataLoader
    from transformers import DataCollatorWithPadding

    return DataLoader(enc, batch_size=1, collate_fn=DataCollatorWithPadding(tok, return_tensors="pt"))


def test_a_sample_is_seeded_without_repeats_and_keeps_order(tiny):
    _, tok = tiny
    enc = lib.data.Encoded(toy_dataset(50, 3), tok, 16)
    position = {id(f): i for i, f in enumerate(enc.features)}
    a, b, c = enc.sample(20, 1), enc.sample(20, 1), enc.sample(20, 2)
    picked = [position[id(f)] for f in a.features]
    assert len(a) == 20 and len(set(picked)) == 20 and picked == sorted(picked)
    assert a.features == b.features and a.features != c.features  # the seed decides which
    assert enc.sample(0, 1) is enc and enc.sample(50, 1) is enc  # 0 or all: the whole set
