"""The runner: execute the notebooks in order with papermill, under a params profile, each run in its own
folder. ``python -m lib.runner --help`` lists the commands (run, --check, --list, --runs, --compare, --delete,
--html).

Before running anything it merges ``params/<profile>.yaml`` with the ``-p`` overrides and validates every
selected notebook's parameters and the run's data contract, then looks at the world: the CSV file, the
prerequisite artifacts of an earlier run and the contract they were made under, the device. Then it starts a
run folder (:mod:`.folders`), executes the notebooks in order into it, streaming each cell's output to the
terminal, stops at the first failure (exit 1, naming the notebook, the failing cell's error and the executed
copy), and ends the run: ``complete`` (``outputs/<profile>/latest`` moves to it), ``failed`` or
``interrupted`` (Ctrl-C, SIGTERM).
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
from ..utils import load_average, resolve_device
from . import catalog, contract, execute, folders, history, page, params, paths, readme, records, tracking

OPTIONS = (  # (flags, argparse keywords): the command line, one line per option
    (("--profile",), dict(help="params/<profile>.yaml: smoke, quick or default (the default)")),
    (
        ("--only",),
        dict(nargs="+", metavar="NOTEBOOK", help="just these notebooks (space- or comma-separated)"),
    ),
    (("-p", "--param"), dict(action="append", default=[], metavar="NAME=VALUE", help="override a parameter")),
    (("--list",), dict(action="store_true", help="list the notebooks, what each needs and makes, and exit")),
    (("--check",), dict(action="store_true", help="validate parameters and prerequisites only; run nothing")),
    (("--execution-timeout",), dict(type=int, metavar="SECONDS", help="fail a cell that runs longer")),
    (("--runs",), dict(action="store_true", help="list the runs (of --profile, if given) and exit")),
    (("--compare",), dict(nargs=2, metavar=("RUN_A", "RUN_B"), help="what changed between two runs")),
    (
        ("--delete",),
        dict(
            nargs="+",
            metavar="RUN",
            help="delete runs by id, or 'incomplete' (every ended run that did not complete)",
        ),
    ),
    (
        ("--html",),
        dict(metavar="RUN", help="(re)write a run's report.html and exit (a run writes it at its end)"),
    ),
    (
        ("--mlflow",),
        dict(
            action="store_true",
            help="also log every record to MLflow (outputs/mlflow.db; browse "
            "with `mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db`)",
        ),
    ),
    (("--quiet",), dict(action="store_true", help="do not stream the notebooks' output")),
)


def list_notebooks() -> str:
    rows = [
        f"{i:>2}  {nb.name:<20} {','.join(nb.needs) or '-':<14} {','.join(nb.produces) or '-':<14} {nb.title}"
        for i, nb in enumerate(catalog.NOTEBOOKS)
    ]
    return "\n".join(
        [
            f"{'#':>2}  {'notebook':<20} {'needs':<14} {'produces':<14} title",
            *rows,
            f"\nprofiles: {', '.join(params.available_profiles())}",
            "needs/produces name artifacts in a run folder's models/ (outputs/<profile>/runs/<id>/models/).",
        ]
    )


def select(only: Sequence[str] | None) -> list[catalog.Notebook]:
    if only is None:
        return list(catalog.NOTEBOOKS)
    only = [n.strip() for item in only for n in item.split(",") if n.strip()]  # "a,b" or "a b"
    if not only:  # e.g. --only "$EMPTY_VAR": never silently run everything
        raise ParamError(
            f"--only names no notebook; leave it out to run them all, or name some: "
            f"{', '.join(catalog.BY_NAME)}"
        )
    unknown = [n for n in only if n not in catalog.BY_NAME]
    if unknown:
        raise ParamError(f"unknown notebook(s) {unknown}; known: {', '.join(catalog.BY_NAME)} (see --list)")
    return [nb for nb in catalog.NOTEBOOKS if nb.name in only]


def plan(
    profile: str, only: Sequence[str] | None, overrides: Sequence[str]
) -> list[tuple[catalog.Notebook, dict]]:
    """Resolve and check everything up front; raise one error listing every problem."""
    data, notebooks = params.load_profile(profile), select(only)
    parsed = dict(params.parse_override(o) for o in overrides)
    every = {name for nb in notebooks for name in params.declared(nb.name)} | set(contract.FIELDS)
    errors = [
        f"override {k!r} is not a parameter of any selected notebook nor of the data contract"
        + (f"; did you mean {params.close_names(k, every)}?" if params.close_names(k, every) else "")
        for k in parsed
        if k not in every
    ]
    errors += ["set the profile with --profile, not -p profile=..."] * ("profile" in parsed)
    errors += ["set the contract's keys one by one (-p max_train_samples=0), not -p data_contract=..."] * (
        "data_contract" in parsed
    )
    try:
        the_contract = params.run_contract(data, parsed)
    except ParamError as e:
        errors, the_contract = [*errors, str(e)], {}
    resolved = []
    for nb in notebooks:
        try:
            resolved.append((nb, params.resolve(profile, nb.name, parsed, data, the_contract)))
        except ParamError as e:
            errors.append(str(e))
    if not errors:  # the world is only worth checking once the values are right
        errors = _preflight(profile, resolved)
    if errors:
        raise ParamError("cannot start the run:\n" + "\n".join(f"* {e}" for e in errors))
    return resolved


def _preflight(profile: str, resolved: Sequence[tuple[catalog.Notebook, dict]]) -> list[str]:
    """The data file, the device, the prerequisite artifacts and the data contract they were made under."""
    the_contract = resolved[0][1]["data_contract"]  # the same for every notebook of a run
    errors = [p for p in [contract.data_problem(the_contract)] if p]
    for device in sorted({v["device"] for _, v in resolved}):
        try:
            resolve_device(device)
        except ParamError as e:
            errors.append(str(e))
    made_here: set[str] = set()
    for nb, values in resolved:
        for need in sorted(set(nb.needs) - made_here):
            try:
                path = catalog.require_artifact(profile, need, values.get("input_run", ""))
            except ArtifactError as e:
                errors.append(f"{nb.name}: {e}")
                continue
            made = json.loads((path / catalog.METADATA).read_text(encoding="utf-8")).get("params", {})
            diffs = made and contract.differences(
                contract.of(made), the_contract, f"the {need} of run {path.parent.parent.name}"
            )
            if diffs:
                errors.append(
                    f"{nb.name} would use a '{need}' made under another data contract:\n    - "
                    + "\n    - ".join(diffs)
                    + f"\n  Run {catalog.producer_of(need)} in this run too (add it to --only), or match it."
                )
        made_here.update(nb.produces)
    return errors


def override_diff(
    profile: str, resolved: Sequence[tuple[catalog.Notebook, dict]], parsed: dict[str, Any]
) -> dict:
    """Each ``-p`` override as ``{"profile": what the profile (or a default) gives, "run": it}``."""
    data, diff = params.load_profile(profile), {}
    plain = {nb.name: params.resolve(profile, nb.name, {}, data) for nb, _ in resolved}
    for key, value in parsed.items():
        before = {
            n: (r["data_contract"] if key in contract.FIELDS else r)[key]
            for n, r in plain.items()
            if key in r or key in contract.FIELDS
        }
        was = list({json.dumps(v, sort_keys=True): v for v in before.values()}.values())
        diff[key] = {"profile": was[0] if len(was) == 1 else before, "run": value}
    return diff


def _say(*lines: str) -> None:
    print(*lines, file=sys.stderr, flush=True)


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
    folders.update(run_dir, data_contract=resolved[0][1]["data_contract"])
    # Kernel connection files live in the run (removed when it ends): a killed run leaves nothing elsewhere.
    os.environ["JUPYTER_RUNTIME_DIR"] = str(run_dir / ".runtime")
    old = signal.signal(signal.SIGTERM, execute.on_sigterm), signal.signal(signal.SIGINT, execute.on_sigint)
    _say(
        f"run {run_dir.name} (profile "
        f"{profile!r}{', overrides ' + ' '.join(overrides) if overrides else ''}): {run_dir}"
    )
    started, timings, final, current = time.perf_counter(), {}, "failed", None
    try:
        for i, (nb, values) in enumerate(resolved, 1):
            current, t0, wall = nb, time.perf_counter(), datetime.now(UTC)
            _say(f"\n== [{i}/{len(resolved)}] {nb.name}: {_eta(profile, nb.name)}")
            folders.notebook_status(
                run_dir,
                nb.name,
                status="running",
                started=wall.isoformat(timespec="seconds"),
                load_average_start=load_average(),
            )
            try:
                execute.execute(nb, values, run_dir, timeout, stream)
            except Exception as e:  # noqa: BLE001 - reported with context, then exit 1
                folders.notebook_status(
                    run_dir, nb.name, status="failed", seconds=round(time.perf_counter() - t0, 1)
                )
                _say("\n" + execute.failure_message(nb, run_dir, e, timeout))
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
            _say(
                f"== {nb.name} done in {timings[nb.name] / 60:.1f} min",
                *[f"   WARNING ({nb.name}): {w}" for w in _record(run_dir, nb.name).get("warnings") or []],
            )
        final = "complete"
    except (KeyboardInterrupt, execute.Terminated) as e:
        final = "interrupted"
        # nbclient's cell task dies with the kernel; collected later, asyncio logs "Task exception was never
        # retrieved ... DeadKernelError". The run is over and says so: that log is noise now.
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        if current is not None:
            folders.notebook_status(run_dir, current.name, status="interrupted")
        _say(
            f"\ninterrupted ({'Ctrl-C' if isinstance(e, KeyboardInterrupt) else 'SIGTERM'}) during "
            f"{current.name if current else 'start-up'}: run {run_dir.name} is marked incomplete; completed "
            "notebooks and artifacts in it are intact, 'latest' is unchanged."
        )
        return 130
    finally:
        signal.signal(signal.SIGTERM, old[0])
        signal.signal(signal.SIGINT, old[1])
        taken = {
            f"{r['notebook']}: {k}": v
            for r in records.load_run(run_dir)
            for k, v in (r.get("inputs") or {}).items()
        }
        folders.update(run_dir, inputs=taken)
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
    """The run's ``report.html``; a failure here is reported, never the run's failure."""
    try:
        _say(f"  report: {page.write_html(run_dir)}")
    except Exception as e:  # noqa: BLE001 - the run's results are intact; say why the page is missing
        _say(
            f"  report.html not written ({type(e).__name__}: {e}); retry: python -m lib.runner --html "
            f"{run_dir.name}"
        )


def _record(run_dir: Path, notebook: str) -> dict[str, Any]:
    """The record a notebook wrote in this run ({} if none)."""
    try:
        return json.loads((run_dir / "metrics" / f"{notebook}.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def main(argv: Sequence[str] | None = None) -> int:
    old_hook, sys.unraisablehook = sys.unraisablehook, execute.redeliver_interrupts
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:  # before a run started, or a second Ctrl-C while one was being closed
        _say("\ninterrupted")
        return 130
    finally:
        sys.unraisablehook = old_hook


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib.runner", description=__doc__.split("\n\n")[0])
    for flags, kwargs in OPTIONS:
        parser.add_argument(*flags, **kwargs)
    args = parser.parse_args(argv)
    if args.list:
        print(list_notebooks())
        return 0
    try:
        if args.runs or args.compare or args.delete or args.html:
            find = lambda run: folders.find_run(run, args.profile)  # noqa: E731
            print(
                history.runs_table(args.profile)
                if args.runs
                else history.compare_runs(find(args.compare[0]), find(args.compare[1]))
                if args.compare
                else history.delete_runs(args.delete, args.profile)
                if args.delete
                else page.write_html(find(args.html))
            )
            return 0
        if args.execution_timeout is not None and args.execution_timeout <= 0:
            raise ParamError(
                f"--execution-timeout must be a positive number of seconds, got {args.execution_timeout}"
            )
        profile = args.profile or "default"
        resolved = plan(profile, args.only, args.param)
    except LabError as e:
        _say(f"error: {e}")
        return 2
    if args.check:
        print(f"ok: {len(resolved)} notebook(s) valid for profile {profile!r}")
        return 0
    if args.mlflow:
        os.environ[tracking.ENV] = "1"  # the notebook kernels inherit it
    return run_notebooks(profile, resolved, args.param, args.execution_timeout, not args.quiet, argv)
