"""The runner: everything it must refuse before running, and how it reports a failing notebook."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import lib
from lib.errors import ParamError
from lib.runner import catalog
from lib.runner.cli import main, plan


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err


def test_list(capsys):
    code, out = run(capsys, "--list")
    assert code == 0 and "00_baseline" in out and "teacher" in out and "smoke" in out


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--profile", "nope"], "unknown profile 'nope'"),
        (["--only", "07_nothing"], "unknown notebook"),
        (["--profile", "smoke", "-p", "num_epochz=1"], "override 'num_epochz' is not a parameter"),
        (["--profile", "smoke", "-p", "num_epochs=two"], "num_epochs: should be a valid integer"),
        (["--profile", "smoke", "-p", "test_frac=1.5"], "test_frac: should be less than 1, got 1.5"),
        (["--profile", "smoke", "-p", "learning_rate=1e-3"], "write 1.0e-3"),
        (["--profile", "smoke", "-p", "profile=x"], "--profile"),
        (["--profile", "smoke", "-p", "oops"], "name=value"),
        (
            ["--profile", "smoke", "-p", "sparsities=[0.5, 1.5]"],
            "sparsities.1: should be less than 1, got 1.5",
        ),
        (
            ["--profile", "smoke", "-p", "structured_fractions=[1.0]"],
            "structured_fractions.0: should be less than 1, got 1.0",
        ),
        (
            ["--profile", "smoke", "-p", "importance_methods=[random]"],
            "importance_methods.0: should be 'gradient' or 'magnitude'",
        ),
        (["--profile", "smoke", "-p", "pooling=max"], "pooling: should be 'mean' or 'cls', got 'max'"),
        (["--profile", "smoke", "-p", "lora_ranks=[]"], "lora_ranks: List should have at least 1 item"),
    ],
)
def test_refuses_bad_input_before_running(capsys, outputs, argv, fragment):
    code, out = run(capsys, *argv)
    assert code == 2 and fragment in out
    assert not (outputs / "smoke" / "runs").exists()  # nothing ran, no run folder


def test_only_takes_commas_or_spaces():
    from lib.runner.cli import select

    assert [nb.name for nb in select(["02_prune,00_baseline"])] == ["00_baseline", "02_prune"]
    assert [nb.name for nb in select(["00_baseline", "02_prune"])] == ["00_baseline", "02_prune"]


def test_check_only(capsys, outputs):
    code, out = run(capsys, "--profile", "smoke", "--check")
    assert code == 0 and "valid" in out


def test_missing_or_corrupt_prerequisite(monkeypatch, outputs, tiny):
    fake = catalog.Notebook("00_baseline", needs=("teacher",))
    monkeypatch.setattr(catalog, "NOTEBOOKS", (fake, *catalog.NOTEBOOKS[1:]))
    monkeypatch.setattr(catalog, "BY_NAME", {**catalog.BY_NAME, "00_baseline": fake})
    with pytest.raises(ParamError, match=r"00_baseline: the 'teacher' artifact .* is missing"):
        plan("smoke", ["00_baseline"], [])
    make, tok = tiny
    run_dir = lib.runner.folders.start("smoke", by="runner", notebooks=["00_baseline"])
    path = lib.artifacts.save(lib.runner.folders.artifact_dir("smoke", "teacher"), make(), tok, {})
    lib.runner.folders.finish(run_dir, "complete")
    plan("smoke", ["00_baseline"], [])  # present (in the latest complete run): fine
    (path / "metadata.json").write_text("{")
    with pytest.raises(ParamError, match="corrupt"):
        plan("smoke", ["00_baseline"], [])


def test_later_notebook_alone_needs_the_teacher(outputs):
    with pytest.raises(ParamError, match=r"01_lora_finetune: the 'teacher' artifact.*--only 00_baseline"):
        plan("smoke", ["01_lora_finetune"], [])
    assert len(plan("smoke", ["00_baseline", "01_lora_finetune"], [])) == 2  # made earlier in the same run


def test_prerequisite_made_earlier_in_the_same_run_is_fine(monkeypatch, outputs):
    assert [nb.name for nb, _ in plan("smoke", None, [])][:2] == ["00_baseline", "01_lora_finetune"]


@pytest.mark.notebook
def test_failing_notebook_is_reported_with_cell_error_and_path(capsys, outputs, tmp_path):
    tiny = (
        tmp_path / "tiny.csv"
    )  # a readable CSV with two classes (the pre-flight passes), too small to split
    tiny.write_text("text,label\ngood,pos\nbad,neg\nfine,pos\n")
    code, out = run(capsys, "--profile", "smoke", "-p", f"dataset=csv:{tiny}", "--only", "00_baseline")
    assert code == 1
    assert "FAILED: 00_baseline" in out and "DataError" in out and "one class only" in out
    (run_dir,) = lib.runner.folders.all_runs("smoke")
    failed = run_dir / "notebooks" / "00_baseline.failed.ipynb"
    assert str(failed) in out and failed.exists()
    assert not (run_dir / "metrics" / "00_baseline.json").exists()
    assert (
        lib.runner.folders.read_manifest(run_dir)["status"] == "failed"
        and lib.runner.folders.latest("smoke") is None
    )
    # In the notebook, a project error shows its message, not a traceback through lib.
    cells = json.loads(failed.read_text())["cells"]
    (error,) = [
        o
        for c in cells
        if c["cell_type"] == "code"
        for o in c.get("outputs", [])
        if o["output_type"] == "error"
    ]
    assert (
        error["ename"] == "DataError"
        and len(error["traceback"]) == 1
        and "one class only" in error["traceback"][0]
    )


@pytest.mark.notebook
def test_cell_timeout_is_reported_as_a_timeout(capsys, outputs):
    # nbclient looks at the clock every 5 s: 20 epochs make the training cell run far longer than that
    code, out = run(
        capsys,
        "--profile",
        "smoke",
        "--only",
        "00_baseline",
        "--execution-timeout",
        "1",
        "-p",
        "num_epochs=20",
    )
    assert code == 1
    assert "FAILED: 00_baseline" in out and "--execution-timeout=1s" in out


def _start_runner(outputs, *argv):
    env = {**os.environ, "MUXL_OUTPUTS": str(outputs)}
    # the tiny random BERT: the runner's behaviour does not depend on the model, and a run takes half the time
    cmd = [
        sys.executable,
        "-m",
        "lib.runner",
        "--profile",
        "smoke",
        "--only",
        "00_baseline",
        "-p",
        "model=tiny-bert",
    ]
    return subprocess.Popen(
        [*cmd, *argv],
        cwd=lib.runner.paths.ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _wait_for_kernel(outputs, proc, seconds=60):
    t0 = time.time()
    while time.time() - t0 < seconds:
        found = list(outputs.glob("smoke/runs/*/.runtime/tmp*.json"))
        if found:
            return found[0].parent.parent
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.2)
    raise AssertionError("the runner started no kernel")


def _kernels_of(run_dir):
    """Processes whose command line names this run's kernel connection file."""
    out = []
    for p in os.listdir("/proc"):
        try:
            if p.isdigit() and str(run_dir) in open(f"/proc/{p}/cmdline").read():
                out.append(int(p))
        except OSError:
            pass
    return out


@pytest.mark.notebook
def test_interrupted_and_killed_runs_are_marked_and_the_next_start_sweeps_the_killed_one(outputs):
    """Ctrl-C, SIGTERM and SIGKILL in the middle of a notebook: the run is marked incomplete, `latest` stays
    where it was, no kernel and no kernel file is left behind, and the next start marks the killed one."""
    ended = {}
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        proc = _start_runner(outputs)
        run_dir = _wait_for_kernel(outputs, proc)
        time.sleep(4)  # well inside 00_baseline's cells
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)  # what Ctrl-C in a terminal does: the whole foreground group
        else:
            proc.send_signal(sig)
        out = proc.communicate(timeout=60)[0]
        ended[sig] = run_dir
        if sig != signal.SIGKILL:
            assert proc.returncode == 130 and "interrupted" in out and "Traceback" not in out, out
            assert lib.runner.folders.read_manifest(run_dir)["status"] == "interrupted"
            assert (run_dir / "notebooks" / "00_baseline.interrupted.ipynb").exists()
            assert not (run_dir / ".runtime").exists() and not _kernels_of(run_dir)
        assert lib.runner.folders.latest("smoke") is None
    killed = ended[signal.SIGKILL]
    assert lib.runner.folders.status(lib.runner.folders.read_manifest(killed)) == "killed"
    for _ in range(50):  # the orphaned kernel notices its parent is gone and exits
        if not _kernels_of(killed):
            break
        time.sleep(0.2)
    assert not _kernels_of(killed)
    nxt = lib.runner.folders.start("smoke", by="runner", notebooks=[])  # the next run's start sweeps it
    assert (
        lib.runner.folders.read_manifest(killed)["status"] == "killed" and not (killed / ".runtime").exists()
    )
    lib.runner.folders.finish(nxt, "complete")  # (that a run then completes: the test below)
    assert lib.runner.folders.latest("smoke") == nxt


@pytest.mark.notebook
def test_two_runs_two_folders_and_an_override_run_is_marked_and_refused_by_readme(capsys, outputs, tmp_path):
    tiny = ["-p", "model=tiny-bert"]  # the runner's behaviour does not depend on the model
    for argv in ([*tiny, "--no-html"], [*tiny, "-p", "num_epochs=2"]):
        code, out = run(capsys, "--profile", "smoke", "--only", "00_baseline", *argv)
        assert code == 0, out
    first, second = lib.runner.folders.all_runs("smoke")
    assert not (first / "report.html").exists() and (second / "report.html").exists()  # --no-html: no page
    assert lib.runner.folders.latest("smoke") == second
    m1, m2 = lib.runner.folders.read_manifest(first), lib.runner.folders.read_manifest(second)
    assert m1["status"] == m2["status"] == "complete" and m1["overrides"] == {"model": "tiny-bert"}
    assert m2["overrides"] == {"model": "tiny-bert", "num_epochs": 2}
    assert m2["override_diff"]["num_epochs"] == {"profile": 1, "run": 2}
    assert m2["notebooks"]["00_baseline"]["seconds"] > 0 and m2["machine"]["isa"] == lib.utils.isa()
    stolen = m2["notebooks"]["00_baseline"]["steal_share"]  # the hypervisor's share of the CPU meanwhile
    assert (stolen is None) == (lib.utils.cpu_ticks() is None) and (stolen is None or 0 <= stolen < 1)
    readme = tmp_path / "README.md"
    readme.write_text(f"{lib.runner.readme.README_START}\nold\n{lib.runner.readme.README_END}\n")
    with pytest.raises(lib.errors.LabError, match="num_epochs=2"):
        lib.runner.readme.update_readme(readme, second, "smoke")
