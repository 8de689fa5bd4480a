"""The runner: execute the notebooks in order with papermill, under a params profile, each run in its own folder.

    python -m lib.run --list
    python -m lib.run --profile quick
    python -m lib.run --profile quick --only 00_baseline -p num_epochs=1
    python -m lib.run --runs                      # every run: id, profile, overrides, status, minutes, headline
    python -m lib.run --compare RUN_A RUN_B       # what changed in parameters and in numbers
    python -m lib.run --delete RUN [RUN ...]      # or --delete incomplete

Before running anything it merges ``params/<profile>.yaml`` with the ``-p`` overrides, validates every
selected notebook's parameters (unknown name, wrong type, impossible value) and looks at the world
(:mod:`lib.preflight`: the CSV file, the prerequisite artifacts of an earlier run and the data settings they were made
with, the device). Then it starts a run folder (:mod:`lib.runs`), executes the notebooks in order into it, streaming
each cell's output (progress bars, log lines) to the terminal, stops at the first failure (exit 1, naming the notebook,
the failing cell's error and the executed copy), and ends the run: ``complete`` (``outputs/<profile>/latest`` moves to
it), ``failed`` or ``interrupted`` (Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from tqdm import tqdm

from . import catalog, params, paths, preflight, report, results, runs, tracking
from .errors import ArtifactError, LabError, ParamError

# The notebooks name the "python3" kernel, which Jupyter resolves to the Python it runs in: here the runner's own
# (the project's .venv under make), in `make lab` the .venv's JupyterLab. Nothing user-level to re-point.
KERNEL = "python3"


class Terminated(BaseException):
    """SIGTERM, turned into an exception so the run ends cleanly (like Ctrl-C)."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lib.run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default=None, help="params/<profile>.yaml (smoke, quick, default; default: default)")
    p.add_argument("--only", nargs="+", metavar="NOTEBOOK", help="run just these notebooks (in catalog order; space- or comma-separated)")
    p.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                   help="override a parameter for every selected notebook that declares it (repeatable)")
    p.add_argument("--list", action="store_true", help="list notebooks, their order and prerequisites, and exit")
    p.add_argument("--check", action="store_true", help="validate parameters and prerequisites only; run nothing")
    p.add_argument("--execution-timeout", type=int, default=None, metavar="SECONDS",
                   help="fail a cell that runs longer than this (default: no limit)")
    p.add_argument("--runs", action="store_true", help="list the runs (of --profile, if given) and exit")
    p.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"), help="what changed between two runs")
    p.add_argument("--delete", nargs="+", metavar="RUN", help="delete runs by id, or 'incomplete' for every ended "
                   "run that did not complete")
    p.add_argument("--html", metavar="RUN", help="(re)write a run's report.html (its table, figures and every executed "
                   "notebook as HTML) and exit; the runner writes it at the end of every run")
    p.add_argument("--mlflow", action="store_true", help="also log every record to MLflow (a local store: "
                   "outputs/mlflow.db; browse with `mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db`)")
    p.add_argument("--quiet", action="store_true", help="do not stream the notebooks' output (one bar per notebook)")
    return p


def list_notebooks() -> str:
    lines = [f"{'#':>2}  {'notebook':<20} {'needs':<14} {'produces':<14} title"]
    for i, nb in enumerate(catalog.NOTEBOOKS):
        lines.append(f"{i:>2}  {nb.name:<20} {','.join(nb.needs) or '-':<14} {','.join(nb.produces) or '-':<14} "
                     f"{nb.title}")
    lines.append(f"\nprofiles: {', '.join(params.available_profiles())}")
    lines.append("needs/produces name artifacts in a run folder's models/ (outputs/<profile>/runs/<id>/models/).")
    return "\n".join(lines)


def select(only: Sequence[str] | None) -> list[catalog.Notebook]:
    if only is None:
        return list(catalog.NOTEBOOKS)
    only = [n.strip() for item in only for n in item.split(",") if n.strip()]  # "a,b" or "a b"
    if not only:  # e.g. --only "$EMPTY_VAR": never silently run everything
        raise ParamError("--only names no notebook (empty or only commas); leave --only out to run every notebook, "
                         f"or name some: {', '.join(catalog.BY_NAME)}")
    unknown = [n for n in only if n not in catalog.BY_NAME]
    if unknown:
        raise ParamError(f"unknown notebook(s) {unknown}; known: {', '.join(catalog.BY_NAME)} (see --list)")
    return [nb for nb in catalog.NOTEBOOKS if nb.name in only]


def plan(profile: str, only: Sequence[str] | None, overrides: Sequence[str]) -> list[tuple[catalog.Notebook, dict]]:
    """Resolve and check everything up front; raise one error listing every problem."""
    data = params.load_profile(profile)
    notebooks = select(only)
    parsed = dict(params.parse_override(o) for o in overrides)
    declared = {nb.name: params.declared(nb.name) for nb in notebooks}
    errors: list[str] = []
    every = {name for d in declared.values() for name in d}
    for key in parsed:
        if key not in every and key != "profile":
            close = params.close_names(key, every)
            errors.append(f"override {key!r} is not a parameter of any selected notebook "
                          f"({', '.join(declared)})" + (f"; did you mean {close}?" if close else ""))
    if "profile" in parsed:
        errors.append("set the profile with --profile, not -p profile=...")
    resolved = []
    for nb in notebooks:
        try:
            resolved.append((nb, params.resolve(profile, nb.name, parsed, data)))
        except ParamError as e:
            errors.append(str(e))
    if errors:  # the world is only worth checking once the values are right
        raise ParamError("cannot start the run:\n" + "\n".join(f"* {e}" for e in errors))
    errors += _preflight(profile, resolved)
    if errors:
        raise ParamError("cannot start the run:\n" + "\n".join(f"* {e}" for e in errors))
    return resolved


def _preflight(profile: str, resolved: Sequence[tuple[catalog.Notebook, dict]]) -> list[str]:
    """The data file, the prerequisite artifacts (and the settings they were made with), the device."""
    errors: list[str] = []
    seen: set[str] = set()
    for nb, values in resolved:
        problem = preflight.data_problem(values)
        if problem and problem not in seen:
            seen.add(problem)
            errors.append(f"{nb.name}: {problem}")
    for device in sorted({v.get("device", "auto") for _, v in resolved}):
        problem = preflight.device_problem(device)
        if problem:
            errors.append(problem)
    made_here: set[str] = set()
    for nb, values in resolved:
        for need in nb.needs:
            if need in made_here:
                continue
            try:
                where = runs.source(profile, f"models/{need}", values.get("input_run", ""))
            except ArtifactError as e:
                errors.append(f"{nb.name} needs the '{need}' artifact, which is missing ({e}). "
                              f"{catalog.artifact_hint(need, profile)}")
                continue
            problem = catalog.check_artifact(where / "models" / need)
            if problem:
                errors.append(f"{nb.name} needs the '{need}' artifact, which {problem}. "
                              f"{catalog.artifact_hint(need, profile)}")
                continue
            producer = catalog.producer_of(need)
            theirs = preflight.producer_params(where, producer) if producer else None
            diffs = preflight.split_differences(theirs, values, producer) if theirs is not None else []
            if diffs:
                errors.append(f"{nb.name} would use the '{need}' of run {where.name}, made with other data or model "
                              "settings:\n    - " + "\n    - ".join(diffs)
                              + f"\n  Run {producer} with these settings too (add it to --only), or match them.")
        made_here.update(nb.produces)
    return errors


def override_diff(profile: str, resolved: Sequence[tuple[catalog.Notebook, dict]],
                  parsed: dict[str, Any]) -> dict[str, Any]:
    """Each ``-p`` override as ``{"profile": what the profile (or the notebook default) gives, "run": the value}``."""
    data = params.load_profile(profile)
    diff = {}
    for key, value in parsed.items():
        before = {}
        for nb, _ in resolved:
            if key in params.declared(nb.name):
                before[nb.name] = params.resolve(profile, nb.name, {}, data)[key]
        was = list({json.dumps(v, sort_keys=True): v for v in before.values()}.values())
        diff[key] = {"profile": was[0] if len(was) == 1 else before, "run": value}
    return diff


def execute(nb: catalog.Notebook, values: dict[str, Any], run_dir: Path, timeout: int | None,
            stream: bool = True) -> Path:
    """Run one notebook with papermill into ``run_dir/notebooks/``; its cells' output streams to the terminal.

    Two things stay inside the run's folder: the kernel's connection file (jupyter_client writes it with ``tempfile``:
    ``.runtime/``, removed when the run ends) and what the kernel *process* itself prints to stderr (Jupyter's
    warnings, a ZMQ complaint when Ctrl-C stops it mid-reply): ``jupyter.log``, not the terminal."""
    import papermill as pm  # heavy (jupyter, nbclient): imported only when a notebook really runs

    out = run_dir / "notebooks" / f"{nb.name}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    running = out.with_name(f"{nb.name}.running.ipynb")
    runtime = run_dir / ".runtime"
    runtime.mkdir(exist_ok=True)
    old_tmp, tempfile.tempdir = tempfile.tempdir, str(runtime)
    with _stderr_to(run_dir / "jupyter.log") as terminal:
        _gates[:] = [_Gate(sys.stdout), _Gate(terminal)] if stream else []
        try:
            pm.execute_notebook(str(paths.notebook_path(nb.name)), str(running), parameters=values,
                                kernel_name=KERNEL, cwd=str(paths.NOTEBOOKS), progress_bar=False,
                                execution_timeout=timeout, report_mode=False,
                                stdout_file=_gates[0] if stream else None, stderr_file=_gates[1] if stream else None)
        except BaseException as e:
            if running.exists():
                why = "interrupted" if isinstance(e, (KeyboardInterrupt, Terminated)) else "failed"
                os.replace(running, out.with_name(f"{nb.name}.{why}.ipynb"))
            raise
        finally:
            tempfile.tempdir = old_tmp
            _gates.clear()
    os.replace(running, out)
    return out


class _stderr_to:
    """Point file descriptor 2 at ``log`` (the kernel process inherits it); yield a handle to the real terminal."""

    def __init__(self, log: Path):
        self.log = log

    def __enter__(self) -> Any:
        sys.stderr.flush()
        self.saved = os.dup(2)
        self.file = open(self.log, "ab")
        try:
            direct = sys.stderr.fileno() == 2  # a real terminal/pipe (not a test's capture object)
        except (AttributeError, OSError, ValueError):
            direct = False
        self.terminal = os.fdopen(os.dup(self.saved), "w", buffering=1, encoding="utf-8") if direct else None
        os.dup2(self.file.fileno(), 2)
        return self.terminal or sys.stderr

    def __exit__(self, *exc: Any) -> None:
        sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.file.close()
        if self.terminal is not None:
            self.terminal.close()


def _failure_message(nb: catalog.Notebook, run_dir: Path, err: BaseException, timeout: int | None) -> str:
    from papermill.exceptions import PapermillExecutionError  # heavy: only once a run has failed

    where = run_dir / "notebooks" / f"{nb.name}.failed.ipynb"
    if isinstance(err, PapermillExecutionError):
        what = f"cell {err.cell_index} raised {err.ename}: {err.evalue}"
    elif type(err).__name__ in ("CellTimeoutError", "TimeoutError") or "timed out" in str(err).lower():
        what = f"a cell ran longer than --execution-timeout={timeout}s ({type(err).__name__})"
    else:
        what = f"{type(err).__name__}: {err}"
    return f"FAILED: {nb.name}: {what}\n  executed notebook (open it to see the traceback): {where}"


def _fmt(x: Any, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def headline(run_dir: Path) -> str:
    """A short table of every variant measured in one run."""
    rows = [f"{'notebook':<14} {'variant':<22} {'acc':>6} {'F1':>6} {'MB':>7} {'ms b1':>7} {'smp/s b32':>10} "
            f"{'speedup':>8}"]
    for rec in results.load_run(run_dir):
        for v in results.own_variants(rec):
            rows.append(f"{rec['notebook']:<14} {v['name']:<22} {_fmt(v['accuracy'], '.4f'):>6} "
                        f"{_fmt(v['f1'], '.4f'):>6} {_fmt(v['size_mb'], '.1f'):>7} "
                        f"{_fmt(v['latency_ms_b1_p50'], '.2f'):>7} {_fmt(v['throughput_b32'], '.1f'):>10} "
                        f"{_fmt(v['speedup_vs_reference'], '.2f'):>8}")
        for k in rec.get("headline", []):  # the few findings a notebook names as its headline
            val = rec["findings"].get(k)
            if isinstance(val, (int, float)) and not isinstance(val, bool):
                rows.append(f"{'':<14} {k} = {val:.4g}")
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------- the run history

def _headline_numbers(run_dir: Path) -> str:
    """The first headline finding of each notebook, compactly: ``00 tfidf_accuracy=0.7417 · 03 ...``."""
    parts = []
    for rec in results.load_run(run_dir):
        ref = next((v for v in rec["variants"] if v["role"] == "reference"), None)
        keys = [k for k in rec.get("headline", []) if isinstance(rec["findings"].get(k), (int, float))]
        if rec["notebook"] == catalog.NOTEBOOKS[0].name and ref and ref.get("accuracy") is not None:
            parts.append(f"{rec['notebook'][:2]} acc={ref['accuracy']:.4f}")
        elif keys:
            parts.append(f"{rec['notebook'][:2]} {keys[0]}={rec['findings'][keys[0]]:.4g}")
    return " · ".join(parts)


def runs_table(profile: str | None) -> str:
    dirs = runs.all_runs(profile)
    if not dirs:
        return f"no runs under {paths.outputs_root()}" + (f" for profile {profile!r}" if profile else "")
    rows = [f"{'run':<24} {'profile':<8} {'by':<6} {'status':<11} {'min':>6} {'done':>5}  {'commit':<8} "
            f"{'overrides':<24} headline"]
    latest = {p.name: runs.latest(p.name) for p in paths.outputs_root().iterdir() if p.is_dir()}
    for d in dirs:
        try:
            m = runs.read_manifest(d)
        except (OSError, json.JSONDecodeError):
            rows.append(f"{d.name:<24} (unreadable manifest)")
            continue
        nbs = m.get("notebooks", {})
        done = f"{sum(e.get('status') == 'complete' for e in nbs.values())}/{len(nbs)}"
        git = m.get("git", {})
        commit = (git.get("commit") or "?")[:7] + ("*" if git.get("dirty") else "")
        over = ",".join(f"{k}={v}" for k, v in m.get("overrides", {}).items()) or "-"
        mark = " <- latest" if latest.get(m["profile"]) == d.resolve() else ""
        rows.append(f"{d.name:<24} {m['profile']:<8} {m.get('by', '?'):<6} {runs.status(m):<11} "
                    f"{_fmt(m.get('minutes'), '.1f'):>6} {done:>5}  {commit:<8} {over[:24]:<24} "
                    f"{_headline_numbers(d)}{mark}")
    rows.append("(* = the code was not a clean commit; outputs: " + str(paths.outputs_root()) + ")")
    return "\n".join(rows)


def compare_runs(a: Path, b: Path) -> str:
    """What changed from run ``a`` to run ``b``: parameters per notebook, then every shared number."""
    ra = {r["notebook"]: r for r in results.load_run(a)}
    rb = {r["notebook"]: r for r in results.load_run(b)}
    lines = [f"{a.name} -> {b.name}", "", "parameters:"]
    changed = False
    for nb in [n for n in ra if n in rb]:
        pa, pb = ra[nb]["params"], rb[nb]["params"]
        for k in sorted(set(pa) | set(pb)):
            if k != "profile" and pa.get(k) != pb.get(k):
                lines.append(f"  {nb} {k}: {pa.get(k)!r} -> {pb.get(k)!r}")
                changed = True
    if not changed:
        lines.append("  (same parameters in every notebook both runs have)")
    only = sorted(set(ra) ^ set(rb))
    if only:
        lines.append(f"  notebooks in one run only: {', '.join(only)}")
    ea, eb = runs.read_manifest(a).get("machine", {}), runs.read_manifest(b).get("machine", {})
    if ea.get("isa") != eb.get("isa") or ea.get("cpu") != eb.get("cpu"):
        lines.append(f"  machine: {ea.get('cpu')} [{ea.get('isa')}] -> {eb.get('cpu')} [{eb.get('isa')}] "
                     "(speed figures do not compare across CPU classes)")
    lines += ["", f"{'notebook':<14} {'variant / finding':<34} {'A':>10} {'B':>10} {'B-A':>10}"]
    for nb in [n for n in ra if n in rb]:
        va = {v["name"]: v for v in ra[nb]["variants"]}
        vb = {v["name"]: v for v in rb[nb]["variants"]}
        for name in [n for n in va if n in vb]:
            for key in ("accuracy", "speedup_vs_reference"):
                x, y = va[name].get(key), vb[name].get(key)
                if isinstance(x, (int, float)) and isinstance(y, (int, float)):
                    lines.append(f"{nb:<14} {(name + ' ' + key)[:34]:<34} {x:>10.4g} {y:>10.4g} {y - x:>+10.4g}")
        for key in ra[nb].get("headline", []):
            x, y = ra[nb]["findings"].get(key), rb[nb]["findings"].get(key)
            if isinstance(x, (int, float)) and isinstance(y, (int, float)):
                lines.append(f"{nb:<14} {key[:34]:<34} {x:>10.4g} {y:>10.4g} {y - x:>+10.4g}")
    return "\n".join(lines)


def delete_runs(ids: Sequence[str], profile: str | None) -> str:
    if list(ids) == ["incomplete"]:
        targets = [d for d in runs.all_runs(profile) if runs.status(runs.read_manifest(d)) in
                   ("failed", "interrupted", "killed")]
    else:
        targets = [runs.find_run(i, profile) for i in ids]
    gone = runs.delete(targets)
    return f"deleted {len(gone)} run(s)" + (f": {', '.join(gone)}" if gone else "")


# ---------------------------------------------------------------------------------------------- a run

def _eta(profile: str, name: str) -> str:
    past = runs.minutes_history(profile, name)
    return f"~{statistics.median(past):.1f} min (median of {len(past)} earlier run(s))" if past else "no earlier run"


class _Gate:
    """A stream the notebooks' output passes through to the terminal; closed the moment the user interrupts, so the
    dying kernel's last words (a KeyboardInterrupt inside some ``__del__``) do not follow the runner's own message."""

    def __init__(self, stream: Any):
        self.stream, self.open = stream, True

    def write(self, text: str) -> int:
        if self.open:
            self.stream.write(text)
        return len(text)

    def flush(self) -> None:
        if self.open:
            self.stream.flush()


_gates: list[_Gate] = []


def _on_sigint(signum: int, frame: Any) -> None:
    for gate in _gates:
        gate.open = False
    raise KeyboardInterrupt()


def _on_sigterm(signum: int, frame: Any) -> None:
    for gate in _gates:
        gate.open = False
    raise Terminated()


def _redeliver_interrupts(unraisable: Any) -> None:
    """A Ctrl-C (or SIGTERM) that lands inside a finalizer (``__del__``) is "ignored" by Python, with a traceback:
    send the signal again, so it interrupts the run where it can, silently."""
    if isinstance(unraisable.exc_value, (KeyboardInterrupt, Terminated)):
        os.kill(os.getpid(), signal.SIGINT if isinstance(unraisable.exc_value, KeyboardInterrupt) else signal.SIGTERM)
        return
    sys.__unraisablehook__(unraisable)


def run_notebooks(profile: str, resolved: list[tuple[catalog.Notebook, dict]], overrides: Sequence[str],
                  timeout: int | None, stream: bool, argv: Sequence[str]) -> int:
    parsed = dict(params.parse_override(o) for o in overrides)
    run_dir = runs.start(profile, by="runner", notebooks=[nb.name for nb, _ in resolved], overrides=parsed,
                         override_diff=override_diff(profile, resolved, parsed), argv=argv)
    # Kernel connection files live in the run (removed when it ends): a killed run leaves nothing elsewhere.
    os.environ["JUPYTER_RUNTIME_DIR"] = str(run_dir / ".runtime")
    old_term = signal.signal(signal.SIGTERM, _on_sigterm)
    old_int = signal.signal(signal.SIGINT, _on_sigint)
    print(f"run {run_dir.name} (profile {profile!r}{', overrides ' + ' '.join(overrides) if overrides else ''}): "
          f"{run_dir}", file=sys.stderr)
    started, timings, final = time.perf_counter(), {}, "failed"
    current = None
    try:
        for i, (nb, values) in enumerate(resolved, 1):
            current = nb
            print(f"\n== [{i}/{len(resolved)}] {nb.name}: {_eta(profile, nb.name)}", file=sys.stderr, flush=True)
            t0, wall = time.perf_counter(), datetime.now(timezone.utc)
            runs.notebook_status(run_dir, nb.name, status="running", started=wall.isoformat(timespec="seconds"),
                                 load_average_start=runs.load_average())
            try:
                execute(nb, values, run_dir, timeout, stream)
            except (Exception, ArtifactError) as e:  # noqa: BLE001 - reported with context, then exit 1
                runs.notebook_status(run_dir, nb.name, status="failed", seconds=round(time.perf_counter() - t0, 1))
                print("\n" + _failure_message(nb, run_dir, e, timeout), file=sys.stderr)
                return 1
            timings[nb.name] = time.perf_counter() - t0
            results.stamp_run(profile, nb.name, timings[nb.name], wall)
            runs.notebook_status(run_dir, nb.name, status="complete", seconds=round(timings[nb.name], 1),
                                 load_average_end=runs.load_average())
            print(f"== {nb.name} done in {timings[nb.name] / 60:.1f} min", file=sys.stderr, flush=True)
            for flag in _record_warnings(run_dir, nb.name):
                print(f"   WARNING ({nb.name}): {flag}", file=sys.stderr, flush=True)
        final = "complete"
    except (KeyboardInterrupt, Terminated) as e:
        final = "interrupted"
        # nbclient's cell task dies with the kernel; when Python later collects it, asyncio logs "Task exception was
        # never retrieved ... DeadKernelError". The run is over and says so below: that log is noise now.
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        if current is not None:
            runs.notebook_status(run_dir, current.name, status="interrupted")
        what = "Ctrl-C" if isinstance(e, KeyboardInterrupt) else "SIGTERM"
        print(f"\ninterrupted ({what}) during {current.name if current else 'start-up'}: run {run_dir.name} is marked "
              "incomplete; completed notebooks and artifacts in it are intact, 'latest' is unchanged.",
              file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)
        _update_inputs(run_dir)
        runs.finish(run_dir, final)
        os.environ.pop("JUPYTER_RUNTIME_DIR", None)
        if final != "interrupted":  # a stopped run is left as it is; `--html RUN` writes its page later
            _write_report(run_dir)
    total = time.perf_counter() - started
    budget = results.budget_note(profile, total / 60).replace("*", "")
    print(f"\nDone: {len(resolved)} notebook(s), profile {profile!r}, {total / 60:.1f} min "
          f"({', '.join(f'{k} {v:.0f}s' for k, v in timings.items())}){f'; {budget}' if budget else ''}")
    print(f"  run folder: {run_dir}\n  latest: {paths.profile_dir(profile) / runs.LATEST}\n")
    print(headline(run_dir))
    return 0


def _write_report(run_dir: Path) -> None:
    """The run's ``report.html``, with whatever the run has; a failure here is reported, never the run's failure."""
    try:
        print(f"  report: {report.write_html(run_dir)}", file=sys.stderr, flush=True)
    except Exception as e:  # noqa: BLE001 - the run's results are intact; say why the page is missing
        print(f"  report.html not written ({type(e).__name__}: {e}); retry: python -m lib.run --html {run_dir.name}",
              file=sys.stderr, flush=True)


def _record_warnings(run_dir: Path, notebook: str) -> list[str]:
    """The warnings a notebook put in its record (e.g. a teacher that did not beat the majority class)."""
    try:
        return list(json.loads((run_dir / "metrics" / f"{notebook}.json").read_text(encoding="utf-8"))
                    .get("warnings") or [])
    except (OSError, json.JSONDecodeError):
        return []


def _update_inputs(run_dir: Path) -> None:
    """Collect what the run's notebooks took from earlier runs (their records say) into the manifest."""
    taken = {}
    for rec in results.load_run(run_dir):
        taken.update({f"{rec['notebook']}: {k}": v for k, v in (rec.get("inputs") or {}).items()})
    try:
        runs.update(run_dir, inputs=taken)
    except LabError:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    old_hook, sys.unraisablehook = sys.unraisablehook, _redeliver_interrupts
    try:
        return _main(argv)
    except KeyboardInterrupt:  # before a run started, or a second Ctrl-C while one was being closed
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        sys.unraisablehook = old_hook


def _main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.list:
        print(list_notebooks())
        return 0
    try:
        if args.runs:
            print(runs_table(args.profile))
            return 0
        if args.compare:
            print(compare_runs(runs.find_run(args.compare[0], args.profile), runs.find_run(args.compare[1], args.profile)))
            return 0
        if args.delete:
            print(delete_runs(args.delete, args.profile))
            return 0
        if args.html:
            print(report.write_html(runs.find_run(args.html, args.profile)))
            return 0
        if args.execution_timeout is not None and args.execution_timeout <= 0:
            raise ParamError(f"--execution-timeout must be a positive number of seconds, got {args.execution_timeout}")
        profile = args.profile or "default"
        resolved = plan(profile, args.only, args.param)
    except LabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.check:
        print(f"ok: {len(resolved)} notebook(s) valid for profile {profile!r}")
        return 0
    if args.mlflow:
        os.environ[tracking.ENV] = "1"  # the notebook kernels inherit it
    return run_notebooks(profile, resolved, args.param, args.execution_timeout, not args.quiet, argv)


if __name__ == "__main__":
    sys.exit(main())
