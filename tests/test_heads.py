"""The mean-pooling classification head, on the tiny random BERT."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lib
from lib.heads import MeanPoolingBertForSequenceClassification, masked_mean
from tests.conftest import toy_dataset


def tiny_mean(seed: int = 0):
    lib.utils.seed_everything(seed)
    return lib.models.load_model(lib.models.TINY, 2, pooling="mean")


def test_masked_mean_ignores_padding():
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    assert torch.equal(masked_mean(h, torch.tensor([[1, 1, 0]])), torch.tensor([[2.0, 3.0]]))


def test_mean_head_gives_the_same_logits_padded_or_not():
    model, tok = tiny_mean()
    alone = tok(["a quietly moving film"], return_tensors="pt")
    padded = tok(
        ["a quietly moving film", "a much longer review that forces padding on the first one"],
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        a = model(**alone).logits[0]
        b = model(**padded).logits[0]
    assert torch.allclose(a, b, atol=1e-5)
    assert not hasattr(model.bert, "pooler") or model.bert.pooler is None


def test_mean_head_trains_and_round_trips_as_an_artifact(tmp_path):
    from tests.test_models_train import loaders_for

    model, tok = tiny_mean()
    assert lib.models.pooling_of(model) == "mean"
    loaders = loaders_for(tok)
    lib.train.fit(
        model,
        loaders.train,
        loaders.val,
        lib.train.TrainConfig(num_epochs=2, learning_rate=1e-3, progress=False),
    )
    path = lib.artifacts.save(tmp_path / "m", model, tok, {"seed": 0})
    again, _, _ = lib.artifacts.load(path)
    assert isinstance(again, MeanPoolingBertForSequenceClassification)
    assert lib.evaluate.compare_predictions(model, again, loaders.test)["max_abs_logit_diff"] == 0.0


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_a_head_with_a_hidden_layer_round_trips_as_an_artifact(pooling, tmp_path):
    """07_privacy's head (Linear → GELU → dropout → Linear) is recorded in the config and rebuilt on load,
    whatever the pooling, with the trained weights."""
    lib.utils.seed_everything(0)
    model, tok = lib.models.load_model(lib.models.TINY, 2, pooling=pooling)
    lib.heads.set_hidden_head(model, 16, seed=3)
    with torch.no_grad():
        model.classifier[3].bias.fill_(0.25)  # not what any fresh head starts with
    path = lib.artifacts.save(tmp_path / "m", model, tok, {"seed": 0})
    again, _, _ = lib.artifacts.load(path)
    assert again.config.classifier_hidden == 16 and again.classifier[0].out_features == 16
    assert torch.equal(again.classifier[3].bias, model.classifier[3].bias)
    batch = tok(["a quietly moving film", "dull"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(model.eval()(**batch).logits, again(**batch).logits, atol=1e-6)


def test_packaged_model_mean_head_uses_every_pretrained_weight_but_the_pooler(recwarn):
    model, _ = lib.models.load_model("minilm-l6", 2, pooling="mean")
    assert isinstance(model, MeanPoolingBertForSequenceClassification)
    assert not [
        w for w in recwarn if "loading" in str(w.message)
    ]  # the unused pooler is expected, not reported
    assert 22e6 < lib.models.count_params(model) < 23e6


def test_mean_head_works_with_lora():
    model, tok = tiny_mean()
    lora = lib.lora.add_lora(model, r=2, alpha=4, dropout=0.0, target_modules=["query", "value"])
    out = lora(**tok(["fine"], return_tensors="pt"), labels=torch.tensor([1]))
    out.loss.backward()
    assert lib.models.pooling_of(lora) == "mean"


def test_bad_pooling_is_rejected():
    with pytest.raises(ValueError, match="pooling must be one of"):
        lib.models.load_model(lib.models.TINY, 2, pooling="max")
    with pytest.raises(ValueError, match="should be 'mean' or 'cls'"):
        lib.runner.contract.DataContract(pooling="max")


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_sentence_vectors_are_what_the_models_own_head_reads(tiny, pooling):
    _, tokenizer = tiny
    model = lib.models.fresh_classifier("tiny-bert", 2, pooling=pooling).eval()
    data = toy_dataset(20)
    enc = lib.data.Encoded(data, tokenizer, 16)
    feats = lib.evaluate.sentence_vectors(model, enc, tokenizer, batch_size=8)
    assert feats.shape == (20, model.config.hidden_size)
    logits, _ = lib.evaluate.predict_logits(model, lib.data.make_loader(enc, tokenizer, 8, shuffle=False))
    with torch.inference_mode():
        from_features = model.classifier(feats).numpy()  # dropout is off in eval: the head sees exactly these
    np.testing.assert_allclose(from_features, logits, atol=1e-5)
