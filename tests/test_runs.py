"""Run folders (lib.runner.folders): one folder per run with its manifest, `latest`, inputs taken from the
right run, hand runs, housekeeping; and the defects of issue #13 part 4, each with a test that failed before
its fix."""

from __future__ import annotations

import json
import os
import stat
import struct
import subprocess
import time

import pytest

import lib
from lib.errors import ArtifactError, DataError, LabError, ParamError
from lib.runner import folders
from lib.runner.cli import main


def cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err


# ------------------------------------------------------------------------ lifecycle


def test_a_run_has_a_manifest_and_latest_moves_only_to_a_complete_run(outputs):
    a = folders.start(
        "smoke",
        by="runner",
        notebooks=["00_baseline"],
        overrides={"num_epochs": 1},
        override_diff={"num_epochs": {"profile": 2, "run": 1}},
    )
    m = folders.read_manifest(a)
    assert m["status"] == "running" and m["profile"] == "smoke" and m["overrides"] == {"num_epochs": 1}
    assert m["machine"]["isa"] == lib.utils.isa() and m["packages"]["torch"] and "commit" in m["git"]
    assert folders.latest("smoke") is None
    folders.finish(a, "complete")
    assert folders.latest("smoke") == a and (outputs / "smoke" / "latest").is_symlink()
    b = folders.start("smoke", by="runner", notebooks=["00_baseline"])
    folders.finish(b, "failed")
    assert folders.latest("smoke") == a  # a failed run never becomes latest
    assert a.name < b.name and folders.all_runs("smoke") == [a, b]  # ids sort by time
    with pytest.raises(LabError, match="never modified"):
        folders.update(a, status="running")


def test_a_dead_runs_status_is_killed_and_the_next_start_marks_it(outputs):
    a = folders.start("smoke", by="runner", notebooks=["00_baseline"])
    m = folders.read_manifest(a)
    m["pid"] = 2**22 + 12345  # no such process
    (a / "manifest.json").write_text(json.dumps(m))
    (a / ".runtime").mkdir()
    (a / ".runtime" / "kernel-00_baseline.json").write_text("{}")
    assert folders.status(folders.read_manifest(a)) == "killed"
    folders.start("smoke", by="runner", notebooks=["00_baseline"])
    assert folders.read_manifest(a)["status"] == "killed" and not (a / ".runtime").exists()


def test_inputs_come_from_this_run_else_the_newest_complete_run_else_the_named_one(outputs):
    folders._inputs["models/student"] = "an-earlier-run"  # what this process read for a run before: not ours
    old = folders.start("smoke", by="runner", notebooks=["00_baseline"])
    (old / "models" / "teacher").mkdir(parents=True)
    folders.finish(old, "complete")
    newer = folders.start("smoke", by="runner", notebooks=["00_baseline"])
    (newer / "models" / "teacher").mkdir(parents=True)
    folders.finish(newer, "failed")  # incomplete runs are not used implicitly
    here = folders.start("smoke", by="runner", notebooks=["01_lora_finetune"])
    assert folders.source("smoke", "models/teacher") == old
    assert folders.inputs() == {"models/teacher": old.name}
    assert folders.source("smoke", "models/teacher", newer.name) == newer  # named explicitly: used
    (here / "models" / "teacher").mkdir(parents=True)
    assert folders.source("smoke", "models/teacher") == here
    with pytest.raises(ArtifactError, match="no run with id 'nope'"):
        folders.source("smoke", "models/teacher", "nope")


def test_a_hand_run_is_its_own_run_and_completes_with_its_record(outputs, monkeypatch):
    monkeypatch.delenv(folders.ENV_DIR, raising=False)
    monkeypatch.delenv(folders.ENV_BY, raising=False)
    defaults = {n: d.default for n, d in lib.runner.params.declared("00_baseline").items()}
    P = lib.runner.params.from_namespace(defaults, "00_baseline")
    run_dir = folders.current(P.profile)
    assert P.profile == "lab" and run_dir.parent == outputs / "lab" / "runs"
    assert folders.read_manifest(run_dir)["by"] == "hand"
    from tests.test_bench_results import good_record

    rec = good_record()
    lib.runner.records.record("00_baseline", P.as_dict(), rec["variants"], {}, env=rec["env"])
    assert folders.read_manifest(run_dir)["status"] == "complete" and folders.latest("lab") == run_dir
    with pytest.raises(LabError, match="re-run the notebook from the top"):
        folders.figures_dir("lab")  # the ended run is never modified
    lib.runner.params.from_namespace(defaults, "00_baseline")  # running the notebook again: a new run
    assert folders.current("lab") != run_dir


def test_delete_moves_latest_back(outputs):
    a = folders.start("smoke", by="runner", notebooks=[])
    folders.finish(a, "complete")
    b = folders.start("smoke", by="runner", notebooks=[])
    folders.finish(b, "complete")
    assert folders.latest("smoke") == b
    folders.delete([b])
    assert folders.latest("smoke") == a and not b.exists()
    c = folders.start("smoke", by="runner", notebooks=[])
    with pytest.raises(LabError, match="still running"):
        folders.delete([c])


def test_runs_list_compare_and_delete_from_the_command_line(capsys, outputs):
    from tests.test_bench_results import good_record

    rec = good_record()
    made = []
    for acc in (0.80, 0.85):
        d = folders.start(
            "smoke", by="runner", notebooks=["00_baseline"], overrides={"seed": 3} if acc > 0.8 else {}
        )
        variants = [{**rec["variants"][0], "accuracy": acc}, *rec["variants"][1:]]
        lib.runner.records.record(
            "00_baseline",
            {"profile": "smoke", "seed": 3 if acc > 0.8 else 1},
            variants,
            {"tfidf_accuracy": 0.7},
            env=rec["env"],
            headline=["tfidf_accuracy"],
        )
        lib.runner.folders.notebook_status(d, "00_baseline", status="complete", seconds=30.0)
        folders.finish(d, "complete")
        made.append(d)
    code, out = cli(capsys, "--runs")
    assert (
        code == 0
        and made[0].name in out
        and "seed=3" in out
        and "00 acc=0.8500" in out
        and "<- latest" in out
    )
    code, out = cli(capsys, "--compare", made[0].name, made[1].name)
    assert code == 0 and "00_baseline seed: 1 -> 3" in out and "teacher accuracy" in out and "+0.05" in out
    code, out = cli(capsys, "--delete", made[0].name)
    assert code == 0 and not made[0].exists() and made[1].exists()
    code, out = cli(capsys, "--compare", "nope", made[1].name)
    assert code == 2 and "no run with id 'nope'" in out


# ------------------------------------------------------------------------ part 4: bad input


def _csv(tmp_path, text="text,label\ngood film,pos\nbad film,neg\n"):
    path = tmp_path / "data.csv"
    path.write_text(text)
    return path


def _smoke_split():
    return lib.runner.params.resolve("smoke", "00_baseline")["data_contract"]


def _save_teacher(tiny, params):
    """A complete run of 00_baseline (tiny model) whose teacher and record have ``params``."""
    from tests.test_bench_results import good_record

    make, tok = tiny
    d = folders.start("smoke", by="runner", notebooks=["00_baseline"])
    lib.artifacts.save(folders.artifact_dir("smoke", "teacher"), make(), tok, {"params": params})
    rec = good_record()
    lib.runner.records.record(
        "00_baseline", {"profile": "smoke", **params}, rec["variants"], {}, env=rec["env"]
    )
    folders.finish(d, "complete")
    return d


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("missing", "does not exist"),
        ("folder", "is a folder, not a CSV file"),
        ("columns", "lacks column(s) ['text']"),
        ("one class", "has only one class"),
        ("empty", "is empty"),
    ],
)
def test_check_catches_bad_csv_data_before_anything_runs(capsys, outputs, tmp_path, case, fragment):
    path = {
        "missing": lambda: tmp_path / "nope.csv",
        "folder": lambda: tmp_path,
        "columns": lambda: _csv(tmp_path, "review,label\na,pos\nb,neg\n"),
        "one class": lambda: _csv(tmp_path, "text,label\na,pos\nb,pos\n"),
        "empty": lambda: _csv(tmp_path, ""),
    }[case]()
    t0 = time.perf_counter()
    code, out = cli(
        capsys, "--profile", "smoke", "--only", "00_baseline", "--check", "-p", f"dataset=csv:{path}"
    )
    assert code == 2 and fragment in out and time.perf_counter() - t0 < 5
    assert not (outputs / "smoke" / "runs").exists()  # nothing started


def test_a_folder_as_csv_is_a_data_error_not_isadirectoryerror(tmp_path):
    with pytest.raises(DataError, match="is a folder, not a CSV file"):
        lib.data.load_dataset(f"csv:{tmp_path}")


def test_utf8_error_names_the_true_byte_offset(tmp_path):
    body = "".join(f"row number {i} is fine,pos\n" for i in range(6000)).encode()  # > pandas' 64 KiB chunk
    raw = b"text,label\n" + body + b"caf\xe9 latin-1,neg\n"
    path = tmp_path / "latin.csv"
    path.write_bytes(raw)
    offset = raw.index(b"\xe9")
    with pytest.raises(DataError, match=f"byte 0xe9 at byte offset {offset} \\(line 6002\\)"):
        lib.data.load_dataset(f"csv:{path}")


def test_check_catches_a_truncated_or_corrupt_teacher(capsys, outputs, tiny):
    d = _save_teacher(tiny, _smoke_split())
    weights = d / "models" / "teacher" / "model.safetensors"
    code, out = cli(capsys, "--profile", "smoke", "--only", "01_lora_finetune", "--check")
    assert code == 0, out
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # a copy cut short
    t0 = time.perf_counter()
    code, out = cli(capsys, "--profile", "smoke", "--only", "01_lora_finetune", "--check")
    assert (
        code == 2
        and "model.safetensors is truncated" in out
        and "not fully covered" in out
        and time.perf_counter() - t0 < 5
    )
    weights.write_bytes(struct.pack("<Q", 10**9) + b"{}")  # garbage header
    code, out = cli(capsys, "--profile", "smoke", "--only", "01_lora_finetune", "--check")
    assert code == 2 and "header too large" in out


def test_check_catches_data_settings_that_differ_from_the_teachers(capsys, outputs, tiny):
    _save_teacher(tiny, _smoke_split())
    code, out = cli(capsys, "--profile", "smoke", "--only", "01_lora_finetune", "--check")
    assert code == 0, out
    code, out = cli(
        capsys, "--profile", "smoke", "--only", "01_lora_finetune", "--check", "-p", "max_length=32"
    )
    assert code == 2 and "max_length: run " in out and "used 64, here 32" in out


def test_device_cuda_without_a_gpu_fails_fast(capsys, outputs):
    if lib.utils.resolve_device("auto").type == "cuda":
        pytest.skip("this machine has a GPU")
    t0 = time.perf_counter()
    code, out = cli(capsys, "--profile", "smoke", "-p", "device=cuda")
    assert code == 2 and "device='cuda' was asked" in out and "device='cpu'" in out
    assert time.perf_counter() - t0 < 5 and not (outputs / "smoke" / "runs").exists()
    with pytest.raises(ParamError, match="device='cuda' was asked"):
        lib.utils.set_device("cuda")


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (
            ["-p", "dataset=csv:"],
            "dataset: must be 'rotten_tomatoes' (built in, offline), 'csv:<path>'",
        ),  # was: got dict {'csv': None}
        (["-p", "num_epocs=1"], "did you mean 'num_epochs'"),
        (["--only", ","], "--only names no notebook"),
        (["--only", ""], "--only names no notebook"),
        (["--execution-timeout", "-5"], "--execution-timeout must be a positive number"),
        (["-p", "device=gpu"], "device: should be 'auto', 'cpu' or 'cuda', got 'gpu'"),
    ],
)
def test_runner_refuses(capsys, outputs, argv, fragment):
    code, out = cli(capsys, "--profile", "smoke", *argv)
    assert code == 2 and fragment in out, out
    assert not (outputs / "smoke" / "runs").exists()


@pytest.mark.parametrize(
    "yaml_text, fragment",
    [
        ("shared:\n  sed: 1\n", "unknown parameter 'shared.sed'; did you mean 'seed'?"),
        ("shared:\n  seed: 1\n  seed: 2\n", "key 'seed' is set twice (lines 2 and 3)"),
        ("00_baseline:\n  num_epochs: 1\n00_baseline:\n  num_epochs: 2\n", "key '00_baseline' is set twice"),
    ],
)
def test_profile_typos_and_duplicate_keys_are_errors(tmp_path, monkeypatch, yaml_text, fragment):
    (tmp_path / "typo.yaml").write_text(yaml_text)
    monkeypatch.setattr(lib.runner.paths, "PARAMS", tmp_path)
    with pytest.raises(ParamError) as e:
        lib.runner.params.load_profile("typo")
    assert fragment in str(e.value)


def test_hand_run_hint_says_to_open_the_notebook(outputs):
    with pytest.raises(ArtifactError, match=r"Open notebooks/00_baseline.ipynb in JupyterLab"):
        lib.runner.catalog.require_artifact("lab", "teacher")
    with pytest.raises(ArtifactError, match=r"python -m lib.runner --profile smoke --only 00_baseline"):
        lib.runner.catalog.require_artifact("smoke", "teacher")


def test_project_errors_show_as_their_message_in_jupyter():
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    lib._show_project_errors_briefly()
    result = shell.run_cell(
        "import lib\nraise lib.errors.DataError('the CSV lacks a text column: set text_column')"
    )
    assert isinstance(result.error_in_exec, DataError)  # the cell still fails (papermill stops the run)
    stb = shell.CustomTB(DataError, result.error_in_exec, None)
    assert stb == ["\x1b[0;31mDataError\x1b[0m: the CSV lacks a text column: set text_column"]
    InteractiveShell.clear_instance()


def test_a_teacher_at_chance_is_flagged():
    with pytest.warns(UserWarning, match="does not beat always guessing the majority class"):
        flags = lib.evaluate.quality_flags("teacher", 0.503, 0.55, 0.76)
    assert len(flags) == 2 and "25.7 points behind" in flags[1]
    assert lib.evaluate.quality_flags("teacher", 0.83, 0.55, 0.76) == []


def test_busy_machine_and_unsteady_timings_are_recorded_and_flagged(monkeypatch, tiny):
    make, tok = tiny
    model = make()
    enc = lib.data.Encoded.from_features(
        [{"input_ids": [101, 7, 8, 102], "attention_mask": [1, 1, 1, 1]}] * 8
    )
    probe = lib.bench.make_probe(enc, tok, 4)
    monkeypatch.setattr(os, "getloadavg", lambda: (7.5, 3.0, 1.0))
    with pytest.warns(RuntimeWarning, match="load average 7.5"):
        df = lib.bench.compare({"a": model, "b": model}, probe, repeats=2)
    assert df["load_average"].iloc[0] == 7.5 and df["throughput_spread"].notna().all()
    v = lib.experiment.variant("a", "reference", {"accuracy": 0.5, "f1": 0.5}, df.loc["a"])
    assert v["load_average"] == 7.5 and v["throughput_b32_spread"] is not None


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_written_files_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        f = lib.utils.atomic_write_text(tmp_path / "a.json", "{}")
        with lib.utils.atomic_dir(tmp_path / "model") as d:
            (d / "x").write_text("1")
    finally:
        os.umask(old)
    assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o777 & ~mask


def test_one_kernel_story():
    """The notebooks, the runner and `make lab` all use "python3": the Python Jupyter runs in (the project's
    .venv). `make kernel` registers a per-clone kernel for another JupyterLab, so a second clone cannot
    re-point the first."""
    for path in lib.runner.paths.NOTEBOOKS.glob("*.ipynb"):
        assert (
            json.loads(path.read_text())["metadata"]["kernelspec"]["name"]
            == lib.runner.execute.KERNEL
            == "python3"
        )
    makefile = (lib.runner.paths.ROOT / "Makefile").read_text()
    install = makefile.split("$(BIN)/.installed:")[1].split("\n\n")[0]
    assert "kernel install" not in install  # installing never touches the user's kernels
    assert "--name $(KERNEL)" in makefile and "KERNEL := model-ux-lab-$(" in makefile


def test_an_interrupt_inside_a_finalizer_is_sent_again_not_printed(monkeypatch):
    import signal
    import types

    sent = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append((pid, sig)))
    lib.runner.execute.redeliver_interrupts(types.SimpleNamespace(exc_value=KeyboardInterrupt()))
    lib.runner.execute.redeliver_interrupts(types.SimpleNamespace(exc_value=lib.runner.execute.Terminated()))
    assert sent == [(os.getpid(), signal.SIGINT), (os.getpid(), signal.SIGTERM)]


def test_eta_comes_from_the_profiles_earlier_complete_runs(outputs):
    assert lib.runner.cli._eta("smoke", "00_baseline") == "no earlier run"
    for seconds in (60.0, 120.0, 600.0):
        d = folders.start("smoke", by="runner", notebooks=["00_baseline"])
        folders.notebook_status(d, "00_baseline", status="complete", seconds=seconds)
        folders.finish(d, "complete")
    d = folders.start("smoke", by="runner", notebooks=["00_baseline"])
    folders.notebook_status(d, "00_baseline", status="failed", seconds=5.0)  # a failed notebook says nothing
    folders.finish(d, "failed")
    assert lib.runner.cli._eta("smoke", "00_baseline") == "~2.0 min (median of 3 earlier run(s))"


@pytest.mark.parametrize(
    "start, end, changed",
    [
        (
            {"commit": "a", "dirty": False, "diff_sha1": None},
            {"commit": "a", "dirty": False, "diff_sha1": None},
            False,
        ),
        (
            {"commit": "a", "dirty": True, "diff_sha1": "x"},
            {"commit": "a", "dirty": True, "diff_sha1": "x"},
            False,
        ),
        (
            {"commit": "a", "dirty": False, "diff_sha1": None},
            {"commit": "a", "dirty": True, "diff_sha1": "y"},
            True,
        ),
        (
            {"commit": "a", "dirty": False, "diff_sha1": None},
            {"commit": "b", "dirty": False, "diff_sha1": None},
            True,
        ),
    ],
)
def test_code_that_changes_during_a_run_is_recorded(outputs, monkeypatch, start, end, changed):
    monkeypatch.setattr(folders, "git_state", lambda: {**start, "changed": []})
    d = folders.start("smoke", by="runner", notebooks=[])
    monkeypatch.setattr(folders, "git_state", lambda: {**end, "changed": []})
    git = folders.finish(d, "complete")["git"]
    assert git.get("changed_during_run", False) == changed
    assert git["dirty"] == (start["dirty"] or changed)


def test_git_state_names_changed_files_whole():
    state = folders.git_state()
    if state["commit"] is None:
        pytest.skip("not a git checkout")
    root = lib.runner.paths.ROOT
    in_head = lambda p: subprocess.run(["git", "cat-file", "-e", f"HEAD:{p}"], cwd=root).returncode == 0
    assert all((lib.runner.paths.ROOT / p).exists() or " -> " in p or in_head(p) for p in state["changed"])


def test_a_run_is_found_by_id_from_any_profile(outputs):
    d = folders.start("smoke", by="runner", notebooks=[])
    assert folders.find_run(d.name, "default") == d and folders.find_run(d.name[:17]) == d
