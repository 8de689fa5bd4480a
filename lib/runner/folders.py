"""Run folders: every run keeps its own folder, a manifest saying what made it, and never changes once it
ends.

``outputs/<profile>/runs/<run id>/`` holds one run's ``notebooks/`` (executed copies), ``metrics/`` (one
record per notebook), ``figures/``, ``models/`` (the artifacts later notebooks start from), ``work/``
(scratch) and ``manifest.json``: profile, data contract, the ``-p`` overrides (as a diff against the
profile), git commit and whether the tree was dirty, package versions, machine and CPU class, and per notebook
its status and wall time. ``outputs/<profile>/latest`` points to the last *complete* run of the profile.

A run id is the start time plus a random suffix (``20261126-053007-412-a3f1``): ids sort by time and never
clash. The runner starts a run and tells the notebook kernels which one through ``$MUXL_RUN_DIR``; a notebook
run by hand starts its own run (profile ``lab``) when its parameters are checked, complete once the notebook
writes its record. A later notebook reads an earlier one's artifacts and record from the **same run** when it
has them, else from the run named by its ``input_run`` parameter, else the profile's newest complete run.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import ArtifactError, LabError
from ..utils import atomic_write_json, load_average
from . import paths, tracking
from .provenance import git_state, machine, package_versions

ENV_DIR, ENV_BY = "MUXL_RUN_DIR", "MUXL_RUN_BY"  # the runner's run folder, and "runner", for its kernels
HAND_PROFILE = "lab"  # the profile of a notebook run by hand (no params/lab.yaml: the notebook's defaults)
MANIFEST, LATEST = "manifest.json", "latest"
ENDED = ("complete", "failed", "interrupted", "killed")

_hand: dict[str, Path] = {}  # profile -> the run this process started by hand (a JupyterLab kernel)
_inputs: dict[str, str] = {}  # what this process read from earlier runs: "models/teacher" -> run id


def runs_dir(profile: str) -> Path:
    return paths.profile_dir(profile) / "runs"


def all_runs(profile: str | None = None) -> list[Path]:
    """Every run folder (of one profile, or of all), oldest first."""
    found = paths.outputs_root().glob(f"{profile or '*'}/runs/*/{MANIFEST}")
    return sorted((p.parent for p in found), key=lambda d: d.name)


def find_run(run: str, profile: str | None = None) -> Path:
    """A run folder by id or unique id prefix (ids are unique across profiles), ``latest`` (of ``profile``) or
    a path."""
    if run == LATEST:
        if profile is None:
            raise LabError("'latest' needs a profile (--profile NAME)")
        if latest(profile) is None:
            raise ArtifactError(
                f"profile {profile!r} has no complete run yet: python -m lib.runner --profile {profile}"
            )
        return latest(profile)
    if (Path(run) / MANIFEST).exists():
        return Path(run).resolve()
    every = all_runs()
    matches = [d for d in every if d.name == run] or [d for d in every if d.name.startswith(run)]
    if len(matches) != 1:
        newest = ", ".join(d.name for d in all_runs(profile)[-5:]) or "none"
        raise ArtifactError(
            f"{f'{len(matches)} runs' if matches else 'no run'} with id {run!r} under "
            f"{paths.outputs_root()} (newest: {newest}; see python -m lib.runner --runs)"
        )
    return matches[0]


def latest(profile: str) -> Path | None:
    link = paths.profile_dir(profile) / LATEST
    return link.resolve() if link.is_symlink() and (link.resolve() / MANIFEST).exists() else None


def _set_latest(run_dir: Path) -> None:
    """Point ``outputs/<profile>/latest`` at ``run_dir`` atomically (a relative link: the folder can move)."""
    tmp = run_dir.parent.parent / f".{LATEST}.{secrets.token_hex(3)}"
    tmp.symlink_to(Path("runs") / run_dir.name)
    os.replace(tmp, run_dir.parent.parent / LATEST)


def read_manifest(run_dir: Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / MANIFEST).read_text(encoding="utf-8"))


def status(manifest: Mapping[str, Any]) -> str:
    """The run's status; a run whose process is gone without ending it (SIGKILL, power cut) is ``killed``."""
    s = manifest.get("status", "?")
    if s == "running" and manifest.get("host") == socket.gethostname() and not _alive(manifest.get("pid")):
        return "killed"
    return s


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) is not running
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (OSError, IndexError):
        return True


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _complete(run_dir: Path) -> bool:
    try:
        return read_manifest(run_dir).get("status") == "complete"
    except (OSError, json.JSONDecodeError):
        return False


def start(
    profile: str,
    *,
    by: str,
    notebooks: Sequence[str],
    overrides: Mapping[str, Any] | None = None,
    override_diff: Mapping[str, Any] | None = None,
    argv: Sequence[str] = (),
) -> Path:
    """Create a new run folder and manifest (status ``running``) and make it this process's current run."""
    sweep_killed(profile)
    now = datetime.now()
    run_dir = runs_dir(profile) / f"{now:%Y%m%d-%H%M%S}-{now.microsecond // 1000:03d}-{secrets.token_hex(2)}"
    run_dir.mkdir(parents=True)
    atomic_write_json(run_dir / MANIFEST, {
        "id": run_dir.name, "profile": profile, "by": by, "argv": list(argv), "status": "running",
        "started": _now(), "ended": None, "minutes": None, "pid": os.getpid(), "host": socket.gethostname(),
        "notebooks": {name: {"status": "pending"} for name in notebooks}, "overrides": dict(overrides or {}),
        "override_diff": dict(override_diff or {}), "git": git_state(), "packages": package_versions(),
        "machine": machine(), "load_average_start": load_average(), "inputs": {},
        "mlflow": tracking.enabled(),
    })  # fmt: skip
    os.environ[ENV_DIR], os.environ[ENV_BY] = str(run_dir), by
    if by == "hand":
        _hand[profile] = run_dir
    return run_dir


def update(run_dir: Path, **changes: Any) -> dict[str, Any]:
    """Change a *running* run's manifest (a run that ended is never modified)."""
    manifest = read_manifest(run_dir)
    if manifest["status"] in ENDED:
        raise LabError(
            f"run {run_dir.name} has ended ({manifest['status']}): it is never modified. Start a new "
            "run (re-run the notebook from the top, or python -m lib.runner)."
        )
    manifest.update(changes)
    atomic_write_json(run_dir / MANIFEST, manifest)
    return manifest


def notebook_status(run_dir: Path, notebook: str, **fields: Any) -> None:
    notebooks = read_manifest(run_dir)["notebooks"]
    update(run_dir, notebooks={**notebooks, notebook: {**notebooks.get(notebook, {}), **fields}})


def finish(run_dir: Path, final: str) -> dict[str, Any]:
    """End a run: its final status, end time, minutes and git state; ``latest`` moves only to a
    complete run."""
    assert final in ENDED, final
    manifest = read_manifest(run_dir)
    if manifest["status"] in ENDED:
        return manifest
    end, git = git_state(), dict(manifest["git"])
    if (end.get("commit"), end.get("diff_sha1")) != (git.get("commit"), git.get("diff_sha1")):
        git.update(dirty=True, changed_during_run=True)  # the code changed while it ran: no clean provenance
    minutes = (datetime.now(UTC) - datetime.fromisoformat(manifest["started"])).total_seconds() / 60
    manifest.update(
        status=final, ended=_now(), git=git, load_average_end=load_average(), minutes=round(minutes, 2)
    )
    atomic_write_json(run_dir / MANIFEST, manifest)
    shutil.rmtree(run_dir / ".runtime", ignore_errors=True)  # kernel connection files of this run
    if final == "complete":
        _set_latest(run_dir)
    if os.environ.get(ENV_DIR) == str(run_dir):
        os.environ.pop(ENV_DIR, None)
        os.environ.pop(ENV_BY, None)
    return manifest


def sweep_killed(profile: str) -> list[Path]:
    """Mark runs whose process died without ending them (SIGKILL) ``killed``, and drop their kernel files."""
    found = []
    for d in all_runs(profile):
        try:
            manifest = read_manifest(d)
        except (OSError, json.JSONDecodeError):
            continue
        if manifest.get("status") == "running" and status(manifest) == "killed":
            atomic_write_json(d / MANIFEST, {**manifest, "status": "killed", "ended": _now()})
            shutil.rmtree(d / ".runtime", ignore_errors=True)
            found.append(d)
    return found


def begin_hand_run(profile: str, notebook: str) -> Path:
    """When a notebook checks its parameters: join the runner's run, or start a run of its own (by hand)."""
    joined = _runner_run(profile)
    if joined is not None:
        return joined
    _inputs.clear()
    return start(profile, by="hand", notebooks=[notebook])


def _runner_run(profile: str) -> Path | None:
    env = os.environ.get(ENV_DIR)
    ours = env and os.environ.get(ENV_BY) == "runner" and Path(env).parent == runs_dir(profile)
    return Path(env) if ours else None


def _here(profile: str) -> Path | None:
    """This process's run of ``profile`` under today's outputs folder (the runner's, or one started by
    hand)."""
    run_dir = _runner_run(profile) or _hand.get(profile)
    return run_dir if run_dir is not None and run_dir.parent == runs_dir(profile) else None


def current(profile: str) -> Path:
    """The folder this process writes ``profile``'s results into: the runner's run, the notebook's own run
    (by hand), or, for library use outside a notebook, a run started now."""
    run_dir = _here(profile)
    if run_dir is None or not (run_dir / MANIFEST).exists():
        return start(profile, by="hand", notebooks=[])
    manifest = read_manifest(run_dir)
    if manifest["status"] in ENDED:
        raise LabError(
            f"run {run_dir.name} has ended ({manifest['status']}) and is never modified: re-run the "
            "notebook from the top (its parameters cell starts a new run)."
        )
    return run_dir


def source(profile: str, relpath: str, run: str = "") -> Path:
    """The run folder to read ``relpath`` (e.g. ``models/teacher``) from: the run named by ``run``, else the
    current run if it has it, else the newest complete run of ``profile`` that has it."""
    here = _here(profile)
    if run:
        found = find_run(run, profile)
    elif here is not None and (here / relpath).exists():
        return here
    else:
        found = next(
            (d for d in reversed(all_runs(profile)) if (d / relpath).exists() and _complete(d)), None
        )
        if found is None:
            raise ArtifactError(f"no complete run of profile {profile!r} has {relpath}")
    if found != here:
        _inputs[relpath] = found.name
    return found


def inputs() -> dict[str, str]:
    """What this process took from earlier runs (``relpath -> run id``), for the record's provenance."""
    return dict(_inputs)


def notebook_done(profile: str, notebook: str) -> None:
    """A hand run ends when its notebook has written its record (the runner ends its own runs)."""
    run_dir = _hand.get(profile)
    if run_dir is None or _runner_run(profile) is not None:
        return
    manifest = read_manifest(run_dir)
    if list(manifest["notebooks"]) == [notebook] and manifest["status"] == "running":
        notebook_status(run_dir, notebook, status="complete")
        update(run_dir, inputs=inputs())
        finish(run_dir, "complete")  # _hand keeps it: a later write in this kernel is refused, not misplaced


def metrics_path(profile: str, notebook: str) -> Path:
    return current(profile) / "metrics" / f"{notebook}.json"


def figures_dir(profile: str) -> Path:
    return _made(current(profile) / "figures")


def artifact_dir(profile: str, name: str) -> Path:
    """Where this run saves artifact ``name`` (e.g. ``artifact_dir("default", "teacher")``)."""
    return current(profile) / "models" / name


def work_dir(profile: str, notebook: str) -> Path:
    """Scratch files of one notebook in this run (e.g. the ONNX files of every quantized variant)."""
    return _made(current(profile) / "work" / notebook)


def _made(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def delete(run_dirs: Iterable[Path]) -> list[str]:
    """Remove runs (never one still running); ``latest`` moves back to the newest complete run
    left, if any."""
    gone = []
    for d in run_dirs:
        manifest = read_manifest(d)
        if status(manifest) == "running":
            raise LabError(f"run {d.name} is still running (pid {manifest.get('pid')}): stop it first")
        was_latest = latest(manifest["profile"]) == d.resolve()
        shutil.rmtree(d)
        gone.append(d.name)
        if was_latest:
            rest = [r for r in all_runs(manifest["profile"]) if _complete(r)]
            _set_latest(rest[-1]) if rest else (paths.profile_dir(manifest["profile"]) / LATEST).unlink(
                missing_ok=True
            )
    return gone


def minutes_history(profile: str, notebook: str, limit: int = 5) -> list[float]:
    """Wall minutes of ``notebook`` in the newest complete runs of ``profile`` (for an ETA)."""
    out = []
    for d in reversed(all_runs(profile)):
        try:
            entry = read_manifest(d)["notebooks"].get(notebook, {})
        except (OSError, json.JSONDecodeError):
            continue
        if entry.get("status") == "complete" and entry.get("seconds"):
            out.append(entry["seconds"] / 60)
        if len(out) >= limit:
            break
    return out
