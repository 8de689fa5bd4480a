"""Benchmarks (interleaved comparisons, sizes), the metrics record schema, atomic writes."""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC

import pytest

import lib


@pytest.fixture
def probe(tiny):
    from tests.conftest import toy_dataset

    _, tokenizer = tiny
    return lib.bench.make_probe(lib.data.Encoded(toy_dataset(40), tokenizer, 16), tokenizer, size=40)


def test_probe_shapes(probe):
    assert len(probe.singles) == 40 and all(s["input_ids"].shape[0] == 1 for s in probe.singles)
    assert [b["input_ids"].shape[0] for b in probe.batches] == [32, 8] and probe.n_batched == 40


def test_compare_interleaved_ratios(tiny, probe):
    make, _ = tiny
    small, big = make(), lib.models.load_model(lib.models.TINY, 2)[0]
    df = lib.bench.compare({"ref": small, "other": big}, probe, repeats=2)
    assert list(df.index) == ["ref", "other"]
    ratio = (
        df["throughput_b32"] / df.loc["ref", "throughput_b32"]
    )  # speed-up = throughput over the reference's
    assert df["speedup_vs_reference"].tolist() == pytest.approx(ratio.tolist())
    assert df.loc["other", "latency_ratio_vs_reference"] == pytest.approx(
        df.loc["other", "latency_ms_b1_p50"] / df.loc["ref", "latency_ms_b1_p50"]
    )
    assert (df["throughput_b32"] > 0).all() and (df["latency_ms_b1_p90"] >= df["latency_ms_b1_p50"]).all()
    assert df.attrs["reference"] == "ref" and df.attrs["repeats"] == 2


def test_compare_detects_a_slower_model(probe):
    import time

    fast = lambda batch: [[0.0, 1.0]] * batch["input_ids"].shape[0]  # noqa: E731

    def slow(batch):
        time.sleep(0.002)
        return fast(batch)

    df = lib.bench.compare({"fast": fast, "slow": slow}, probe, repeats=3)
    assert df.loc["slow", "speedup_vs_reference"] < 0.5
    assert df.loc["slow", "latency_ratio_vs_reference"] > 2


def test_size_info(tiny):
    make, _ = tiny
    m = make()
    info = lib.bench.size_info(m)
    n = sum(p.numel() for p in m.parameters())
    assert info["num_params"] == n
    assert n * 4 / 1e6 <= info["size_mb"] < n * 4 / 1e6 * 1.05  # fp32 weights + a small header


def test_peak_memory_sees_an_allocation():
    import numpy as np

    with lib.bench.PeakMemory() as mem:
        x = np.ones(50_000_000, dtype=np.float32)  # 200 MB
        x.sum()
        import time

        time.sleep(0.1)
    assert mem.delta_mb > 100


def good_record():
    v = lib.experiment.variant(
        "teacher",
        "reference",
        {"accuracy": 0.8, "f1": 0.79},
        {"latency_ms_b1_p50": 5.0, "throughput_b32": 100.0, "speedup_vs_reference": 1.0},
        {"size_mb": 90.0, "num_params": 22_000_000},
    )
    return {
        "notebook": "00_baseline",
        "profile": "smoke",
        "created": "2026-11-23T10:00:00+00:00",
        "params": {"seed": 1},
        "env": {"python": "3.11", "torch": "2", "transformers": "5", "threads": 2, "isa": "AVX2", "cpu": "x"},
        "variants": [
            v,
            lib.experiment.variant("tfidf", "variant", {"accuracy": 0.7, "f1": 0.7}, unmeasured="a baseline"),
        ],
        "findings": {},
    }


def test_schema_accepts_good_record():
    lib.runner.records.validate_record(good_record())


def test_a_variant_lists_only_what_it_measured():
    rec = good_record()
    rec["variants"].append(
        {"name": "teacher-lime", "artifact": "teacher", "faithfulness": 0.4, "unmeasured": "an explanation"}
    )
    v = lib.runner.records.validate_record(rec)["variants"][-1]  # what record() writes
    assert v["role"] == "variant" and v["accuracy"] is None and v["throughput_b32"] is None
    assert v["artifact"] == "teacher" and v["faithfulness"] == 0.4  # a notebook's own keys are kept


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda r: r.pop("findings"), "findings: Field required"),
        (lambda r: r["variants"][0].update(role="variant"), "exactly one variant"),
        (lambda r: r["variants"][1].update(role="reference"), "exactly one variant"),
        (
            lambda r: r["variants"][0].update(accuracy=80.0),
            "variants.0.accuracy: Input should be less than or equal to 1",
        ),
        (lambda r: r["variants"][0].update(speedup_vs_reference=1.3), "must be 1.0"),
        (
            lambda r: r["variants"][0].update(role="baseline"),
            "variants.0.role: Input should be 'reference' or 'variant'",
        ),
        (
            lambda r: r["variants"][0].update(throughput_b32=-1),
            "throughput_b32: Input should be greater than 0",
        ),
        (lambda r: r["variants"][0].update(throughput_b32=float("inf")), "throughput_b32"),
        (lambda r: r.update(created="yesterday"), "created: Value error, Invalid isoformat string"),
        (lambda r: r["env"].pop("torch"), "env.torch: Field required"),
        (lambda r: r["variants"][1].update(name="teacher"), "unique"),
        (  # a row without accuracy, size or speed says why
            lambda r: r["variants"][1].pop("unmeasured"),
            "variant 'tfidf' has no size_mb, throughput_b32: measure it, or say why in `unmeasured`",
        ),
        (lambda r: r["variants"][1].update(unmeasured="  "), "say why in `unmeasured`"),
        (lambda r: r["variants"][0].update(accuracy=None), "variant 'teacher' has no accuracy"),
    ],
)
def test_schema_rejects(mutate, fragment):
    rec = copy.deepcopy(good_record())
    mutate(rec)
    with pytest.raises(ValueError, match=fragment):
        lib.runner.records.validate_record(rec)


def test_record_writes_valid_json_atomically(outputs):
    rec = good_record()
    fig = lib.runner.folders.figures_dir("smoke") / "x.png"
    path = lib.runner.records.record(
        "00_baseline",
        {"profile": "smoke", "seed": 1},
        rec["variants"],
        {"a": 1.0},
        figures=[fig],
        env=rec["env"],
    )
    data = json.loads(path.read_text())
    lib.runner.records.validate_record(data)
    assert data["figures"] == ["figures/x.png"]
    assert lib.runner.records.load("smoke", "00_baseline")["findings"] == {"a": 1.0}
    assert [p.name for p in path.parent.iterdir()] == ["00_baseline.json"]
    with pytest.raises(ValueError):
        lib.runner.records.record("00_baseline", {"profile": "smoke"}, [], {})
    assert json.loads(path.read_text()) == data  # a rejected record leaves the old one untouched


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "m.json"
    lib.utils.atomic_write_json(target, {"ok": 1})
    with pytest.raises(TypeError):
        lib.utils.atomic_write_json(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"ok": 1} and len(list(tmp_path.iterdir())) == 1


def test_comparable_record_names_every_difference(outputs):
    rec = good_record()
    rec["params"] = {"profile": "smoke", "seed": 1, "test_frac": 0.2, "model": "minilm-l6"}
    lib.utils.atomic_write_json(lib.runner.folders.metrics_path("smoke", "00_baseline"), rec)
    same = {"seed": 1, "test_frac": 0.2, "model": "minilm-l6", "batch_size": 8}
    assert lib.runner.records.comparable_record("smoke", "00_baseline", same)["notebook"] == "00_baseline"
    with pytest.raises(lib.errors.ParamError) as e:
        lib.runner.records.comparable_record("smoke", "00_baseline", {**same, "seed": 2, "test_frac": 0.3})
    assert "seed: 00_baseline used 1, here 2" in str(e.value) and "test_frac: " in str(e.value)
    with pytest.raises(lib.errors.ArtifactError, match="--only 00_baseline"):
        lib.runner.records.comparable_record("quick", "00_baseline", same)


def _finished_run(profile, rec, notebooks=("00_baseline",), clean=True, monkeypatch=None, **start):
    """A runner-made run with records for ``notebooks`` (every catalog notebook marked complete)."""
    if monkeypatch is not None:
        monkeypatch.setattr(
            lib.runner.folders,
            "git_state",
            lambda: {"commit": "abc1234def", "dirty": not clean, "changed": []},
        )
    run_dir = lib.runner.folders.start(
        profile, by="runner", notebooks=[nb.name for nb in lib.runner.catalog.NOTEBOOKS], **start
    )
    for name in notebooks:
        lib.runner.records.record(
            name,
            {"profile": profile, "seed": 1},
            rec["variants"],
            {"tfidf_accuracy": 0.7},
            env=rec["env"],
            headline=["tfidf_accuracy"],
        )
    for nb in lib.runner.catalog.NOTEBOOKS:
        lib.runner.folders.notebook_status(run_dir, nb.name, status="complete", seconds=60.0)
    lib.runner.folders.finish(run_dir, "complete")
    return run_dir


def test_readme_block_is_generated_from_a_clean_run(outputs, tmp_path, monkeypatch, capsys):
    rec = good_record()
    run_dir = _finished_run("default", rec, monkeypatch=monkeypatch)
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{lib.runner.readme.README_START}\nold\n{lib.runner.readme.README_END}\nend\n")
    assert lib.runner.readme.update_readme(readme, run_dir)
    text = readme.read_text()
    assert "| 00_baseline | teacher (reference) | 0.8000 |" in text and "old" not in text
    assert "`tfidf_accuracy` = 0.7" in text and text.startswith("intro") and text.endswith("end\n")
    assert f"CPU class **{rec['env']['isa']}**" in text  # a speed figure names the CPU class it belongs to
    assert f"run `{run_dir.name}` (commit `abc1234def`)" in text
    assert not lib.runner.readme.update_readme(readme, run_dir)  # idempotent
    assert lib.runner.cli.main(["--profile", "default", "--results", "latest"]) == 0  # printed, not published
    assert lib.runner.readme.markdown_results(run_dir) in capsys.readouterr().out


@pytest.mark.parametrize(
    "kind, why",
    [
        ("overrides", "it ran with -p overrides: num_epochs=1"),
        ("dirty", "the code was not a clean commit"),
        ("profile", "it ran profile 'smoke'"),
        ("hand", "it was run by hand"),
        ("failed", "it did not complete (status failed)"),
    ],
)
def test_readme_refuses_a_run_that_is_not_a_clean_default_run(outputs, tmp_path, monkeypatch, kind, why):
    rec = good_record()
    if kind == "hand" or kind == "failed":
        monkeypatch.setattr(
            lib.runner.folders, "git_state", lambda: {"commit": "abc", "dirty": False, "changed": []}
        )
        run_dir = lib.runner.folders.start(
            "default", by="hand" if kind == "hand" else "runner", notebooks=["00_baseline"]
        )
        lib.runner.folders.finish(run_dir, "failed" if kind == "failed" else "complete")
    else:
        run_dir = _finished_run(
            "smoke" if kind == "profile" else "default",
            rec,
            clean=kind != "dirty",
            monkeypatch=monkeypatch,
            overrides={"num_epochs": 1} if kind == "overrides" else None,
        )
    readme = tmp_path / "README.md"
    readme.write_text(f"{lib.runner.readme.README_START}\nold\n{lib.runner.readme.README_END}\n")
    with pytest.raises(lib.errors.LabError, match=re.escape(why)):
        lib.runner.readme.update_readme(readme, run_dir)
    assert "old" in readme.read_text()
    assert lib.runner.cli.main(["--readme", run_dir.name]) == 2  # `make readme` says no, too


def test_runner_stamps_run_time_and_readme_reports_the_budget(outputs, monkeypatch):
    from datetime import datetime, timedelta

    rec = good_record()
    monkeypatch.setattr(
        lib.runner.folders, "git_state", lambda: {"commit": "abc", "dirty": False, "changed": []}
    )
    run_dir = lib.runner.folders.start("default", by="runner", notebooks=["00_baseline", "01_lora_finetune"])
    before = datetime.now(UTC) - timedelta(seconds=5)
    lib.runner.records.record(
        "00_baseline", {"profile": "default", "seed": 1}, rec["variants"], {}, env=rec["env"]
    )
    assert lib.runner.records.stamp_run("default", "00_baseline", 45 * 60.0, before)
    assert lib.runner.records.load("default", "00_baseline")["run_seconds"] == 2700.0
    later = datetime.now(UTC) + timedelta(seconds=5)  # a record older than the run is not stamped
    assert not lib.runner.records.stamp_run("default", "00_baseline", 1.0, later)
    assert not lib.runner.records.stamp_run("default", "01_lora_finetune", 1.0, before)  # no record at all
    lib.runner.records.record(
        "01_lora_finetune", {"profile": "default", "seed": 1}, rec["variants"], {}, env=rec["env"]
    )
    lib.runner.records.stamp_run("default", "01_lora_finetune", 20 * 60.0, before)
    text = lib.runner.readme.markdown_results(run_dir)
    assert "00_baseline 45.0 min, 01_lora_finetune 20.0 min; 65.0 min in all" in text
    assert "budget for the whole collection: 60 min; **over by 5.0 min**" in text


def test_learning_path_and_time_notes_come_from_the_runs(outputs, tmp_path, monkeypatch):
    rec = good_record()
    note = lib.runner.readme.time_note("00_baseline", "lab")
    assert note.count("no earlier run here") == 2  # neither with these parameters nor on default
    run_dir = _finished_run("default", rec, monkeypatch=monkeypatch)  # every notebook 1.0 min
    path = tmp_path / "README.md"
    path.write_text(f"{lib.runner.readme.README_START}\nold\n{lib.runner.readme.README_END}\n")
    assert lib.runner.readme.update_readme(path, run_dir, block=lib.runner.readme.learning_path)
    text = path.read_text()
    for nb in lib.runner.catalog.NOTEBOOKS:
        assert f"| [{nb.name}]({nb.name}.ipynb) | {nb.title} |" in text and text.count("| 1.0 |") == len(
            lib.runner.catalog.NOTEBOOKS
        )
    assert "`teacher` (00_baseline)" in text and f"`default` run `{run_dir.name}`" in text
    cpu = lib.runner.folders.read_manifest(run_dir)["machine"]["cpu"]
    assert lib.runner.readme.time_note("00_baseline", "default") == (
        "**Time**, from earlier runs on this machine: with `default`'s parameters: 1.0 min "
        f"(median of 1 run(s); newest on {cpu})."
    )
    hand = lib.runner.folders.begin_hand_run("lab", "00_baseline")  # a notebook run by hand is timed too
    lib.runner.records.record(
        "00_baseline", {"profile": "lab", "seed": 1}, rec["variants"], {}, env=rec["env"]
    )
    assert lib.runner.folders.read_manifest(hand)["notebooks"]["00_baseline"]["seconds"] >= 0
    assert "no earlier run here" not in lib.runner.readme.time_note("00_baseline", "lab").split(";")[0]


def test_the_notebooks_readme_has_the_generated_block_markers():
    text = (lib.runner.paths.NOTEBOOKS / "README.md").read_text(encoding="utf-8")
    assert lib.runner.readme.README_START in text and lib.runner.readme.README_END in text


def test_the_readme_has_the_generated_block_markers():
    text = (lib.runner.paths.ROOT / "README.md").read_text(encoding="utf-8")
    assert lib.runner.readme.README_START in text and lib.runner.readme.README_END in text


def test_speed_conditions_are_stated_and_unsteady_figures_named():
    rec = good_record()
    rec["variants"][0].update(load_average=1.9, throughput_b32_spread=0.04)
    rec["variants"].append(
        {
            **rec["variants"][0],
            "name": "int8",
            "role": "variant",
            "load_average": 2.4,
            "throughput_b32_spread": 0.31,
        }
    )
    text = lib.runner.readme.speed_trust([rec])
    assert (
        "load average at most 2.40" in text
        and "largest repeat spread of a batch-32 throughput 31% (00_baseline int8)" in text
    )
    assert "**unsteady (spread over 25%): 00_baseline int8**" in text
    rec["variants"][-1]["throughput_b32_spread"] = 0.05
    assert "unsteady" not in lib.runner.readme.speed_trust([rec])
    assert lib.runner.readme.speed_trust([{"variants": [{"throughput_b32": None}]}]) == ""


def test_readme_numbers_format_booleans_as_words():
    assert lib.runner.records.fmt(True, ".4g") == "`true`" and lib.runner.records.fmt(0.5, ".4g") == "0.5"
    assert (
        lib.runner.records.fmt({"lime": 0.49351, "random": None}, ".3g") == "{lime: 0.494, random: –}"
    )  # a finding per method
