"""LoRA helpers on the tiny random BERT: what trains, save/load, merge exactness, isolated speed probe."""

from __future__ import annotations

import pytest
import torch

import lib
from lib.errors import ArtifactError
from tests.conftest import toy_dataset


def lora_model(make, r=4, targets=("query", "value")):
    return lib.adapt.add_lora(make(), r=r, alpha=2.0 * r, dropout=0.0, target_modules=list(targets))


def test_only_adapters_and_head_train(tiny):
    make, _ = tiny
    m = lora_model(make)
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "classifier" in n for n in trainable)
    s = lib.adapt.trainable_summary(m)
    # 2 layers x (query, value) x (A: r x 32 + B: 32 x r) + the head's copy (32 x 2 + 2)
    assert s["trainable_params"] == 2 * 2 * (4 * 32 + 32 * 4) + (32 * 2 + 2)
    assert 0 < s["trainable_pct"] < 5


def test_unknown_target_module_is_a_clear_error(tiny):
    make, _ = tiny
    with pytest.raises(ValueError, match="not found"):
        lora_model(make, targets=("q_proj",))


def test_merge_is_exact_and_adapter_round_trip(tiny, tmp_path):
    make, tokenizer = tiny
    m = lora_model(make)
    with torch.no_grad():  # B starts at zero; make the adapters non-trivial
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    loader = lib.data.make_loader(lib.data.Encoded(toy_dataset(24), tokenizer, 16), tokenizer, 8, shuffle=False)
    merged = lib.adapt.merged_copy(m)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    diff = lib.evaluate.compare_predictions(m, merged, loader)
    assert diff["max_abs_logit_diff"] < 1e-4 and diff["label_agreement"] == 1.0
    base_only = lib.evaluate.compare_predictions(make(), m, loader)
    assert base_only["max_abs_logit_diff"] > 1e-3  # the adapters really change the outputs
    path = lib.adapt.save_adapter(tmp_path / "lora", m, {"r": 4})
    assert lib.adapt.adapter_mb(path) < lib.bench.size_info(make())["size_mb"] / 5
    again = lib.adapt.load_adapter(make(), path)
    assert lib.evaluate.compare_predictions(m, again, loader)["max_abs_logit_diff"] < 1e-6


def test_load_adapter_missing(tiny, tmp_path):
    make, _ = tiny
    with pytest.raises(ArtifactError, match="no LoRA adapter"):
        lib.adapt.load_adapter(make(), tmp_path)


def test_isolated_speed_probe(tiny):
    _, tokenizer = tiny
    feats = lib.data.Encoded(toy_dataset(64), tokenizer, 16).features
    full = lib.bench.isolated(lib.train.speed_probe, model=lib.models.TINY, num_labels=2, features=feats,
                              batch_size=16, steps=3, learning_rate=1e-3, seed=0)
    lora = lib.bench.isolated(lib.train.speed_probe, model=lib.models.TINY, num_labels=2, features=feats,
                              batch_size=16, steps=3, learning_rate=1e-3, seed=0,
                              lora={"r": 2, "alpha_scale": 2.0, "dropout": 0.0, "target_modules": ["query", "value"]})
    assert full["steps"] == lora["steps"] == 3
    assert full["samples_per_s"] > 0 and full["peak_mem_mb"] > 0
    assert lora["trainable_params"] < full["trainable_params"] == full["total_params"]
