"""The runner: everything it must refuse before running, and how it reports a failing notebook."""

from __future__ import annotations

import pytest

import lib
from lib import catalog
from lib.errors import ParamError
from lib.run import main, plan


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err


def test_list(capsys):
    code, out = run(capsys, "--list")
    assert code == 0 and "00_baseline" in out and "teacher" in out and "smoke" in out


@pytest.mark.parametrize("argv, fragment", [
    (["--profile", "nope"], "unknown profile 'nope'"),
    (["--only", "07_nothing"], "unknown notebook"),
    (["--profile", "smoke", "-p", "num_epochz=1"], "override 'num_epochz' is not a parameter"),
    (["--profile", "smoke", "-p", "num_epochs=two"], "num_epochs: expected integer"),
    (["--profile", "smoke", "-p", "test_frac=1.5"], "test_frac: must be in"),
    (["--profile", "smoke", "-p", "learning_rate=1e-3"], "write 1.0e-3"),
    (["--profile", "smoke", "-p", "profile=x"], "--profile"),
    (["--profile", "smoke", "-p", "oops"], "name=value"),
    (["--profile", "smoke", "-p", "sparsities=[0.5, 1.5]"], "sparsities: must be in [0, 1)"),
    (["--profile", "smoke", "-p", "structured_fractions=[1.0]"], "structured_fractions: must be in (0, 1)"),
    (["--profile", "smoke", "-p", "importance_methods=[random]"], "importance_methods: 'random' is not one of"),
    (["--profile", "smoke", "-p", "pooling=max"], "pooling: 'max' is not one of"),
    (["--profile", "smoke", "-p", "lora_ranks=[]"], "lora_ranks: must not be an empty list"),
])
def test_refuses_bad_input_before_running(capsys, outputs, argv, fragment):
    code, out = run(capsys, *argv)
    assert code == 2 and fragment in out
    assert not (outputs / "smoke" / "notebooks").exists()  # nothing ran


def test_only_takes_commas_or_spaces():
    from lib.run import select

    assert [nb.name for nb in select(["02_prune,00_baseline"])] == ["00_baseline", "02_prune"]
    assert [nb.name for nb in select(["00_baseline", "02_prune"])] == ["00_baseline", "02_prune"]


def test_check_only(capsys, outputs):
    code, out = run(capsys, "--profile", "smoke", "--check")
    assert code == 0 and "valid" in out


def test_missing_or_corrupt_prerequisite(monkeypatch, outputs, tiny):
    fake = catalog.Notebook("00_baseline", "needs a teacher", needs=("teacher",))
    monkeypatch.setattr(catalog, "NOTEBOOKS", (fake, *catalog.NOTEBOOKS[1:]))
    monkeypatch.setattr(catalog, "BY_NAME", {**catalog.BY_NAME, "00_baseline": fake})
    with pytest.raises(ParamError, match=r"needs the 'teacher' artifact, which is missing"):
        plan("smoke", ["00_baseline"], [])
    make, tok = tiny
    path = lib.artifacts.save(lib.paths.artifact_dir("smoke", "teacher"), make(), tok, {})
    plan("smoke", ["00_baseline"], [])  # present: fine
    (path / "metadata.json").write_text("{")
    with pytest.raises(ParamError, match="corrupt"):
        plan("smoke", ["00_baseline"], [])


def test_later_notebook_alone_needs_the_teacher(outputs):
    with pytest.raises(ParamError, match=r"01_lora_finetune needs the 'teacher' artifact.*--only 00_baseline"):
        plan("smoke", ["01_lora_finetune"], [])
    assert len(plan("smoke", ["00_baseline", "01_lora_finetune"], [])) == 2  # made earlier in the same run


def test_prerequisite_made_earlier_in_the_same_run_is_fine(monkeypatch, outputs):
    assert [nb.name for nb, _ in plan("smoke", None, [])][:2] == ["00_baseline", "01_lora_finetune"]


@pytest.mark.notebook
def test_failing_notebook_is_reported_with_cell_error_and_path(capsys, outputs, tmp_path):
    missing = tmp_path / "nope.csv"
    code, out = run(capsys, "--profile", "smoke", "-p", f"dataset=csv:{missing}")
    assert code == 1
    assert "FAILED: 00_baseline" in out and "DataError" in out and "does not exist" in out
    failed = outputs / "smoke" / "notebooks" / "00_baseline.failed.ipynb"
    assert str(failed) in out and failed.exists()
    assert not (outputs / "smoke" / "metrics" / "00_baseline.json").exists()


@pytest.mark.notebook
def test_cell_timeout_is_reported_as_a_timeout(capsys, outputs):
    code, out = run(capsys, "--profile", "smoke", "--execution-timeout", "1")
    assert code == 1
    assert "FAILED: 00_baseline" in out and "--execution-timeout=1s" in out
