"""Run folders: each run has its own, ``outputs/<profile>/runs/<run id>/``, with ``notebooks/`` (executed),
``metrics/`` (one record each), ``figures/``, ``models/``, ``work/`` and a ``manifest.json`` saying what made
it (profile, data contract, overrides, commit, packages, machine, each notebook's status and time); it never
changes once ended. ``latest`` points to the profile's last complete run. The runner names its run to the
kernels in ``$MUXL_RUN_DIR``; a notebook run by hand starts its own (profile ``lab``).
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

import psutil

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
    """A run folder by id or unique id prefix (of any profile), ``latest`` (of ``profile``) or a path."""
    if run == LATEST and latest(profile or "") is None:
        raise ArtifactError(f"profile {profile!r} has no complete run: python -m lib.runner --profile NAME")
    if run == LATEST:
        return latest(profile or "")
    if (Path(run) / MANIFEST).exists():
        return Path(run).resolve()
    every = all_runs()
    matches = [d for d in every if d.name == run] or [d for d in every if d.name.startswith(run)]
    if len(matches) != 1:
        newest = ", ".join(d.name for d in all_runs(profile)[-5:]) or "none"
        what = f"{len(matches)} runs" if matches else "no run"
        raise ArtifactError(f"{what} with id {run!r} (newest: {newest}; see python -m lib.runner --runs)")
    return matches[0]


def latest(profile: str) -> Path | None:
    link = paths.profile_dir(profile) / LATEST
    return link.resolve() if link.is_symlink() and (link.resolve() / MANIFEST).exists() else None


def _set_latest(profile_dir: Path, run_dir: Path | None) -> None:
    """Point ``outputs/<profile>/latest`` at ``run_dir`` (none: remove it) atomically, as a relative link."""
    tmp = profile_dir / f".{LATEST}.{secrets.token_hex(3)}"
    if run_dir is None:
        return (profile_dir / LATEST).unlink(missing_ok=True)
    tmp.symlink_to(Path("runs") / run_dir.name)
    os.replace(tmp, profile_dir / LATEST)


def read_manifest(run_dir: Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / MANIFEST).read_text(encoding="utf-8"))


def peek(run_dir: Path) -> dict[str, Any]:
    """The manifest, or ``{}`` if it cannot be read."""
    try:
        return read_manifest(run_dir)
    except (OSError, json.JSONDecodeError):
        return {}


def status(manifest: Mapping[str, Any]) -> str:
    """The run's status; a run whose process is gone without ending it (SIGKILL, power cut) is ``killed``."""
    s = manifest.get("status", "?")
    if s == "running" and manifest.get("host") == socket.gethostname() and not _alive(manifest.get("pid")):
        return "killed"
    return s


def _alive(pid: Any) -> bool:
    try:  # a zombie (exited, not yet reaped) is not running
        return isinstance(pid, int) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def start(profile: str, *, by: str, notebooks: Sequence[str], **fields: Any) -> Path:
    """A new run folder and manifest (status ``running``; ``fields``, e.g. ``overrides``, go into it), now
    this process's current run. Its id (start time, random suffix) sorts by time and never clashes."""
    sweep_killed(profile)
    now = datetime.now()
    run_dir = runs_dir(profile) / f"{now:%Y%m%d-%H%M%S}-{now.microsecond // 1000:03d}-{secrets.token_hex(2)}"
    run_dir.mkdir(parents=True)
    atomic_write_json(run_dir / MANIFEST, {
        "id": run_dir.name, "profile": profile, "by": by, "argv": [], "status": "running", "started": _now(),
        "ended": None, "minutes": None, "pid": os.getpid(), "host": socket.gethostname(), "overrides": {},
        "notebooks": {name: {"status": "pending"} for name in notebooks}, "git": git_state(), "inputs": {},
        "packages": package_versions(), "machine": machine(), "load_average_start": load_average(),
        "mlflow": tracking.enabled(), **fields,
    })  # fmt: skip
    os.environ[ENV_DIR], os.environ[ENV_BY] = str(run_dir), by
    _inputs.clear()  # what an earlier run of this process read is not this run's provenance
    if by == "hand":
        _hand[profile] = run_dir
    return run_dir


def update(run_dir: Path, **changes: Any) -> dict[str, Any]:
    """Change a *running* run's manifest (a run that ended is never modified)."""
    manifest = read_manifest(run_dir)
    if manifest["status"] in ENDED:
        raise LabError(f"run {run_dir.name} has ended ({manifest['status']}): it is never modified")
    manifest.update(changes)
    atomic_write_json(run_dir / MANIFEST, manifest)
    return manifest


def notebook_status(run_dir: Path, notebook: str, **fields: Any) -> None:
    notebooks = read_manifest(run_dir)["notebooks"]
    update(run_dir, notebooks={**notebooks, notebook: {**notebooks.get(notebook, {}), **fields}})


def finish(run_dir: Path, final: str) -> dict[str, Any]:
    """End a run: its final status, end time, minutes, git state; ``latest`` moves only to a complete run."""
    assert final in ENDED, final
    manifest = read_manifest(run_dir)
    if manifest["status"] in ENDED:
        return manifest
    end, git = git_state(), dict(manifest["git"])
    if (end.get("commit"), end.get("diff_sha1")) != (git.get("commit"), git.get("diff_sha1")):
        git.update(dirty=True, changed_during_run=True)  # the code changed while it ran: no clean provenance
    minutes = round((datetime.now(UTC) - datetime.fromisoformat(manifest["started"])).total_seconds() / 60, 2)
    manifest.update(status=final, ended=_now(), git=git, load_average_end=load_average(), minutes=minutes)
    atomic_write_json(run_dir / MANIFEST, manifest)
    shutil.rmtree(run_dir / ".runtime", ignore_errors=True)  # kernel connection files of this run
    if final == "complete":
        _set_latest(run_dir.parent.parent, run_dir)
    if os.environ.get(ENV_DIR) == str(run_dir):
        os.environ.pop(ENV_DIR, None)
        os.environ.pop(ENV_BY, None)
    return manifest


def sweep_killed(profile: str) -> list[Path]:
    """Mark runs whose process died without ending them (SIGKILL) ``killed``, and drop their kernel files."""
    running = [d for d in all_runs(profile) if peek(d).get("status") == "running"]
    found = [d for d in running if status(read_manifest(d)) == "killed"]
    for d in found:
        atomic_write_json(d / MANIFEST, {**read_manifest(d), "status": "killed", "ended": _now()})
        shutil.rmtree(d / ".runtime", ignore_errors=True)
    return found


def begin_hand_run(profile: str, notebook: str) -> Path:
    """When a notebook checks its parameters: join the runner's run, or start a run of its own (by hand)."""
    if _runner_run(profile) is not None:
        return _runner_run(profile)
    return start(profile, by="hand", notebooks=[notebook])


def _runner_run(profile: str) -> Path | None:
    env = os.environ.get(ENV_DIR)
    ours = env and os.environ.get(ENV_BY) == "runner" and Path(env).parent == runs_dir(profile)
    return Path(env) if ours else None


def _here(profile: str) -> Path | None:
    """This process's run of ``profile`` in today's outputs folder (the runner's, or one begun by hand)."""
    run_dir = _runner_run(profile) or _hand.get(profile)
    return run_dir if run_dir is not None and run_dir.parent == runs_dir(profile) else None


def current(profile: str) -> Path:
    """The folder this process writes ``profile``'s results into: the runner's run, the notebook's own run
    (by hand), or, for library use outside a notebook, a run started now."""
    run_dir = _here(profile)
    if run_dir is None or not (run_dir / MANIFEST).exists():
        return start(profile, by="hand", notebooks=[])
    if (ended := read_manifest(run_dir)["status"]) in ENDED:
        raise LabError(
            f"run {run_dir.name} ended ({ended}), never modified: re-run the notebook from the top"
        )
    return run_dir


def source(profile: str, relpath: str, run: str = "") -> Path:
    """The run folder to read ``relpath`` (e.g. ``models/teacher``) from: the run named by ``run``, else the
    current run if it has it, else the newest complete run of ``profile`` that has it."""
    here = _here(profile)
    if not run and here is not None and (here / relpath).exists():
        return here
    done = [d for d in all_runs(profile) if (d / relpath).exists() and peek(d).get("status") == "complete"]
    if not run and not done:
        raise ArtifactError(f"no complete run of profile {profile!r} has {relpath}")
    found = find_run(run, profile) if run else done[-1]
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
        seconds = (datetime.now(UTC) - datetime.fromisoformat(manifest["started"])).total_seconds()
        notebook_status(
            run_dir, notebook, status="complete", seconds=seconds
        )  # from its parameters to its record
        update(run_dir, inputs=inputs())
        finish(run_dir, "complete")  # _hand keeps it: a later write in this kernel is refused, not misplaced


def metrics_path(profile: str, notebook: str) -> Path:
    return current(profile) / "metrics" / f"{notebook}.json"


def artifact_dir(profile: str, name: str) -> Path:
    """Where this run saves artifact ``name`` (e.g. ``artifact_dir("default", "teacher")``)."""
    return current(profile) / "models" / name


def figures_dir(profile: str) -> Path:
    (path := current(profile) / "figures").mkdir(parents=True, exist_ok=True)
    return path


def work_dir(profile: str, notebook: str) -> Path:
    """Scratch files of one notebook in this run (e.g. the ONNX files of every quantized variant)."""
    (path := current(profile) / "work" / notebook).mkdir(parents=True, exist_ok=True)
    return path


def delete(run_dirs: Iterable[Path]) -> list[str]:
    """Remove runs (never a running one); ``latest`` moves back to the newest complete run left, if any."""
    run_dirs = list(run_dirs)
    for d in run_dirs:
        manifest = read_manifest(d)
        if status(manifest) == "running":
            raise LabError(f"run {d.name} is still running (pid {manifest.get('pid')}): stop it first")
        was_latest = latest(manifest["profile"]) == d.resolve()
        shutil.rmtree(d)
        if was_latest:
            done = [r for r in all_runs(manifest["profile"]) if peek(r).get("status") == "complete"]
            _set_latest(d.parent.parent, done[-1] if done else None)
    return [d.name for d in run_dirs]


def timings(profile: str, notebook: str, limit: int = 5) -> list[tuple[float, str]]:
    """``(minutes, cpu)`` of ``notebook`` in the newest complete runs of ``profile`` (runner or by hand)."""
    runs = [peek(d) for d in reversed(all_runs(profile))]
    entries = [(m.get("notebooks", {}).get(notebook, {}), m.get("machine", {}).get("cpu", "?")) for m in runs]
    done = [
        (e["seconds"] / 60, cpu) for e, cpu in entries if e.get("status") == "complete" and e.get("seconds")
    ]
    return done[:limit]


def minutes_history(profile: str, notebook: str, limit: int = 5) -> list[float]:
    """Wall minutes of ``notebook`` in the newest complete runs of ``profile`` (for an ETA)."""
    return [minutes for minutes, _ in timings(profile, notebook, limit)]
