"""Notebook tier: hygiene of the committed notebooks, and the smoke profile run end to end.

(``pytest --nbval-lax`` additionally executes every notebook in ``notebooks/`` with its own defaults.)
"""

from __future__ import annotations

import json

import pytest

import lib
from lib.run import main

NOTEBOOKS = sorted(lib.paths.NOTEBOOKS.glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebooks_are_clean(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert not cell.get("outputs"), f"{path.name} cell {i} has outputs: strip them (make clean-notebooks)"
            assert cell.get("execution_count") is None, f"{path.name} cell {i} has an execution count"
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
    assert nb["cells"].index(tagged[0]) <= 2, "the parameters cell belongs near the top"
    sources = ["".join(c["source"]) for c in nb["cells"]]
    assert any(s.startswith("## Summary") for s in sources) and any(s.startswith("## Exercises") for s in sources)
    assert "sys.path" not in "".join(sources), "import lib as an installed package, no sys.path hacks"


def test_no_model_files_are_committed():
    """Models and run outputs are written under outputs/ (git-ignored); a weights file in git is a mistake."""
    import subprocess

    root = lib.paths.NOTEBOOKS.parent
    try:
        tracked = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    binary = (".onnx", ".data", ".safetensors", ".bin", ".pt", ".pth", ".ckpt")
    assert not [f for f in tracked.splitlines() if f.endswith(binary)]


def test_every_notebook_is_in_the_catalog():
    assert [p.stem for p in NOTEBOOKS] == [nb.name for nb in lib.catalog.NOTEBOOKS]


@pytest.mark.notebook
def test_smoke_profile_end_to_end(outputs, capsys):
    assert main(["--profile", "smoke"]) == 0
    out = capsys.readouterr().out
    assert "Done:" in out and "teacher" in out
    for nb in lib.catalog.NOTEBOOKS:
        rec = lib.results.load("smoke", nb.name)
        lib.results.validate_record(rec)
        assert rec["profile"] == "smoke" and rec["params"]["max_train_samples"] == 128
        assert rec["run_seconds"] > 0  # stamped by the runner
        assert (outputs / "smoke" / "notebooks" / f"{nb.name}.ipynb").exists()
        for fig in rec["figures"]:
            assert (outputs / "smoke" / fig).stat().st_size > 1000
        for artifact in nb.produces:
            lib.models.require_artifact("smoke", artifact)
    rec = lib.results.load("smoke", "00_baseline")
    f = rec["findings"]
    assert f["rows_train"] == 128 and f["rows_test"] == 64
    assert f["reload_max_abs_logit_diff"] == 0.0
    assert 0.3 < f["lib_vs_trainer_speed_ratio"] < 3.0  # same work: neither loop is wildly slower
    teacher = next(v for v in rec["variants"] if v["name"] == "teacher")
    assert 20e6 < teacher["num_params"] < 25e6 and 80 < teacher["size_mb"] < 100  # the real MiniLM
    assert not list((outputs / "smoke").rglob("*.tmp"))  # no half-written files

    lora = lib.results.load("smoke", "01_lora_finetune")["findings"]
    assert lora["adapter_mb"] < lora["full_checkpoint_mb"] / 50  # the adapter really is small
    assert lora["merged_max_abs_logit_diff"] < 1e-3 and lora["merged_label_agreement"] == 1.0

    rec = lib.results.load("smoke", "02_prune")
    f, by_name = rec["findings"], {v["name"]: v for v in rec["variants"]}
    assert f["reload_max_abs_logit_diff"] == 0.0  # the pruned model reloads with its shapes, exactly
    assert abs(by_name["unstructured-90-recovered"]["sparsity"] - 0.9) < 0.01  # zeros held through recovery
    assert by_name["unstructured-90-recovered"]["size_mb"] > 0.95 * by_name["teacher"]["size_mb"]  # zeros: same file
    pruned = by_name["structured-50-recovered"]
    assert pruned["num_params"] < by_name["teacher"]["num_params"] and 0.4 < pruned["sparsity"] < 0.6
    assert {v["method"] for v in rec["variants"]} == {"none", "unstructured", "structured"}

    rec = lib.results.load("smoke", "03_quantize")
    f, by_name = rec["findings"], {v["name"]: v for v in rec["variants"]}
    assert by_name["fp32"]["role"] == "reference" and by_name["fp32"]["agreement"] == 1.0
    assert {(v["backend"], v["dtype"]) for v in rec["variants"]} >= {("torch", "int8"), ("onnxruntime", "int8")}
    assert all(0.0 <= v["agreement"] <= 1.0 for v in rec["variants"])
    best = by_name[f["best_int8"]]
    assert best["dtype"] == "int8" and best["size_mb"] < by_name["fp32"]["size_mb"] / 3.5  # embeddings quantized too
    assert f["reload_label_agreement"] == 1.0 and f["reload_max_abs_logit_diff"] == 0.0
    assert 0.5 < f["embedding_share"] < 0.6  # MiniLM: half its weights are the embedding table

    rec = lib.results.load("smoke", "04_distill")
    f, by_name = rec["findings"], {v["name"]: v for v in rec["variants"]}
    assert {"teacher", "student-kd", "student-labels"} <= set(by_name) and by_name["teacher"]["role"] == "reference"
    assert by_name["student-kd"]["layers"] == 3 and by_name["student-kd"]["num_params"] < by_name["teacher"]["num_params"]
    assert f["retention"] == by_name["student-kd"]["accuracy"] / by_name["teacher"]["accuracy"]
    assert f["teacher_logits_cached"] == 128 and f["reload_max_abs_logit_diff"] == 0.0
    assert any(v.get("sweep") for v in rec["variants"])
