"""Behaviour tests of a sentiment classifier in the style of CheckList (Ribeiro et al., ACL 2020), kept as
data in ``lib/resources/behaviour_tests.yaml`` (its header says how a test is written). Three types:

- **MFT** (minimum functionality): template sentences with an expected answer;
- **INV** (invariance): a perturbed copy of a real text must keep the predicted label;
- **DIR** (directional): an added clause must not move P(positive) the wrong way by more than a tolerance.

The cases are built once (:func:`build`), independently of any model; a model is then scored on all of them
with one call of its ``texts -> probabilities`` function (:func:`failures`), so every variant answers the very
same texts.
"""

from __future__ import annotations

import itertools
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from ..errors import DataError

TYPES = ("MFT", "INV", "DIR")
EXPECT = ("positive", "negative", "not_negative", "not_positive")
NEUTRAL_LOW, NEUTRAL_HIGH = 1 / 3, 2 / 3  # "positive or neutral" passes at P(positive) >= 1/3


def default_path() -> Path:
    return Path(str(resources.files("lib").joinpath("resources/behaviour_tests.yaml")))


@dataclass
class Test:
    """One behaviour test and its cases: ``texts`` (MFT: the sentences; INV/DIR: the perturbed copies),
    ``originals`` (INV/DIR: the texts they came from) and ``expect`` (MFT: one answer per case)."""

    name: str
    type: str
    capability: str
    texts: list[str]
    originals: list[str] = field(default_factory=list)
    expect: list[str] = field(default_factory=list)
    direction: str = ""
    tolerance: float = 0.0
    published: dict[str, Any] = field(default_factory=dict)


def load_spec(path: Path | str | None = None) -> dict[str, Any]:
    """The tests file, checked: every test has a known type, MFT templates name only known lists and a known
    expectation, INV/DIR name a known perturbation. A :class:`DataError` names the test and the fix."""
    path = Path(path) if path else default_path()
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise DataError(f"cannot read the behaviour tests in {path}: {e}") from None
    lists = spec.get("lists", {})
    for t in spec.get("tests", []):
        where = f"behaviour test {t.get('name')!r} in {path}"
        if t.get("type") not in TYPES:
            raise DataError(f"{where}: type must be one of {TYPES}, got {t.get('type')!r}")
        if t["type"] == "MFT":
            for tpl in t.get("templates", []):
                unknown = set(re.findall(r"{(\w+)}", tpl["text"])) - set(lists)
                if unknown or tpl.get("expect") not in EXPECT:
                    raise DataError(
                        f"{where}: template {tpl['text']!r} names unknown lists {sorted(unknown)} or an "
                        f"expectation not in {EXPECT}: add the list under `lists:` or fix the name"
                    )
        elif t.get("perturb") not in PERTURBATIONS:
            raise DataError(
                f"{where}: perturb must be one of {sorted(PERTURBATIONS)}, got {t.get('perturb')!r}"
            )
    return spec


def expand(template: str, lists: dict[str, list[str]]) -> list[str]:
    """Every filling of ``template``'s slots from ``lists`` (the product), the first letter capitalised."""
    slots = re.findall(r"{(\w+)}", template)
    out = []
    for values in itertools.product(*(lists[s] for s in slots)):
        text = template.format(**dict(zip(slots, values)))
        out.append(text[:1].upper() + text[1:])
    return out


# ------------------------------------------------------------------------ perturbations of real texts


def typo(text: str, rng: np.random.Generator, _: dict) -> str | None:
    """Two adjacent letters swapped in one word of four letters or more."""
    words = [m for m in re.finditer(r"[A-Za-z]{4,}", text)]
    if not words:
        return None
    m = words[int(rng.integers(len(words)))]
    i = m.start() + int(rng.integers(len(m.group()) - 1))
    return text[:i] + text[i + 1] + text[i] + text[i + 2 :]


def names(text: str, rng: np.random.Generator, spec: dict) -> str | None:
    """A first name of the spec's list replaced (every occurrence) by another of the list."""
    known = spec["names"]
    found = [n for n in known if re.search(rf"\b{n}\b", text)]
    if not found:
        return None
    old = found[int(rng.integers(len(found)))]
    new = rng.choice([n for n in known if n != old])
    return re.sub(rf"\b{old}\b", str(new), text)


def punctuation(text: str, rng: np.random.Generator, _: dict) -> str | None:
    """Lower case, and the final punctuation removed."""
    out = text.lower().rstrip(string.punctuation + " ")
    return out if out != text else None


def _clause(kind: str) -> Callable[[str, np.random.Generator, dict], str]:
    def add(text: str, rng: np.random.Generator, spec: dict) -> str:
        sep = "" if text.rstrip().endswith(tuple(".!?")) else "."
        return f"{text.rstrip()}{sep} {rng.choice(spec['clauses'][kind])}"

    add.__doc__ = f"A sentence of the spec's `clauses: {kind}` added at the end."
    return add


PERTURBATIONS: dict[str, Callable[[str, np.random.Generator, dict], str | None]] = {
    "typo": typo,
    "names": names,
    "punctuation": punctuation,
    "irrelevant": _clause("irrelevant"),
    "positive": _clause("positive"),
    "negative": _clause("negative"),
}


def build(spec: dict[str, Any], texts: Sequence[str], seed: int, scale: float = 1.0) -> list[Test]:
    """Every test's cases: MFT templates expanded (a seeded sample of ``cases`` if more), INV/DIR
    perturbations of ``texts`` (real test texts, in one seeded order for every test, so that the tests share
    their originals; a text a perturbation does not apply to is skipped). ``scale`` multiplies every
    test's number of cases (a quick profile asks for fewer)."""
    out, order = [], np.random.default_rng(seed).permutation(len(texts))  # one order: shared originals
    for i, t in enumerate(spec["tests"]):
        rng = np.random.default_rng([seed, i])
        n = max(1, int(round(t.get("cases", 100) * scale)))
        test = Test(t["name"], t["type"], t.get("capability", ""), [], published=t.get("published") or {})
        if t["type"] == "MFT":
            cases = [(x, tpl["expect"]) for tpl in t["templates"] for x in expand(tpl["text"], spec["lists"])]
            keep = (
                sorted(rng.choice(len(cases), size=n, replace=False)) if len(cases) > n else range(len(cases))
            )
            test.texts, test.expect = [cases[j][0] for j in keep], [cases[j][1] for j in keep]
        else:
            perturb = PERTURBATIONS[t["perturb"]]
            for j in order:
                new = perturb(texts[j], rng, spec)
                if new is not None and new != texts[j]:
                    test.originals.append(texts[j])
                    test.texts.append(new)
                if len(test.texts) == n:
                    break
            test.direction, test.tolerance = t.get("direction", ""), float(t.get("tolerance", 0.0))
        out.append(test)
    return out


def every_text(tests: Sequence[Test]) -> list[str]:
    """The distinct texts a model must answer for all ``tests`` (score them in one call)."""
    return list(dict.fromkeys(x for t in tests for x in (*t.texts, *t.originals)))


def failed(test: Test, p_positive: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """One boolean per case: did the model fail it? ``p_positive``: texts -> P(positive)."""
    p = p_positive(test.texts)
    if test.type == "MFT":
        rules = {
            "positive": p < 0.5,
            "negative": p >= 0.5,
            "not_negative": p < NEUTRAL_LOW,
            "not_positive": p > NEUTRAL_HIGH,
        }
        return np.array([rules[e][k] for k, e in enumerate(test.expect)], dtype=bool)
    before = p_positive(test.originals)
    if test.type == "INV":
        return (p >= 0.5) != (before >= 0.5)
    moved = p - before
    return moved < -test.tolerance if test.direction == "up" else moved > test.tolerance


def failures(tests: Sequence[Test], p_positive: Callable[[list[str]], np.ndarray]) -> pd.DataFrame:
    """One row per test: type, capability, cases, failure rate, the published rate of a matching CheckList
    test (if any) and one failing case."""
    rows = []
    for t in tests:
        bad = failed(t, p_positive)
        k = int(np.argmax(bad)) if bad.any() else None
        example = (
            None if k is None else (t.texts[k] if not t.originals else f"{t.originals[k]} → {t.texts[k]}")
        )
        rows.append({
            "test": t.name, "type": t.type, "capability": t.capability, "cases": len(t.texts),
            "failure_rate": float(bad.mean()) if len(bad) else float("nan"),
            "checklist_bert_base": t.published.get("bert_base"), "failing_example": example,
        })  # fmt: skip
    return pd.DataFrame(rows).set_index("test")


def positive_index(label_names: Sequence[str], name: str = "") -> int:
    """The index of the label that means positive: ``name`` if given, else the one called ``fresh``,
    ``positive`` or ``pos`` (any case). A clear error if the data have no such label."""
    lower = [str(n).lower() for n in label_names]
    wanted = [name.lower()] if name else ["fresh", "positive", "pos"]
    found = next((lower.index(w) for w in wanted if w in lower), None)
    if found is None or len(label_names) != 2:
        raise DataError(
            "behaviour tests and fairness need two labels, one of them positive; the labels are "
            f"{list(label_names)}: name the positive one in the positive_label parameter"
        )
    return found


def positive_probability(proba: Callable[[Sequence[str]], np.ndarray], texts: Sequence[str], positive: int):
    """``texts -> P(positive)`` with every answer computed once, in one call, for ``texts`` (the cases of
    all tests): a lookup afterwards, so scoring many tests costs one pass of the model."""
    p = proba(list(texts))[:, positive]
    table = dict(zip(texts, p))
    return lambda xs: np.array([table[x] for x in xs], dtype=float)
