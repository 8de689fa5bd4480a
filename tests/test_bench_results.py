"""Benchmarks (interleaved comparisons, sizes), the metrics record schema, atomic writes."""

from __future__ import annotations

import copy
import json

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
    ratio = df["throughput_b32"] / df.loc["ref", "throughput_b32"]  # speed-up = throughput over the reference's
    assert df["speedup_vs_reference"].tolist() == pytest.approx(ratio.tolist())
    assert df.loc["other", "latency_ratio_vs_reference"] == pytest.approx(
        df.loc["other", "latency_ms_b1_p50"] / df.loc["ref", "latency_ms_b1_p50"])
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
    v = lib.results.variant("teacher", "reference", {"accuracy": 0.8, "f1": 0.79},
                            {"latency_ms_b1_p50": 5.0, "throughput_b32": 100.0, "speedup_vs_reference": 1.0},
                            {"size_mb": 90.0, "num_params": 22_000_000})
    return {"notebook": "00_baseline", "profile": "smoke", "created": "2026-11-23T10:00:00+00:00",
            "params": {"seed": 1}, "env": {"python": "3.11", "torch": "2", "transformers": "5", "threads": 2, "isa": "AVX2",
                                           "cpu": "x"},
            "variants": [v, lib.results.variant("tfidf", "variant", {"accuracy": 0.7, "f1": 0.7})],
            "findings": {}}


def test_schema_accepts_good_record():
    lib.results.validate_record(good_record())


@pytest.mark.parametrize("mutate, fragment", [
    (lambda r: r.pop("findings"), "missing top-level key 'findings'"),
    (lambda r: r["variants"][0].update(role="variant"), "exactly one variant"),
    (lambda r: r["variants"][1].update(role="reference"), "exactly one variant"),
    (lambda r: r["variants"][0].update(accuracy=80.0), "fraction"),
    (lambda r: r["variants"][0].update(speedup_vs_reference=1.3), "must be 1.0"),
    (lambda r: r["variants"][0].pop("num_params"), "lacks 'num_params'"),
    (lambda r: r["variants"][0].update(throughput_b32=-1), "positive"),
    (lambda r: r.update(created="yesterday"), "ISO"),
    (lambda r: r["env"].pop("torch"), "env lacks 'torch'"),
    (lambda r: r["variants"][1].update(name="teacher"), "unique"),
])
def test_schema_rejects(mutate, fragment):
    rec = copy.deepcopy(good_record())
    mutate(rec)
    with pytest.raises(ValueError, match=fragment):
        lib.results.validate_record(rec)


def test_record_writes_valid_json_atomically(outputs):
    rec = good_record()
    fig = lib.paths.figures_dir("smoke") / "x.png"
    path = lib.results.record("00_baseline", {"profile": "smoke", "seed": 1}, rec["variants"], {"a": 1.0},
                              figures=[fig], env=rec["env"])
    data = json.loads(path.read_text())
    lib.results.validate_record(data)
    assert data["figures"] == ["figures/x.png"]
    assert lib.results.load("smoke", "00_baseline")["findings"] == {"a": 1.0}
    assert [p.name for p in path.parent.iterdir()] == ["00_baseline.json"]
    with pytest.raises(ValueError):
        lib.results.record("00_baseline", {"profile": "smoke"}, [], {})
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
    lib.utils.atomic_write_json(lib.paths.metrics_path("smoke", "00_baseline"), rec)
    same = {"seed": 1, "test_frac": 0.2, "model": "minilm-l6", "batch_size": 8}
    assert lib.results.comparable_record("smoke", "00_baseline", same)["notebook"] == "00_baseline"
    with pytest.raises(lib.errors.ParamError) as e:
        lib.results.comparable_record("smoke", "00_baseline", {**same, "seed": 2, "test_frac": 0.3})
    assert "seed: 00_baseline used 1, this notebook has 2" in str(e.value) and "test_frac: " in str(e.value)
    with pytest.raises(lib.errors.ArtifactError, match="--only 00_baseline"):
        lib.results.comparable_record("quick", "00_baseline", same)


def test_readme_block_is_generated_from_records(outputs, tmp_path):
    rec = good_record()
    lib.results.record("00_baseline", {"profile": "smoke", "seed": 1}, rec["variants"], {"tfidf_accuracy": 0.7},
                       env=rec["env"], headline=["tfidf_accuracy"])
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{lib.results.README_START.format(profile='smoke')}\nold\n{lib.results.README_END}\nend\n")
    assert lib.results.update_readme(readme, "smoke", ["00_baseline"])
    text = readme.read_text()
    assert "| 00_baseline | teacher (reference) | 0.8000 |" in text and "old" not in text
    assert "`tfidf_accuracy` = 0.7" in text and text.startswith("intro") and text.endswith("end\n")
    assert f"CPU class **{rec['env']['isa']}**" in text  # a speed figure names the CPU class it belongs to
    assert not lib.results.update_readme(readme, "smoke", ["00_baseline"])  # idempotent


def test_runner_stamps_run_time_and_readme_reports_the_budget(outputs):
    from datetime import datetime, timedelta, timezone

    rec = good_record()
    before = datetime.now(timezone.utc) - timedelta(seconds=5)
    lib.results.record("00_baseline", {"profile": "default", "seed": 1}, rec["variants"], {}, env=rec["env"])
    assert lib.results.stamp_run("default", "00_baseline", 45 * 60.0, before)
    assert lib.results.load("default", "00_baseline")["run_seconds"] == 2700.0
    later = datetime.now(timezone.utc) + timedelta(seconds=5)  # a record older than the run is not stamped
    assert not lib.results.stamp_run("default", "00_baseline", 1.0, later)
    assert not lib.results.stamp_run("default", "01_lora_finetune", 1.0, before)  # no record at all
    lib.results.record("01_lora_finetune", {"profile": "default", "seed": 1}, rec["variants"], {}, env=rec["env"])
    lib.results.stamp_run("default", "01_lora_finetune", 20 * 60.0, before)
    text = lib.results.markdown_results("default", ["00_baseline", "01_lora_finetune"])
    assert "00_baseline 45.0 min, 01_lora_finetune 20.0 min; 65.0 min in all" in text
    assert "budget for the whole collection: 60 min; **over by 5.0 min**" in text
