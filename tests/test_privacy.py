"""DP-SGD and the membership audit (lib.privacy): the attack's AUC at its two extremes, the DP bound, the
cached-feature shortcut against the full model, Opacus' gradient against the notebook's formula, a tiny
private run's ε, and the clear errors for what Opacus cannot train."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import lib
from lib.errors import ParamError
from lib.techniques import privacy

# ------------------------------------------------------------------------ the audit


def test_attack_is_chance_on_identical_losses_and_perfect_on_separated_ones():
    rng = np.random.default_rng(0)
    same = privacy.loss_attack(rng.exponential(0.5, 4000), rng.exponential(0.5, 4000))
    assert abs(same["auc"] - 0.5) < 0.03
    assert same["tpr_at"][0.01] < 0.04  # at 1% false positives, about 1% of members: no better than a guess
    apart = privacy.loss_attack(rng.uniform(0.0, 0.1, 500), rng.uniform(1.0, 3.0, 500))
    assert apart["auc"] == 1.0 and apart["tpr_at"][0.001] == 1.0
    assert apart["members"] == apart["nonmembers"] == 500


def test_tpr_at_fpr_never_exceeds_the_level():
    fpr, tpr = np.array([0.0, 0.005, 0.02, 1.0]), np.array([0.1, 0.3, 0.6, 1.0])
    assert privacy.tpr_at_fpr(fpr, tpr, 0.01) == 0.3
    assert privacy.tpr_at_fpr(fpr, tpr, 0.001) == 0.1
    with pytest.raises(ValueError, match="members and non-members"):
        privacy.loss_attack(np.array([]), np.array([1.0]))


def test_dp_bound():
    fpr = np.array([0.0, 0.01, 0.5, 1.0])
    assert np.allclose(privacy.tpr_bound(fpr, 0.0, 0.0), fpr)  # ε = 0: no attack beats chance
    b = privacy.tpr_bound(0.01, 1.0, 1e-5)
    assert b == pytest.approx(np.e * 0.01 + 1e-5)
    assert privacy.tpr_bound(0.5, 1.0, 0.0) == pytest.approx(
        1 - np.exp(-1) * 0.5
    )  # the second branch, tighter here
    assert np.all(privacy.tpr_bound(fpr, 50.0, 0.0)[1:] == 1.0)
    assert np.all(privacy.tpr_bound(fpr, float("inf"), 0.0) == 1.0)


def test_audit_sample_is_balanced_and_seeded():
    m, n = privacy.audit_sample(1000, 300, 0, seed=1)
    assert len(m) == len(n) == 300 and len(set(m)) == 300 and m.max() < 1000
    m2, _ = privacy.audit_sample(1000, 300, 0, seed=1)
    assert np.array_equal(m, m2)
    assert len(privacy.audit_sample(1000, 300, 50, seed=1)[0]) == 50


# ------------------------------------------------------------------------ checks


def test_delta_defaults_to_one_over_n_and_refuses_more():
    assert privacy.resolve_delta(0.0, 400) == 1 / 400
    assert privacy.resolve_delta(1e-5, 400) == 1e-5
    with pytest.raises(ParamError, match=r"delta = 0.01 must be in \(0, 1/n_train\]"):
        privacy.resolve_delta(0.01, 400)


def test_private_refuses_impossible_values():
    with pytest.raises(ParamError, match="epsilon must be > 0"):
        privacy.Private(0.0, 1e-5, 1, 1.0)
    with pytest.raises(ParamError, match="max_grad_norm must be > 0"):
        privacy.Private(1.0, 1e-5, 1, 0.0)
    with pytest.raises(ParamError, match="accountant"):
        privacy.Private(1.0, 1e-5, 1, 1.0, accountant="moments")


def test_what_opacus_cannot_train_is_named_with_the_fix():
    tiny = lib.models.fresh_classifier("tiny-bert", 2, pooling="mean")
    tiny.bert.embeddings.position_embeddings.weight.requires_grad_(True)
    problems = privacy.check_trainable(tiny)
    assert any("position_embeddings" in p and "Freeze it" in p for p in problems)
    odd = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    with pytest.raises(ParamError, match="BatchNorm"):
        privacy.require_trainable(odd)
    top = privacy.TopLayers(lib.models.fresh_classifier("tiny-bert", 2, pooling="mean"), 1)
    assert privacy.check_trainable(top) == []
    with pytest.raises(ParamError, match="trainable_layers = 3: the model has 2 encoder layers"):
        privacy.TopLayers(lib.models.fresh_classifier("tiny-bert", 2), 3)


# ------------------------------------------------------------------------ the shortcut


@pytest.fixture(scope="module")
def tiny_data():
    lib.setup(0, "cpu")
    data = lib.data.load_dataset("rotten_tomatoes")
    splits = lib.data.split(data, 0.1, 0.2, 0, 160, 48)
    tokenizer = lib.models.load_tokenizer("tiny-bert")
    return splits, tokenizer, {n: lib.data.Encoded(part, tokenizer, 32) for n, part in splits.items()}


@pytest.mark.parametrize("pooling, k, hidden", [("mean", 1, 0), ("mean", 0, 16), ("cls", 2, 8)])
def test_top_layers_on_cached_features_are_the_full_model(tiny_data, pooling, k, hidden):
    """Before and after (private) training: the full model reading text == the top reading the frozen layers'
    output."""
    _, tokenizer, enc = tiny_data
    model = lib.models.fresh_classifier("tiny-bert", 2, pooling=pooling, seed=0)
    feats = {n: privacy.frozen_features(model, e, tokenizer, k) for n, e in enc.items()}
    text_loader = lib.data.make_loader(enc["test"], tokenizer, 16, shuffle=False)

    def gap(top):
        full = lib.evaluate.predict_logits(model, text_loader)[0]
        return np.abs(
            full - lib.evaluate.predict_logits(top, privacy.feature_loader(feats["test"], 16, False))[0]
        ).max()

    top = privacy.TopLayers(model, k, hidden, seed=0)
    assert gap(top) < 1e-5
    assert isinstance(model.classifier, nn.Sequential if hidden else nn.Linear)  # the head the model now has
    assert all(p.requires_grad == (id(p) in {id(q) for q in top.parameters()}) for p in model.parameters())
    before = lib.evaluate.predict_logits(model, text_loader)[0]
    cfg = lib.train.TrainConfig(num_epochs=1, learning_rate=1e-2, max_grad_norm=0.0, progress=False, seed=0)
    top, hist = privacy.fit_top_layers(
        model, k, feats["train"], None, cfg, 32, privacy.Private(4.0, 1e-3, 1, 1.0, seed=0)
    )
    assert top.model is model and hist.samples > 0
    assert gap(top) < 1e-5  # trained through the shortcut, the whole model changed with it ...
    assert (
        np.abs(lib.evaluate.predict_logits(model, text_loader)[0] - before).max() > 1e-3
    )  # ... and it did change
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())  # Opacus' hooks are gone


def test_per_example_gradients_and_the_private_gradient_match_opacus(tiny_data):
    _, tokenizer, enc = tiny_data
    model = lib.models.fresh_classifier("tiny-bert", 2, pooling="mean", seed=0)
    feats = privacy.frozen_features(model, enc["train"], tokenizer, 1)
    top = privacy.TopLayers(model, 1)
    batch = privacy.collate([feats[i] for i in range(12)])
    for sigma in (0.0, 1.3):
        per_example, ordinary, theirs = privacy.opacus_gradients(top, batch, 0.05, sigma, 16, seed=7)
        assert all(g.shape[0] == 12 for g in per_example.values())
        assert max(float((per_example[n].mean(0) - ordinary[n]).abs().max()) for n in ordinary) < 1e-6
        mine = privacy.private_gradient(per_example, 0.05, sigma, 16, torch.Generator().manual_seed(7))
        assert max(float((mine[n] - theirs[n]).abs().max()) for n in mine) < 1e-6
    # the formula bites: with C = 0.05 every example is clipped, so the result is not the plain mean gradient
    plain = privacy.private_gradient(per_example, 1e6, 0.0, 12)
    assert max(float((plain[n] - ordinary[n]).abs().max()) for n in ordinary) < 1e-6
    assert max(float((mine[n] - ordinary[n]).abs().max()) for n in ordinary) > 1e-3


def test_a_tiny_private_run_spends_about_its_target_epsilon(tiny_data):
    _, tokenizer, enc = tiny_data
    model = lib.models.fresh_classifier("tiny-bert", 2, pooling="mean", seed=0)
    feats = privacy.frozen_features(model, enc["train"], tokenizer, 1)
    for accountant in ("prv", "rdp"):
        private = privacy.Private(2.0, 1 / len(feats), 2, 1.0, accountant=accountant, seed=0)
        cfg = lib.train.TrainConfig(
            num_epochs=2, learning_rate=1e-3, max_grad_norm=0.0, progress=False, seed=0
        )
        privacy.fit_top_layers(
            lib.models.fresh_classifier("tiny-bert", 2, pooling="mean", seed=0),
            1,
            feats,
            None,
            cfg,
            32,
            private,
        )
        s = private.summary()
        assert np.isfinite(s["epsilon"]) and 1.8 <= s["epsilon"] <= 2.0 * 1.01, s
        assert (
            s["steps"] == 2 * 5
            and s["noise_multiplier"] > 0.3
            and s["sample_rate"] == pytest.approx(32 / 160)
        )


def test_poisson_batches_may_be_empty_and_training_goes_on(tiny_data):
    """20 examples at an expected batch of 2: some steps sample nobody. The step still happens (with noise
    only)."""
    _, tokenizer, enc = tiny_data
    model = lib.models.fresh_classifier("tiny-bert", 2, pooling="mean", seed=0)
    feats = privacy.frozen_features(model, enc["train"], tokenizer, 1).subset(range(20))
    private = privacy.Private(8.0, 1e-3, 3, 1.0, seed=0)
    cfg = lib.train.TrainConfig(
        num_epochs=3, learning_rate=1e-3, max_grad_norm=0.0, progress=False, seed=0, keep_best=False
    )
    top = privacy.TopLayers(model, 1)
    seen = []
    loader = privacy.feature_loader(feats, 2, shuffle=True, seed=0)
    counting = lambda m, b: (seen.append(len(b["labels"])), m(**b).loss)[1]
    hist = lib.train.fit(top, loader, None, cfg, loss_fn=counting, prepare=private)
    private.close()
    assert 0 in seen and len(seen) == 30 and hist.samples == sum(seen)
    assert np.isfinite(private.epsilon())


def test_per_example_losses_are_cross_entropies(tiny_data):
    _, tokenizer, enc = tiny_data
    model = lib.models.fresh_classifier("tiny-bert", 2, pooling="mean", seed=0)
    feats = privacy.frozen_features(model, enc["val"], tokenizer, 1)
    top = privacy.TopLayers(model, 1).eval()
    losses = privacy.per_example_losses(top, feats)
    logits = lib.evaluate.predict_logits(top, privacy.feature_loader(feats, 8, False))[0]
    expected = nn.functional.cross_entropy(torch.from_numpy(logits), feats.labels, reduction="none").numpy()
    assert (
        losses.shape == (len(feats),)
        and losses.dtype == np.float64
        and np.allclose(losses, expected, atol=1e-5)
    )


def test_confident_losses_do_not_tie_at_zero():
    """A memorised member (margin 40) and a confident non-member (margin 20) must stay apart: in float32 both
    are 0."""
    head = nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[0.0], [1.0]]))
    model = lambda hidden, attention_mask: SimpleNamespace(logits=head(hidden[:, 0]))
    feats = privacy.Features(
        torch.tensor([[[40.0]], [[20.0]]]), torch.ones(2, 1, dtype=torch.long), torch.tensor([1, 1])
    )
    model.to, model.eval = (lambda dev: model), (lambda: model)
    losses = privacy.per_example_losses(model, feats)
    assert 0 < losses[0] < losses[1] < 1e-8
    z = torch.tensor([[0.3, -1.2, 2.0], [5.0, 0.0, 1.0]])
    y = torch.tensor([2, 1])
    assert torch.allclose(
        privacy.confident_cross_entropy(z, y), nn.functional.cross_entropy(z.double(), y, reduction="none")
    )


def test_an_empty_first_poisson_batch_has_the_batch_structure(tiny_data):
    _, tokenizer, enc = tiny_data
    model = lib.models.fresh_classifier("tiny-bert", 2, pooling="mean", seed=0)
    feats = privacy.frozen_features(model, enc["train"], tokenizer, 1)
    top = privacy.TopLayers(model, 1)
    private = privacy.Private(8.0, 1e-3, 1, 1.0, seed=0)
    _, _, loader = private(
        top, torch.optim.SGD(top.parameters(), lr=0.1), privacy.feature_loader(feats, 8, True)
    )
    empty = loader.collate_fn([])  # what the loader yields when Poisson sampling draws nobody, even at step 1
    private.close()
    assert set(empty) == {"hidden", "attention_mask", "labels"} and empty["labels"].shape == (0,)
    assert top(**empty).loss.item() == 0.0  # a zero loss, not NaN: the step adds noise only
