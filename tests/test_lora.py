"""LoRA helpers on the tiny random BERT: what trains, save/load, merge exactness, isolated speed probe."""

from __future__ import annotations

import copy

import pytest
import torch

import lib
from lib.errors import ArtifactError
from tests.conftest import toy_dataset


def lora_model(make, r=4, targets=("query", "value")):
    return lib.lora.add_lora(make(), r=r, alpha=2.0 * r, dropout=0.0, target_modules=list(targets))


def test_only_adapters_and_head_train(tiny):
    make, _ = tiny
    m = lora_model(make)
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "classifier" in n for n in trainable)
    s = lib.models.trainable_summary(m)
    # 2 layers x (query, value) x (A: r x 32 + B: 32 x r) + the head's copy (32 x 2 + 2)
    assert s["trainable_params"] == 2 * 2 * (4 * 32 + 32 * 4) + (32 * 2 + 2)
    assert 0 < s["trainable_pct"] < 5


def test_unknown_target_module_is_a_clear_error(tiny):
    make, _ = tiny
    with pytest.raises(ValueError, match="not found"):
        lora_model(make, targets=("q_proj",))


def trained_looking(m):
    with torch.no_grad():  # B starts at zero; make the adapters non-trivial
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    return m


def test_merge_lora_matches_the_adapters_and_peft(tiny):
    make, tokenizer = tiny
    m = trained_looking(lora_model(make))
    loader = lib.data.make_loader(
        lib.data.Encoded(toy_dataset(24), tokenizer, 16), tokenizer, 8, shuffle=False
    )
    merged = lib.lora.merge_lora(m)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    assert lib.models.count_params(merged) == lib.models.count_params(make())  # the base model's shapes
    diff = lib.evaluate.compare_predictions(m, merged, loader)
    assert diff["max_abs_logit_diff"] < 1e-4 and diff["label_agreement"] == 1.0
    peft = lib.evaluate.compare_predictions(copy.deepcopy(m).merge_and_unload(), merged, loader)
    assert peft["max_abs_logit_diff"] < 1e-5
    base_only = lib.evaluate.compare_predictions(make(), m, loader)
    assert base_only["max_abs_logit_diff"] > 1e-3  # the adapters really change the outputs
    assert any("lora_" in n for n, _ in m.named_parameters())  # the original is untouched


def test_lora_linear_computes_what_peft_computes(tiny):
    make, _ = tiny
    m = trained_looking(lora_model(make)).eval()
    layer = next(x for x in m.modules() if hasattr(x, "lora_A") and "default" in x.lora_A)
    r = layer.lora_A["default"].weight.shape[0]
    mine = lib.lora.LoRALinear(layer.base_layer, r, layer.scaling["default"] * r)
    x = torch.randn(5, layer.in_features)
    assert torch.allclose(mine(x), layer.base_layer(x))  # B starts at zero: the base layer exactly
    with torch.no_grad():
        mine.A.copy_(layer.lora_A["default"].weight)
        mine.B.copy_(layer.lora_B["default"].weight)
        assert torch.allclose(mine(x), layer(x), atol=1e-6)
        assert not torch.allclose(layer(x), layer.base_layer(x), atol=1e-4)  # the update is not nothing
    assert [n for n, p in mine.named_parameters() if p.requires_grad] == ["A", "B"]


def test_adapter_artifact_loads_onto_the_base_its_metadata_names(tiny, tmp_path):
    make, tokenizer = tiny
    base_dir = tmp_path / "base"  # a local model folder: a base every load reproduces exactly
    make().save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    base = lib.models.load_model(str(base_dir), 2, ["neg", "pos"])[0]
    m = trained_looking(
        lib.lora.add_lora(base, r=4, alpha=8.0, dropout=0.0, target_modules=["query", "value"])
    )
    path = lib.artifacts.save(
        tmp_path / "lora",
        m,
        tokenizer,
        {"params": {"model": str(base_dir), "pooling": "cls"}, "label_names": ["neg", "pos"]},
    )
    assert lib.runner.catalog.artifact_kind(path) == "adapter"
    assert lib.artifacts.file_mb(path) == pytest.approx(lib.lora.adapter_mb(m))
    assert lib.artifacts.file_mb(path) < lib.bench.size_info(make())["size_mb"] / 5
    again, _, meta = lib.artifacts.load(path)
    loader = lib.data.make_loader(
        lib.data.Encoded(toy_dataset(24), tokenizer, 16), tokenizer, 8, shuffle=False
    )
    assert lib.evaluate.compare_predictions(m, again, loader)["max_abs_logit_diff"] < 1e-6


def test_adapter_without_its_base_is_a_clear_error(tiny, tmp_path):
    make, tokenizer = tiny
    path = lib.artifacts.save(tmp_path / "lora", lora_model(make), tokenizer, {})
    with pytest.raises(ArtifactError, match="does not name its base model"):
        lib.artifacts.load(path)


@pytest.mark.slow  # a fresh process per timing; 01_lora_finetune's smoke run uses the same probe
def test_isolated_training_speed(tiny):
    _, tokenizer = tiny
    feats = lib.data.Encoded(toy_dataset(64), tokenizer, 16).features
    common = dict(
        tokenizer_spec=lib.models.TINY, features=feats, batch_size=16, steps=3, learning_rate=1e-3, seed=0
    )
    base = dict(spec=lib.models.TINY, num_labels=2, seed=0)
    full = lib.bench.isolated(
        lib.train.training_speed, factory=lib.models.fresh_classifier, factory_kwargs=base, **common
    )
    lora = lib.bench.isolated(
        lib.train.training_speed,
        factory=lib.lora.lora_model,
        **common,
        factory_kwargs={
            **base,
            "r": 2,
            "alpha_scale": 2.0,
            "dropout": 0.0,
            "target_modules": ["query", "value"],
        },
    )
    assert full["steps"] == lora["steps"] == 3
    assert full["samples_per_s"] > 0 and full["peak_mem_mb"] > 0
    assert lora["trainable_params"] < full["trainable_params"] == full["total_params"]
