"""Explanations (lib.techniques.explain): words, word pieces, LIME and IG on a tiny model, and the
faithfulness measures on a toy classifier whose right answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lib
from lib.techniques.explain import Words, agreement, faithfulness, merge_pieces, pick_examples, top_words


def test_words_split_like_lime_and_edit_the_text():
    w = Words.of("Don't stop -- it's great!")
    assert w.words == ["Don", "t", "stop", "it", "s", "great"]
    assert w.without([2, 5]) == "Don't -- it's !"  # punctuation kept, the words gone
    assert w.only([5, 2]) == "stop great"  # in text order
    assert len(Words.of("  ...  ")) == 0


def test_word_pieces_are_summed_into_their_word_and_special_tokens_dropped(tiny):
    _, tokenizer = tiny
    text = "unbelievably dull, truly."
    enc = tokenizer(text, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    words = Words.of(text)
    pieces = [tokenizer.convert_ids_to_tokens(i) for i in enc["input_ids"]]
    assert (
        sum(p.startswith("##") for p in pieces) >= 1
    )  # the case this test is about: a word in several pieces
    scores = merge_pieces(offsets, words.spans, np.ones(len(offsets)))
    per_word = [sum(1 for a, b in offsets if b > a and s <= a < e) for s, e in words.spans]
    assert (
        scores.tolist() == per_word
    )  # each word gets exactly its pieces; [CLS], [SEP], ',' and '.' go nowhere
    assert scores.sum() < len(offsets)


def toy_proba(texts):
    """P(class 1) = 0.9 when the text holds the word 'great', else 0.1: the only word that matters."""
    p1 = np.array([0.9 if "great" in Words.of(t).words else 0.1 for t in texts])
    return np.stack([1 - p1, p1], axis=1)


def test_faithfulness_on_a_toy_classifier_with_a_known_answer():
    w = Words.of("the movie was great fun")
    right = np.array([0.0, 0.1, 0.0, 1.0, 0.2])  # 'great' first
    wrong = -right  # 'great' last: never in the top 1, nor in the top 3 of 5
    out = faithfulness(toy_proba, [(w, right, 1), (w, wrong, 1)])
    assert out.loc[0, "comprehensiveness"] == pytest.approx(0.8)  # deleting 'great' always drops 0.9 -> 0.1
    assert out.loc[0, "sufficiency"] == pytest.approx(0.0)  # 'great' alone keeps 0.9
    assert out.loc[1, "comprehensiveness"] == pytest.approx(0.0)
    assert out.loc[1, "sufficiency"] == pytest.approx(0.8)
    assert (out["p_full"] == 0.9).all()


def test_top_words_and_agreement():
    assert top_words(np.array([0.1, 0.9, 0.5]), 0.01) == [1]  # at least one word
    assert top_words(np.array([0.1, 0.9, 0.5]), 0.5) == [1, 2]
    a = np.array([0.1, 0.5, 0.3, 0.9, 0.2])
    assert agreement(a, a) == {"spearman": pytest.approx(1.0), "top_overlap": 1.0}
    assert agreement(a, -a)["spearman"] == pytest.approx(-1.0) and agreement(a, -a)["top_overlap"] == 0.0
    assert np.isnan(agreement(a[:2], a[:2])["spearman"])  # too few words for a rank correlation


def test_pick_examples_finds_each_role():
    probs = np.array([[0.95, 0.05], [0.52, 0.48], [0.9, 0.1], [0.45, 0.55], [0.2, 0.8]])
    labels = np.array([0, 0, 1, 0, 1])
    roles = pick_examples(probs, labels)
    assert roles == {
        "confident-correct-1": 0,
        "confident-wrong-1": 2,
        "uncertain-correct-1": 1,
        "uncertain-wrong-1": 3,
    }


def test_text_proba_batches_and_keeps_the_order(tiny):
    make, tokenizer = tiny
    model = make()
    texts = ["a much longer text than the others here", "short", "mid length text"] * 30
    proba = lib.predict.TextProba(model, tokenizer, 16, batch_size=7)
    p = proba(texts)
    one = lib.predict.TextProba(model, tokenizer, 16, batch_size=1)([texts[0], texts[1]])
    assert p.shape == (90, 2) and np.allclose(p.sum(1), 1) and proba.texts_seen == 90
    assert np.allclose(p[:2], one, atol=1e-5)  # the same answers whatever the batching


def test_lime_and_ig_explain_every_word_even_past_the_length_cut(tiny):
    make, tokenizer = tiny
    model = make()
    text = "great " + " ".join(["plot"] * 60) + " ending"  # 62 words, far past max_length 16
    words = Words.of(text)
    proba = lib.predict.TextProba(model, tokenizer, 16)
    explainer = lib.explain.lime_explainer(["neg", "pos"], tokenizer.unk_token, seed=0)
    scores, _ = lib.explain.lime_scores(explainer, proba, text, 1, num_samples=30)
    assert scores.shape == (len(words),)
    ig_scores, gap = lib.explain.IntegratedGradients(model, tokenizer, 16, n_steps=8)(text, 1)
    assert ig_scores.shape == (len(words),) and np.isfinite(gap)
    assert (ig_scores[14:] == 0).all() and ig_scores[:14].any()  # cut words get no score, the kept ones do


def test_the_written_out_integrated_gradients_equals_captums(tiny):
    make, tokenizer = tiny
    model = make().eval()
    ig = lib.explain.IntegratedGradients(model, tokenizer, 16, n_steps=12)
    ids, baseline, mask, _ = ig.inputs("a great and moving film")
    mine = lib.explain.integrated_gradients(model, ids, baseline, mask, 1, 12)
    theirs, _ = ig.token_scores(ids, baseline, mask, 1, method="riemann_middle")  # the same midpoint sum
    assert mine.shape == theirs.shape and mine.abs().max() > 0
    assert torch.allclose(mine, theirs, atol=1e-6, rtol=1e-4)
    with torch.no_grad():  # completeness: the scores add up to p(text) - p(baseline), nearly
        p = [torch.softmax(model(input_ids=i, attention_mask=mask).logits, -1)[0, 1] for i in (ids, baseline)]
    assert float(mine.sum()) == pytest.approx(float(p[0] - p[1]), abs=0.05)


def test_lime_refuses_a_text_without_words(tiny):
    make, tokenizer = tiny
    proba = lib.predict.TextProba(make(), tokenizer, 16)
    explainer = lib.explain.lime_explainer(["neg", "pos"], tokenizer.unk_token, seed=0)
    with pytest.raises(lib.explain.ExplainError, match="no words"):
        lib.explain.lime_scores(explainer, proba, "!!! ...", 1, num_samples=30)


def test_global_words_weigh_every_explanation_the_same():
    a, b = Words.of("good film"), Words.of("bad film good")
    frame = lib.explain.global_words(
        [(a, np.array([10.0, 0.0])), (b, np.array([-0.1, 0.0, 0.1]))], min_count=2
    )
    assert frame.index.tolist() == ["good", "film"]  # 'bad' is seen once
    assert frame.loc["good", "mean_score"] == pytest.approx(1.0)  # 10/10 and 0.1/0.1: scale removed
    assert frame.loc["good", "count"] == 2
