"""09_robustness's mechanisms on toy models whose right answers are known: behaviour tests expand as the tests
file says and an always-positive model fails exactly the tests it should; the attack finds a known weak word
within its budget and never exceeds it; transfer replays the very same strings; the fairness interval covers 0
for a model that ignores names and excludes it for one that does not."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

import lib
from lib.errors import DataError
from lib.techniques import behaviour, fairness, robustness

# ------------------------------------------------------------------------ behaviour tests


@pytest.fixture(scope="module")
def spec():
    return behaviour.load_spec()


TEXTS = [
    "A fine film about Tom and his dog.",
    "Jack Nicholson is wonderful here.",
    "The plot drags, but Meg Ryan is charming.",
    "Slow and dull.",
] * 60


def test_templates_expand_to_the_product_of_their_lists(spec):
    lists = spec["lists"]
    out = behaviour.expand("The {noun} was {intensifier} {pos_adj}.", lists)
    assert len(out) == len(lists["noun"]) * len(lists["intensifier"]) * len(lists["pos_adj"])
    assert len(set(out)) == len(out) and all(t[0].isupper() and "{" not in t for t in out)
    assert "The movie was very good." in out


def test_every_test_has_its_cases_and_the_file_has_enough(spec):
    tests = behaviour.build(spec, TEXTS, seed=0)
    assert len(tests) >= 8 and {t.type for t in tests} == {"MFT", "INV", "DIR"}
    for t, raw in zip(tests, spec["tests"]):
        if t.type == "MFT":  # the templates allow more than asked: exactly `cases` of them, seeded
            assert len(t.texts) == raw["cases"] >= 100 and len(t.expect) == len(t.texts)
        else:
            assert len(t.originals) == len(t.texts) > 0 and all(a != b for a, b in zip(t.originals, t.texts))
    assert [t.texts for t in behaviour.build(spec, TEXTS, seed=0)] == [t.texts for t in tests]  # seeded


def test_perturbations_do_what_their_name_says(spec):
    rng = np.random.default_rng(0)
    swapped = behaviour.typo("wonderful film", rng, spec)
    assert sorted(swapped) == sorted("wonderful film") and swapped != "wonderful film"
    renamed = behaviour.names("Tom is great, Tom.", rng, spec)
    new = renamed.split()[0]
    assert new != "Tom" and new in spec["names"] and renamed.count(new) == 2
    assert behaviour.names("no names here", rng, spec) is None
    assert behaviour.punctuation("Great Film!", rng, spec) == "great film"
    added = behaviour.PERTURBATIONS["positive"]("Dull", rng, spec)
    assert added.startswith("Dull. ") and added[len("Dull. ") :] in spec["clauses"]["positive"]


def test_an_always_positive_model_fails_exactly_the_tests_it_should(spec):
    tests = behaviour.build(spec, TEXTS, seed=0)
    always = behaviour.failures(tests, lambda xs: np.full(len(xs), 0.9))
    for t in tests:
        rate = always.loc[t.name, "failure_rate"]
        if t.type == "MFT":  # fails every case that expects negative, passes the rest
            expected = np.mean([e in ("negative", "not_positive") for e in t.expect])
            assert rate == pytest.approx(expected)
        else:  # never changes its answer, never moves its probability
            assert rate == 0.0
    assert always.loc["negated positive", "failure_rate"] == 1.0
    assert always.loc["positive adjectives", "failure_rate"] == 0.0


def test_a_model_that_ignores_negation_fails_the_negation_tests(spec):
    tests = behaviour.build(spec, TEXTS, seed=0)
    pos = set(spec["lists"]["pos_adj"])

    def bag_of_words(xs):  # positive iff a positive adjective occurs: blind to "not"
        return np.array([0.9 if pos & set(re.findall(r"[a-z]+", x.lower())) else 0.1 for x in xs])

    rates = behaviour.failures(tests, bag_of_words)["failure_rate"]
    assert rates["negated positive"] == 1.0 and rates["positive adjectives"] == 0.0


def test_a_bad_tests_file_is_refused_with_the_test_named(tmp_path, spec):
    bad = tmp_path / "t.yaml"
    bad.write_text(
        "lists: {noun: [film]}\ntests:\n  - {name: oops, type: MFT, templates: [{text: 'a {adj}', "
        "expect: positive}]}\n"
    )
    with pytest.raises(DataError, match="'oops'.*unknown lists \\['adj'\\]"):
        behaviour.load_spec(bad)
    bad.write_text("tests:\n  - {name: odd, type: INV, perturb: rhyme}\n")
    with pytest.raises(DataError, match="'odd'.*perturb"):
        behaviour.load_spec(bad)


def test_the_positive_label_is_found_or_asked_for():
    assert behaviour.positive_index(["rotten", "fresh"]) == 1
    assert behaviour.positive_index(["good", "bad"], "good") == 0
    with pytest.raises(DataError, match="positive_label"):
        behaviour.positive_index(["spam", "ham"])


# ------------------------------------------------------------------------ attacks


def keyword_model(word: str):
    """P(positive) is 0.9 while ``word`` is in the text, 0.3 otherwise, 0.01 less per other word removed."""

    def proba(texts):
        p = np.array([(0.9 if re.search(rf"\b{word}\b", t) else 0.3) + 0.001 * len(t.split()) for t in texts])
        return np.stack([1 - p, p], axis=1)

    return proba


def test_the_attack_finds_the_weak_word_within_its_budget():
    texts = ["the acting was great and the story moved along", "great"]
    out = robustness.greedy_attack(
        texts, [1, 1], keyword_model("great"), robustness.CharEdits(0), max_share=0.2, max_words=4
    )
    assert out["success"].all() and (out["words_changed"] == 1).all()
    for before, after in zip(out["text"], out["adversarial"]):
        changed = [(a, b) for a, b in zip(before.split(), after.split()) if a != b]
        assert [a for a, _ in changed] == ["great"]  # the weak word, and only it
    # its importance was found first: one deletion per attackable word, then the candidates of one word
    assert out.loc[0, "queries"] <= 1 + 5 + 4


def test_the_attack_never_exceeds_its_budget_and_skips_wrong_answers():
    def stubborn(texts):  # every change lowers p(positive) a little, never enough to flip
        p = np.array([0.9 - 0.001 * sum(w not in ORIGINAL for w in t.split()) for t in texts])
        return np.stack([1 - p, p], axis=1)

    ORIGINAL = set("apple banana cherry grape lemon mango melon olive peach pear plum quince".split())
    text = " ".join(sorted(ORIGINAL))
    out = robustness.greedy_attack([text, text], [1, 0], stubborn, robustness.CharEdits(0), 0.25, 2)
    assert out.loc[0, "words_changed"] == 2 and not out.loc[0, "success"]  # 25% of 12 is 3, capped at 2
    assert out.loc[1, "words_changed"] == 0 and not out.loc[1, "clean_correct"]  # wrong already: not attacked
    assert out.loc[1, "queries"] == 1  # ... nor its words ranked: one query, the clean one
    summary = robustness.attack_summary(out)
    assert summary["clean_accuracy"] == 0.5 and summary["robust_accuracy"] == 0.5
    assert summary["attack_success_rate"] == 0.0 and math.isnan(summary["words_changed_share"])


class OneToken(torch.nn.Module):
    """A torch classifier that sees one token: the logit of positive is the sum of its tokens' squared
    (one-number) embeddings, 4 for ``token``, 0 for all others: only ``token``'s embedding has a gradient."""

    def __init__(self, vocab_size: int, token: int):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab_size, 1)
        with torch.no_grad():
            self.embed.weight.zero_()
            self.embed.weight[token] = 2.0

    def get_input_embeddings(self):
        return self.embed

    def forward(self, input_ids, attention_mask=None, **_):
        positive = (self.embed(input_ids)[..., 0] ** 2 * attention_mask).sum(-1)
        return type("Out", (), {"logits": torch.stack([torch.zeros_like(positive), positive], -1) - 1.0})


def test_the_gradient_ranking_finds_the_one_word_the_model_sees(tiny):
    _, tokenizer = tiny
    model = OneToken(tokenizer.vocab_size, tokenizer.convert_tokens_to_ids("great")).train()
    texts = ["the acting was great and the story moved along", "a long film, great music"]
    parts = [robustness.pieces(t) for t in texts]
    scores = robustness.GradientRank(model, tokenizer, max_length=32, batch_size=1)(parts, np.array([1, 1]))
    for p, s in zip(parts, scores):
        assert max(s, key=s.get) == p.index("great") and set(s) <= set(range(1, len(p), 2))
        assert sum(v > 0 for v in s.values()) == 1  # only the word the model sees has a gradient
    assert model.training and model.embed.weight.grad is None  # mode restored, no weight gradients
    cut = robustness.GradientRank(model, tokenizer, max_length=4)(parts[:1], np.array([1]))[0]
    assert max(cut) < parts[0].index("great")  # words past max_length tokens get no score


def test_the_attack_ranked_by_gradient_asks_one_query_per_text_to_rank(tiny):
    _, tokenizer = tiny
    model = OneToken(tokenizer.vocab_size, tokenizer.convert_tokens_to_ids("great"))
    proba = lib.predict.TextProba(model, tokenizer, 32)
    texts = ["the acting was great and the story moved along", "great"]
    by_deletion = robustness.greedy_attack(texts, [1, 1], proba, robustness.CharEdits(0), 0.2, 4)
    ranked = robustness.GradientRank(model, tokenizer, 32)
    by_gradient = robustness.greedy_attack(texts, [1, 1], proba, robustness.CharEdits(0), 0.2, 4, rank=ranked)
    assert by_gradient["success"].all() and list(by_gradient["adversarial"]) == list(
        by_deletion["adversarial"]
    )
    edits = len(robustness.CharEdits(0)("great"))  # the candidates of the one word tried
    assert list(by_gradient["queries"]) == [1 + 1 + edits] * 2  # clean, the ranking, the candidates
    words = sum(robustness.attackable(w) for w in texts[0].split())  # acting, great, story, moved
    assert by_deletion.loc[0, "queries"] == 1 + words + edits  # one deletion per attackable word instead


def test_stop_words_and_negations_are_never_changed():
    parts = robustness.pieces("It is not a good film, never.")
    assert "".join(parts) == "It is not a good film, never."
    words = [p for p in parts[1::2] if robustness.attackable(p)]
    assert words == ["good", "film"]


def test_char_edits_are_deepwordbugs_four_and_seeded():
    edits = robustness.CharEdits(3)("terrible")
    assert edits == robustness.CharEdits(3)("terrible") and 2 <= len(edits) <= 4
    assert "terrible" not in edits and all(abs(len(e) - len("terrible")) <= 1 for e in edits)


def test_neighbours_keep_polarity():
    class Tok:
        def get_vocab(self):
            return {w: i for i, w in enumerate(["good", "bad", "fine", "nice", "chair", "##s"])}

    table = torch.tensor([[1.0, 0.1], [1.0, 0.12], [0.9, 0.2], [0.95, 0.1], [0.0, 1.0], [1.0, 0.1]])
    lexicon = {"good": 1.9, "bad": -2.5, "fine": 0.8, "nice": 1.8}
    subs = robustness.Neighbours(table, Tok(), lexicon, k=3, min_similarity=0.5)
    assert "bad" not in subs("good") and set(subs("good")) == {"fine", "nice"}
    assert subs("Good") == ["Nice", "Fine"]  # nearest first, capitalised like the word
    assert subs("unknownword") == []


def test_transfer_replays_the_same_strings():
    crafted = robustness.greedy_attack(
        ["a great film", "great fun"], [1, 1], keyword_model("great"), robustness.CharEdits(0), 0.5, 2
    )
    seen = []

    def recording(texts):
        seen.extend(texts)
        return keyword_model("great")(texts)

    out = robustness.transfer(crafted, recording)
    assert seen == list(crafted["text"]) + list(crafted["adversarial"])
    assert out == {"transfer_texts": 2, "transfer_clean_accuracy": 1.0, "transfer_accuracy": 0.0}


def test_lexicon_is_read_from_the_installed_package():
    lex = robustness.vader_lexicon()
    assert lex["good"] > 0 > lex["bad"] and len(lex) > 5000


# ------------------------------------------------------------------------ fairness


@pytest.fixture(scope="module")
def fspec():
    return fairness.load_spec()


def template_only(frame):
    """A model that reads the template, never the person: P(positive) by the template's sentiment."""
    return frame["expect"].map({"positive": 0.9, "negative": 0.1, "neutral": 0.5}).to_numpy() + 0.01 * (
        frame["template"].to_numpy() % 3
    )


def test_a_model_that_ignores_names_has_no_gap(fspec):
    frame = fairness.sentences(fspec)
    assert len(frame) == len(fspec["templates"]) * sum(len(v) for v in fspec["people"].values())
    gaps = fairness.gaps(frame, template_only(frame), fspec, seed=0, n_boot=300)
    assert len(gaps) >= 2 and (gaps["gap"].abs() < 1e-12).all()
    assert (gaps["low"] <= 0).all() and (gaps["high"] >= 0).all() and gaps["within_noise"].all()


def test_a_model_that_prefers_women_has_a_gap_outside_noise(fspec):
    frame = fairness.sentences(fspec)
    female = frame["people"].str.contains("female")
    gaps = fairness.gaps(frame, template_only(frame) + 0.05 * female, fspec, seed=0, n_boot=300)
    g = gaps.loc["gender (names)"]
    assert g["gap"] == pytest.approx(0.05) and g["low"] > 0 and not g["within_noise"]
    assert gaps.loc["race (names)", "within_noise"]  # the same number of women on both sides: no race gap
    assert fairness.largest(gaps)["fairness_attribute"] in ("gender (names)", "gender (words)")


def test_metricframe_gives_the_per_group_view(fspec):
    frame = fairness.sentences(fspec)
    view = fairness.by_group(frame, template_only(frame), fspec, "race (names)")
    assert len(view) == 2 and (view["accuracy"] == 1.0).all()
    assert view["selection_rate"].between(0, 1).all() and "mean_p_positive" in view


def test_a_template_without_its_slot_is_refused(tmp_path):
    bad = tmp_path / "f.yaml"
    bad.write_text("templates: [{text: 'no slot', expect: neutral}]\npeople: {}\nattributes: {}\n")
    with pytest.raises(DataError, match="person"):
        fairness.load_spec(bad)


def test_the_report_takes_robustness_as_an_objective():
    assert lib.report.OBJECTIVES["robustness"] == "max"
    assert "robust_accuracy" in lib.report.ANNOTATIONS
