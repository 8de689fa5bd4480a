"""The runner: execute the notebooks in order with papermill, under a params profile, each run in its own
folder.

    python -m lib.runner --list python -m lib.runner --profile quick python -m lib.runner --profile quick
    --only 00_baseline -p num_epochs=1 python -m lib.runner --runs                      # every run: id,
    profile, overrides, status, minutes, headline python -m lib.runner --compare RUN_A RUN_B       # what
    changed in parameters and in numbers python -m lib.runner --delete RUN [RUN ...]      # or --delete
    incomplete

Before running anything it merges ``params/<profile>.yaml`` with the ``-p`` overrides, validates every
selected notebook's parameters (unknown name, wrong type, impossible value) and looks at the world
(:mod:`lib.runner.preflight`: the CSV file, the prerequisite artifacts of an earlier run and the data settings
they were made with, the device). Then it starts a run folder (:mod:`lib.runner.folders`), executes the
notebooks in order into it, streaming each cell's output (progress bars, log lines) to the terminal, stops at
the first failure (exit 1, naming the notebook, the failing cell's error and the executed copy), and ends the
run: ``complete`` (``outputs/<profile>/latest`` moves to it), ``failed`` or ``interrupted`` (Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import ArtifactError, LabError, ParamError
from ..utils import load_average
from . import catalog, execute, folders, history, page, params, paths, preflight, readme, records, tracking


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lib.runner",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--profile", default=None, help="params/<profile>.yaml (smoke, quick, default; default: default)"
    )
    p.add_argument(
        "--only",
        nargs="+",
        metavar="NOTEBOOK",
        help="run just these notebooks (in catalog order; space- or comma-separated)",
    )
    p.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a parameter for every selected notebook that declares it (repeatable)",
    )
    p.add_argument(
        "--list", action="store_true", help="list notebooks, their order and prerequisites, and exit"
    )
    p.add_argument(
        "--check", action="store_true", help="validate parameters and prerequisites only; run nothing"
    )
    p.add_argument(
        "--execution-timeout",
        type=int,
        default=None,
        metavar="SECONDS",
        help="fail a cell that runs longer than this (default: no limit)",
    )
    p.add_argument("--runs", action="store_true", help="list the runs (of --profile, if given) and exit")
    p.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"), help="what changed between two runs")
    p.add_argument(
        "--delete",
        nargs="+",
        metavar="RUN",
        help="delete runs by id, or 'incomplete' for every ended run that did not complete",
    )
    p.add_argument(
        "--html",
        metavar="RUN",
        help="(re)write a run's report.html (its table, figures and every executed "
        "notebook as HTML) and exit; the runner writes it at the end of every run",
    )
    p.add_argument(
        "--mlflow",
        action="store_true",
        help="also log every record to MLflow (a local store: "
        "outputs/mlflow.db; browse with `mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db`)",
    )
    p.add_argument(
        "--quiet", action="store_true", help="do not stream the notebooks' output (one bar per notebook)"
    )
    return p


def list_notebooks() -> str:
    lines = [f"{'#':>2}  {'notebook':<20} {'needs':<14} {'produces':<14} title"]
    for i, nb in enumerate(catalog.NOTEBOOKS):
        lines.append(
            f"{i:>2}  {nb.name:<20} {','.join(nb.needs) or '-':<14} {','.join(nb.produces) or '-':<14} "
            f"{nb.title}"
        )
    lines.append(f"\nprofiles: {', '.join(params.available_profiles())}")
    lines.append(
        "needs/produces name artifacts in a run folder's models/ (outputs/<profile>/runs/<id>/models/)."
    )
    return "\n".join(lines)


def select(only: Sequence[str] | None) -> list[catalog.Notebook]:
    if only is None:
        return list(catalog.NOTEBOOKS)
    only = [n.strip() for item in only for n in item.split(",") if n.strip()]  # "a,b" or "a b"
    if not only:  # e.g. --only "$EMPTY_VAR": never silently run everything
        raise ParamError(
            "--only names no notebook (empty or only commas); leave --only out to run every notebook, "
            f"or name some: {', '.join(catalog.BY_NAME)}"
        )
    unknown = [n for n in only if n not in catalog.BY_NAME]
    if unknown:
        raise ParamError(f"unknown notebook(s) {unknown}; known: {', '.join(catalog.BY_NAME)} (see --list)")
    return [nb for nb in catalog.NOTEBOOKS if nb.name in only]


def plan(
    profile: str, only: Sequence[str] | None, overrides: Sequence[str]
) -> list[tuple[catalog.Notebook, dict]]:
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
            errors.append(
                f"override {key!r} is not a parameter of any selected notebook "
                f"({', '.join(declared)})" + (f"; did you mean {close}?" if close else "")
            )
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
                where = folders.source(profile, f"models/{need}", values.get("input_run", ""))
            except ArtifactError as e:
                errors.append(
                    f"{nb.name} needs the '{need}' artifact, which is missing ({e}). "
                    f"{catalog.artifact_hint(need, profile)}"
                )
                continue
            problem = catalog.check_artifact(where / "models" / need)
            if problem:
                errors.append(
                    f"{nb.name} needs the '{need}' artifact, which {problem}. "
                    f"{catalog.artifact_hint(need, profile)}"
                )
                continue
            producer = catalog.producer_of(need)
            theirs = preflight.producer_params(where, producer) if producer else None
            diffs = preflight.split_differences(theirs, values, producer) if theirs is not None else []
            if diffs:
                errors.append(
                    f"{nb.name} would use the '{need}' of run {where.name}, made with other data or model "
                    "settings:\n    - "
                    + "\n    - ".join(diffs)
                    + f"\n  Run {producer} with these settings too (add it to --only), or match them."
                )
        made_here.update(nb.produces)
    return errors


def override_diff(
    profile: str, resolved: Sequence[tuple[catalog.Notebook, dict]], parsed: dict[str, Any]
) -> dict[str, Any]:
    """Each ``-p`` override as ``{"profile": what the profile (or the notebook default) gives, "run": the
    value}``."""
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


# ------------------------------------------------------------------------ a run


def _eta(profile: str, name: str) -> str:
    past = folders.minutes_history(profile, name)
    return (
        f"~{statistics.median(past):.1f} min (median of {len(past)} earlier run(s))"
        if past
        else "no earlier run"
    )


def run_notebooks(
    profile: str,
    resolved: list[tuple[catalog.Notebook, dict]],
    overrides: Sequence[str],
    timeout: int | None,
    stream: bool,
    argv: Sequence[str],
) -> int:
    parsed = dict(params.parse_override(o) for o in overrides)
    run_dir = folders.start(
        profile,
        by="runner",
        notebooks=[nb.name for nb, _ in resolved],
        overrides=parsed,
        override_diff=override_diff(profile, resolved, parsed),
        argv=argv,
    )
    # Kernel connection files live in the run (removed when it ends): a killed run leaves nothing elsewhere.
    os.environ["JUPYTER_RUNTIME_DIR"] = str(run_dir / ".runtime")
    old_term = signal.signal(signal.SIGTERM, execute.on_sigterm)
    old_int = signal.signal(signal.SIGINT, execute.on_sigint)
    print(
        f"run {run_dir.name} (profile "
        f"{profile!r}{', overrides ' + ' '.join(overrides) if overrides else ''}): "
        f"{run_dir}",
        file=sys.stderr,
    )
    started, timings, final = time.perf_counter(), {}, "failed"
    current = None
    try:
        for i, (nb, values) in enumerate(resolved, 1):
            current = nb
            print(
                f"\n== [{i}/{len(resolved)}] {nb.name}: {_eta(profile, nb.name)}", file=sys.stderr, flush=True
            )
            t0, wall = time.perf_counter(), datetime.now(UTC)
            folders.notebook_status(
                run_dir,
                nb.name,
                status="running",
                started=wall.isoformat(timespec="seconds"),
                load_average_start=load_average(),
            )
            try:
                execute.execute(nb, values, run_dir, timeout, stream)
            except (Exception, ArtifactError) as e:  # noqa: BLE001 - reported with context, then exit 1
                folders.notebook_status(
                    run_dir, nb.name, status="failed", seconds=round(time.perf_counter() - t0, 1)
                )
                print("\n" + execute.failure_message(nb, run_dir, e, timeout), file=sys.stderr)
                return 1
            timings[nb.name] = time.perf_counter() - t0
            records.stamp_run(profile, nb.name, timings[nb.name], wall)
            folders.notebook_status(
                run_dir,
                nb.name,
                status="complete",
                seconds=round(timings[nb.name], 1),
                load_average_end=load_average(),
            )
            print(f"== {nb.name} done in {timings[nb.name] / 60:.1f} min", file=sys.stderr, flush=True)
            for flag in _record_warnings(run_dir, nb.name):
                print(f"   WARNING ({nb.name}): {flag}", file=sys.stderr, flush=True)
        final = "complete"
    except (KeyboardInterrupt, execute.Terminated) as e:
        final = "interrupted"
        # nbclient's cell task dies with the kernel; when Python later collects it, asyncio logs "Task
        # exception was never retrieved ... DeadKernelError". The run is over and says so below: that log is
        # noise now.
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        if current is not None:
            folders.notebook_status(run_dir, current.name, status="interrupted")
        what = "Ctrl-C" if isinstance(e, KeyboardInterrupt) else "SIGTERM"
        print(
            f"\ninterrupted ({what}) during {current.name if current else 'start-up'}: run {run_dir.name} is "
            f"marked "
            "incomplete; completed notebooks and artifacts in it are intact, 'latest' is unchanged.",
            file=sys.stderr,
        )
        return 130
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)
        _update_inputs(run_dir)
        folders.finish(run_dir, final)
        os.environ.pop("JUPYTER_RUNTIME_DIR", None)
        if final != "interrupted":  # a stopped run is left as it is; `--html RUN` writes its page later
            _write_report(run_dir)
    total = time.perf_counter() - started
    budget = readme.budget_note(profile, total / 60).replace("*", "")
    print(
        f"\nDone: {len(resolved)} notebook(s), profile {profile!r}, {total / 60:.1f} min "
        f"({', '.join(f'{k} {v:.0f}s' for k, v in timings.items())}){f'; {budget}' if budget else ''}"
    )
    print(f"  run folder: {run_dir}\n  latest: {paths.profile_dir(profile) / folders.LATEST}\n")
    print(history.headline(run_dir))
    return 0


def _write_report(run_dir: Path) -> None:
    """The run's ``report.html``, with whatever the run has; a failure here is reported, never the run's
    failure."""
    try:
        print(f"  report: {page.write_html(run_dir)}", file=sys.stderr, flush=True)
    except Exception as e:  # noqa: BLE001 - the run's results are intact; say why the page is missing
        print(
            f"  report.html not written ({type(e).__name__}: {e}); retry: python -m lib.runner --html "
            f"{run_dir.name}",
            file=sys.stderr,
            flush=True,
        )


def _record_warnings(run_dir: Path, notebook: str) -> list[str]:
    """The warnings a notebook put in its record (e.g. a teacher that did not beat the majority class)."""
    try:
        return list(
            json.loads((run_dir / "metrics" / f"{notebook}.json").read_text(encoding="utf-8")).get("warnings")
            or []
        )
    except (OSError, json.JSONDecodeError):
        return []


def _update_inputs(run_dir: Path) -> None:
    """Collect what the run's notebooks took from earlier runs (their records say) into the manifest."""
    taken = {}
    for rec in records.load_run(run_dir):
        taken.update({f"{rec['notebook']}: {k}": v for k, v in (rec.get("inputs") or {}).items()})
    try:
        folders.update(run_dir, inputs=taken)
    except LabError:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    old_hook, sys.unraisablehook = sys.unraisablehook, execute.redeliver_interrupts
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
            print(history.runs_table(args.profile))
            return 0
        if args.compare:
            print(
                history.compare_runs(
                    folders.find_run(args.compare[0], args.profile),
                    folders.find_run(args.compare[1], args.profile),
                )
            )
            return 0
        if args.delete:
            print(history.delete_runs(args.delete, args.profile))
            return 0
        if args.html:
            print(page.write_html(folders.find_run(args.html, args.profile)))
            return 0
        if args.execution_timeout is not None and args.execution_timeout <= 0:
            raise ParamError(
                f"--execution-timeout must be a positive number of seconds, got {args.execution_timeout}"
            )
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
