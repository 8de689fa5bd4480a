"""MLflow tracking (opt-in): records land in a local store, one MLflow run per notebook under its run folder's
run."""

from __future__ import annotations

import pytest

import lib
from tests.test_bench_results import good_record


def test_params_and_metrics_are_mlflow_shaped():
    rec = good_record()
    rec["findings"] = {"tfidf_accuracy": 0.7, "flag": True, "name": "x", "ratio (x)": 2}
    m = lib.runner.tracking.metrics_of(rec, lib.runner.records.METRICS)
    assert m["tfidf_accuracy"] == 0.7 and "flag" not in m and "name" not in m and m["ratio _x_"] == 2.0
    assert m["teacher/accuracy"] == 0.8
    assert lib.runner.tracking.flatten_params({"ranks": [1, 4], "lr": 1e-4}) == {
        "ranks": "[1, 4]",
        "lr": "0.0001",
    }


def test_off_unless_asked(monkeypatch):
    monkeypatch.delenv(lib.runner.tracking.ENV, raising=False)
    assert not lib.runner.tracking.enabled()
    monkeypatch.setenv(lib.runner.tracking.ENV, "1")
    assert lib.runner.tracking.enabled()


def test_each_notebook_is_a_run_grouped_under_its_run_folder(outputs, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv(lib.runner.tracking.ENV, "1")
    rec = good_record()
    folders = []
    for _ in range(2):
        d = lib.runner.folders.start("smoke", by="runner", notebooks=["00_baseline", "01_lora_finetune"])
        for nb in ("00_baseline", "01_lora_finetune"):
            lib.runner.records.record(
                nb, {"profile": "smoke", "seed": 1}, rec["variants"], {"tfidf_accuracy": 0.7}, env=rec["env"]
            )
        lib.runner.folders.finish(d, "complete")
        folders.append(d.name)
    assert (outputs / "mlflow.db").exists()
    mlflow.set_tracking_uri(lib.runner.tracking.tracking_uri())
    runs = mlflow.search_runs(experiment_names=["model-ux-lab/smoke"], output_format="list")
    parents = {r.info.run_name: r.info.run_id for r in runs if r.data.tags.get("muxl.parent") == "true"}
    assert sorted(parents) == sorted(folders)
    children = [r for r in runs if r.data.tags.get("muxl.parent") != "true"]
    assert len(children) == 4
    for r in children:
        assert r.data.tags["mlflow.parentRunId"] == parents[r.data.tags["muxl.run_id"]]
        assert r.data.metrics["teacher/accuracy"] == 0.8 and r.data.params["seed"] == "1"
        assert r.info.run_name in ("00_baseline", "01_lora_finetune")
