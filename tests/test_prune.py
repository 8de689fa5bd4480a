"""Pruning on the tiny random BERT: exact removal, consistent shapes, reload, sparsity, bad fractions."""

from __future__ import annotations

import copy

import pytest
import torch

import lib
from lib.techniques.prune import Plan
from tests.conftest import loaders_for, train_save_reload


def batch(tokenizer):
    return tokenizer(
        ["a film that moved me", "dull and far too long for its own good"], padding=True, return_tensors="pt"
    )


def zero_units(model, to_remove: Plan):
    """Zero what removal will cut: the output-side weights of each head/neuron (their contribution)."""
    with torch.no_grad():
        for li, layer in enumerate(lib.models.encoder_layers(model)):
            d = layer.attention.self.attention_head_size
            for h in to_remove.heads.get(li, []):
                layer.attention.output.dense.weight[:, h * d : (h + 1) * d] = 0
            for j in to_remove.neurons.get(li, []):
                layer.output.dense.weight[:, j] = 0


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_removal_is_exact_when_the_removed_units_are_zero(tiny, pooling):
    _, tok = tiny
    lib.utils.seed_everything(0)
    model = lib.models.load_model(lib.models.TINY, 2, pooling=pooling)[0]
    to_remove = Plan(heads={0: [1, 3], 1: [0]}, neurons={0: [0, 5, 63], 1: list(range(10))})
    zero_units(model, to_remove)
    x = batch(tok)
    with torch.no_grad():
        before = model(**x).logits
        lib.prune.remove_units(model, to_remove)
        after = model(**x).logits
    assert torch.allclose(before, after, atol=1e-6)
    layers = lib.models.encoder_layers(model)
    assert (
        layers[0].attention.self.num_attention_heads == 2
        and layers[1].attention.self.num_attention_heads == 3
    )
    assert (
        layers[0].attention.self.query.out_features == 2 * 8 == layers[0].attention.output.dense.in_features
    )
    assert layers[1].intermediate.dense.out_features == 54 == layers[1].output.dense.in_features
    assert model.config.pruned_layout == {"heads": [2, 3], "intermediate": [61, 54]}


def test_removing_nonzero_units_changes_outputs(tiny):
    make, tok = tiny
    model = make()
    with torch.no_grad():
        before = model(**batch(tok)).logits
        lib.prune.remove_units(model, Plan({0: [0, 1]}, {}))
        assert not torch.allclose(before, model(**batch(tok)).logits)


def test_pruned_model_trains_saves_and_reloads_with_its_shapes(tiny, tmp_path):
    make, tok = tiny
    model = make()
    loaders = loaders_for(tok)
    imp = lib.prune.unit_importance(model, loaders.val, "gradient")
    pruned = lib.prune.pruned_copy(model, imp, 0.5)
    again, diff = train_save_reload(pruned, tok, loaders, tmp_path / "p")
    assert (
        lib.models.layout(again) == lib.models.layout(pruned) == pruned.config.pruned_layout and diff == 0.0
    )
    removed = lib.prune.removed_fraction(pruned, model)
    assert 0.45 < removed["encoder_removed"] < 0.55 and removed["params_removed"] < removed["encoder_removed"]


@pytest.mark.parametrize("method", lib.prune.METHODS)
def test_importance_scores_and_plan(tiny, method):
    make, tok = tiny
    model = make()
    imp = lib.prune.unit_importance(model, loaders_for(tok).val, method)
    assert [len(h) for h in imp.heads] == [4, 4] and [len(n) for n in imp.neurons] == [64, 64]
    assert all(torch.all(h >= 0) for h in imp.heads) and torch.allclose(
        torch.stack(imp.heads).norm(dim=1), torch.ones(2)
    )
    p = lib.prune.plan(imp, 0.5)
    assert sum(map(len, p.heads.values())) == 4 and sum(map(len, p.neurons.values())) == 64
    low = min(range(4), key=lambda h: float(imp.heads[0][h]))
    assert (
        low in p.heads[0] or len(p.heads[0]) == 3
    )  # the weakest head of layer 0 goes, unless the layer is at its minimum
    extreme = lib.prune.plan(imp, 0.99)
    assert all(len(v) == 3 for v in extreme.heads.values())  # at least one head stays per layer


def test_gradient_importance_scores_a_unit_that_does_nothing_zero(tiny):
    """A head whose output-projection columns are zero (and a neuron whose output column is zero) cannot
    change the loss: its gradient score must be 0, the lowest, so it is the first to go. Magnitude still sees
    its other weights."""
    make, tok = tiny
    model = make()
    zero_units(model, Plan(heads={1: [2]}, neurons={0: [7]}))
    val = loaders_for(tok).val
    g = lib.prune.gradient_importance(model, val)
    assert float(g.heads[1][2]) == 0.0 and float(g.neurons[0][7]) == 0.0
    assert float(g.heads[1].min()) == 0.0 and (g.heads[1] > 0).sum() == 3  # the others do matter
    assert 2 in lib.prune.plan(g, 0.25).heads[1] and 7 in lib.prune.plan(g, 0.01).neurons[0]
    m = lib.prune.magnitude_importance(model)
    assert float(m.heads[1][2]) > 0  # the data-free score cannot tell


def test_unit_importance_dispatches_by_method(tiny):
    make, tok = tiny
    model = make()
    val = loaders_for(tok).val
    assert torch.equal(
        torch.stack(lib.prune.unit_importance(model, val, "gradient").heads),
        torch.stack(lib.prune.gradient_importance(model, val).heads),
    )
    assert torch.equal(
        torch.stack(lib.prune.unit_importance(model, val, "magnitude").heads),
        torch.stack(lib.prune.magnitude_importance(model).heads),
    )


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, "half", True])
def test_bad_fractions_are_rejected(tiny, bad):
    make, _ = tiny
    with pytest.raises(ValueError, match=r"fraction in \[0, 1\)"):
        lib.prune.magnitude_prune(make(), bad)
    imp = lib.prune.Importance("magnitude", torch.ones(2, 4), [torch.ones(64)] * 2)
    with pytest.raises(ValueError, match=r"fraction in \[0, 1\)"):
        lib.prune.plan(imp, bad)


def test_unknown_importance_method(tiny):
    make, _ = tiny
    with pytest.raises(ValueError, match="gradient"):
        lib.prune.unit_importance(make(), [], "random")


def test_magnitude_pruning_sparsity_masks_survive_training_and_storage(tiny):
    make, tok = tiny
    model = make()
    dense = lib.prune.storage_mb(model)
    lib.prune.magnitude_prune(model, 0.7)
    assert lib.prune.encoder_sparsity(model) == pytest.approx(0.7, abs=0.01)
    loaders = loaders_for(tok)
    lib.train.fit(
        model, loaders.train, None, lib.train.TrainConfig(num_epochs=1, learning_rate=1e-2, progress=False)
    )
    lib.prune.make_permanent(model)
    assert lib.prune.encoder_sparsity(model) == pytest.approx(0.7, abs=0.01)  # training did not regrow zeros
    assert not any(n.endswith("_orig") for n, _ in model.named_parameters())
    sparse = lib.prune.storage_mb(model)
    assert sparse["dense_mb"] == pytest.approx(dense["dense_mb"], rel=1e-3)  # zeros alone: same file size
    assert sparse["sparse_mb"] < dense["sparse_mb"]  # CSR of a 70%-sparse encoder is smaller
    copy.deepcopy(model)  # a plain model again


# ------------------------------------------------------------------------ uneven layers, vocabulary


def test_an_already_pruned_model_is_scored_and_pruned_again(tiny):
    """A student or a pruned model has layers of different widths: importance and the plan work per layer."""
    make, tok = tiny
    model = lib.prune.remove_units(make(), Plan(heads={0: [0, 1]}, neurons={1: list(range(20))}))
    for method in lib.prune.METHODS:
        imp = lib.prune.unit_importance(model, loaders_for(tok).val, method)
        assert [len(h) for h in imp.heads] == [2, 4] and [len(n) for n in imp.neurons] == [64, 44]
    again = lib.prune.pruned_copy(model, imp, 0.5)
    assert sum(lib.models.layout(again)["heads"]) == 3 and sum(lib.models.layout(again)["intermediate"]) == 54


def test_trimmed_vocabulary_is_exact_on_kept_tokens_and_reads_the_rest_as_unk(tiny):
    make, tok = tiny
    model = make().eval()
    kept_texts = ["a film that moved me", "dull and loud"]
    enc = [dict(input_ids=ids) for ids in tok(kept_texts)["input_ids"]]
    keep = lib.prune.used_token_ids(enc, tok)
    assert set(tok.all_special_ids) <= keep and len(keep) < 30
    trimmed = lib.prune.trim_vocabulary(model, keep, tok.unk_token_id)
    assert trimmed.get_input_embeddings().weight.shape[0] == len(keep)
    x = dict(tok(kept_texts, padding=True, return_tensors="pt"))
    with torch.no_grad():
        assert torch.equal(model(**x).logits, trimmed(**x).logits)  # every token kept: the very same numbers
        new = dict(tok(["a superb film"], return_tensors="pt"))  # "superb" was never kept
        as_unk = {k: v.clone() for k, v in new.items()}
        as_unk["input_ids"][as_unk["input_ids"] == tok.convert_tokens_to_ids("superb")] = tok.unk_token_id
        assert torch.allclose(trimmed(**new).logits, model(**as_unk).logits, atol=1e-6)
        assert not torch.allclose(trimmed(**new).logits, model(**new).logits)
    effect = lib.prune.vocabulary_effect([dict(input_ids=new["input_ids"][0].tolist())], keep)
    assert effect == {"tokens_unk": 1 / new["input_ids"].shape[1], "texts_with_unk": 1.0}
    with pytest.raises(ValueError, match="UNK"):
        lib.prune.trim_vocabulary(model, keep - {tok.unk_token_id}, tok.unk_token_id)
