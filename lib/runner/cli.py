"""The runner, ``python -m lib.runner`` (``--help``): it merges ``params/<profile>.yaml`` and the ``-p``
overrides, checks the parameters, the data contract, the data file, the device and the artifacts to reuse
before anything runs; then runs the notebooks in order into a new run folder with papermill, their output
streamed, stops at the first failure (exit 1, naming the notebook, the cell's error and the executed copy)
and ends the run ``complete`` (``latest`` moves to it), ``failed`` or ``interrupted`` (Ctrl-C, SIGTERM)."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from ..errors import ArtifactError, LabError, ParamError, listing
from ..utils import cpu_ticks, load_average, resolve_device, steal_share
from . import catalog, contract, execute, folders, history, page, params, paths, readme, records, tracking

Plan = list[tuple[catalog.Notebook, dict]]  # each notebook of a run with its resolved values
MLFLOW_UI = "mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db"
OPTIONS = (  # (flags, argparse keywords): the command line, one line per option
    (("--profile",), dict(help="params/<profile>.yaml: smoke, quick or default (the default)")),
    (("--only",), dict(nargs="+", metavar="NOTEBOOK", help="just these notebooks (by space or comma)")),
    (("-p", "--param"), dict(action="append", default=[], metavar="NAME=VALUE", help="override a value")),
    (("--list",), dict(action="store_true", help="list the notebooks, what each needs and makes")),
    (("--check",), dict(action="store_true", help="validate parameters and prerequisites; run nothing")),
    (("--execution-timeout",), dict(type=int, metavar="SECONDS", help="fail a cell that runs longer")),
    (("--runs",), dict(action="store_true", help="list the runs (of --profile, if given)")),
    (("--compare",), dict(nargs=2, metavar=("RUN_A", "RUN_B"), help="what changed between two runs")),
    (("--delete",), dict(nargs="+", metavar="RUN", help="delete runs by id, or 'incomplete' ones")),
    (("--html",), dict(metavar="RUN", help="(re)write a run's report.html (each run writes its own)")),
    (("--mlflow",), dict(action="store_true", help=f"also log every record to MLflow: {MLFLOW_UI}")),
    (("--quiet",), dict(action="store_true", help="do not stream the notebooks' output")),
    (("--no-html",), dict(action="store_true", help="write no report.html (later: --html RUN)")),
    (("--results",), dict(metavar="RUN", help="print a run's results block (latest: the newest)")),
    (("--readme",), dict(metavar="RUN", help="publish a clean complete run's results block in README.md")),
)


def list_notebooks() -> str:
    rows = [(nb.name, ",".join(nb.needs), ",".join(nb.produces), nb.title) for nb in catalog.NOTEBOOKS]
    table = pd.DataFrame(rows, columns=["notebook", "needs", "produces", "title"]).to_string()
    profiles = ", ".join(params.available_profiles())
    return f"{table}\n\nprofiles: {profiles}\nneeds, produces: artifacts in a run's folder models/"


def select(only: Sequence[str] | None) -> list[catalog.Notebook]:
    names = [n.strip() for item in only or [] for n in item.split(",") if n.strip()]  # "a,b" or "a b"
    known = ", ".join(catalog.BY_NAME)
    if only is not None and not names:  # e.g. --only "$EMPTY_VAR": never silently run everything
        raise ParamError(f"--only names no notebook; leave it out to run all, or name some: {known}")
    if unknown := [n for n in names if n not in catalog.BY_NAME]:
        raise ParamError(f"unknown notebook(s) {unknown}; known: {known} (see --list)")
    return [nb for nb in catalog.NOTEBOOKS if only is None or nb.name in names]


def plan(profile: str, only: Sequence[str] | None, overrides: Sequence[str]) -> Plan:
    """Resolve and check everything up front; raise one error listing every problem."""
    data, notebooks = params.load_profile(profile), select(only)
    parsed = dict(params.parse_override(o) for o in overrides)
    every = {name for nb in notebooks for name in params.declared(nb.name)} | set(contract.FIELDS)
    unknown = [k for k in parsed if k not in every]
    errors = [f"override {k!r} is not a parameter here{params.did_you_mean(k, every)}" for k in unknown]
    refused = {"profile": "use --profile", "data_contract": "set its keys one by one (-p seed=1)"}
    errors += [f"-p {k}=...: {why}" for k, why in refused.items() if k in parsed]
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


def _preflight(profile: str, resolved: Plan) -> list[str]:
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
            made = catalog.made_under(path)
            if diffs := made and contract.differences(made, the_contract, f"run {path.parent.parent.name}"):
                fix = f"Run {catalog.producer_of(need)} in this run too (add it to --only), or match it."
                what = f"{nb.name} would use a '{need}' made under another data contract:"
                errors.append(f"{what}{listing(diffs, '    ')}\n  {fix}")
        made_here.update(nb.produces)
    return errors


def override_diff(profile: str, resolved: Plan, parsed: dict[str, Any]) -> dict:
    """Each ``-p`` override as ``{"profile": what the profile (or a default) gives, "run": it}``, the
    notebooks' values by name where they differ."""
    data = params.load_profile(profile)
    plain = {nb.name: params.resolve(profile, nb.name, {}, data) for nb, _ in resolved}
    plain = {n: {**r, **r["data_contract"]} for n, r in plain.items()}
    diff = {}
    for key, value in parsed.items():
        before = {n: r[key] for n, r in plain.items() if key in r}
        same = len({json.dumps(v, sort_keys=True) for v in before.values()}) == 1
        diff[key] = {"profile": next(iter(before.values())) if same else before, "run": value}
    return diff


def _say(*lines: str) -> None:
    print(*lines, file=sys.stderr, flush=True)


def _eta(profile: str, name: str) -> str:
    past = folders.minutes_history(profile, name)
    median = f"~{statistics.median(past or [0]):.1f} min (median of {len(past)} earlier run(s))"
    return median if past else "no earlier run"


def run_notebooks(
    profile: str,
    resolved: Plan,
    overrides: list,
    argv: list,
    timeout: int | None = None,
    stream: bool = True,
    html: bool = True,
) -> int:
    """Run ``resolved`` (see :func:`plan`) in a new run folder: 0 when all complete, 1 failed, 130 stopped."""
    parsed = dict(params.parse_override(o) for o in overrides)
    diff, the_contract = override_diff(profile, resolved, parsed), resolved[0][1]["data_contract"]
    fields = dict(overrides=parsed, override_diff=diff, argv=list(argv), data_contract=the_contract)
    run_dir = folders.start(profile, by="runner", notebooks=[nb.name for nb, _ in resolved], **fields)
    mark = functools.partial(folders.notebook_status, run_dir)
    # Kernel connection files live in the run (removed when it ends): a killed run leaves nothing elsewhere.
    os.environ["JUPYTER_RUNTIME_DIR"] = str(run_dir / ".runtime")
    old = signal.signal(signal.SIGTERM, execute.on_signal), signal.signal(signal.SIGINT, execute.on_signal)
    over = f", overrides {' '.join(overrides)}" if overrides else ""
    _say(f"run {run_dir.name} (profile {profile!r}{over}): {run_dir}")
    started, timings, final, nb = time.perf_counter(), {}, "failed", None
    try:
        for i, (nb, values) in enumerate(resolved, 1):
            t0, wall = time.perf_counter(), datetime.now(UTC)
            _say(f"\n== [{i}/{len(resolved)}] {nb.name}: {_eta(profile, nb.name)}")
            stamp, load, ticks = wall.isoformat(timespec="seconds"), load_average(), cpu_ticks()
            mark(nb.name, status="running", started=stamp, load_average_start=load)
            try:
                execute.execute(nb, values, run_dir, timeout, stream)
            except Exception as e:  # noqa: BLE001 - reported with context, then exit 1
                mark(nb.name, status="failed", seconds=round(time.perf_counter() - t0, 1))
                _say("\n" + execute.failure_message(nb, run_dir, e, timeout))
                return 1
            timings[nb.name] = seconds = time.perf_counter() - t0
            records.stamp_run(profile, nb.name, seconds, wall)
            stolen = steal_share(ticks, cpu_ticks())  # the hypervisor's share of the CPU meanwhile
            mark(nb.name, status="complete", seconds=round(seconds, 1), load_average_end=load_average(),
                 steal_share=stolen)  # fmt: skip
            made = run_dir / "metrics" / f"{nb.name}.json"
            found = json.loads(made.read_text(encoding="utf-8"))["warnings"] if made.exists() else []
            warnings = [f"   WARNING ({nb.name}): {w}" for w in found]
            steal = (
                f" ({stolen:.0%} of the CPU time stolen by the hypervisor)" if (stolen or 0) >= 0.01 else ""
            )
            _say(f"== {nb.name} done in {seconds / 60:.1f} min{steal}", *warnings)
        final = "complete"
    except (KeyboardInterrupt, execute.Terminated) as e:
        final = "interrupted"
        # nbclient's cell task dies with the kernel; collected later, asyncio logs "Task exception was never
        # retrieved ... DeadKernelError". The run is over and says so: that log is noise now.
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        if nb is not None:
            mark(nb.name, status="interrupted")
        what = "Ctrl-C" if isinstance(e, KeyboardInterrupt) else "SIGTERM"
        _say(
            f"\ninterrupted ({what}) during {nb.name if nb else 'start-up'}: run {run_dir.name} is marked "
            "incomplete; completed notebooks and artifacts in it are intact, 'latest' is unchanged."
        )
        return 130
    finally:
        signal.signal(signal.SIGTERM, old[0])
        signal.signal(signal.SIGINT, old[1])
        recs = records.load_run(run_dir)
        taken = {f"{r['notebook']}: {k}": v for r in recs for k, v in r["inputs"].items()}
        folders.update(run_dir, inputs=taken)
        folders.finish(run_dir, final)
        os.environ.pop("JUPYTER_RUNTIME_DIR", None)
        if final != "interrupted" and html:  # a stopped run is left as it is; `--html RUN` writes it later
            try:
                _say(f"  report: {page.write_html(run_dir)}")
            except Exception as e:  # noqa: BLE001 - the run's results are intact; say why the page is missing
                _say(f"  report.html not written ({e!r}); retry: python -m lib.runner --html RUN")
    total, each = time.perf_counter() - started, ", ".join(f"{k} {v:.0f}s" for k, v in timings.items())
    budget = readme.budget_note(profile, total / 60).replace("*", "")
    budget = f"; {budget}" if budget else ""
    print(f"\nDone: {len(resolved)} notebook(s), profile {profile!r}, {total / 60:.1f} min ({each}){budget}")
    print(f"  run folder: {run_dir}\n  latest: {paths.profile_dir(profile) / folders.LATEST}\n")
    print(readme.markdown_results(run_dir))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    old_hook, sys.unraisablehook = sys.unraisablehook, execute.redeliver_interrupts
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:  # before a run started, or a second Ctrl-C while one was being closed
        _say("\ninterrupted")
        return 130
    finally:
        sys.unraisablehook = old_hook


def _answer(args: argparse.Namespace) -> str | None:
    """The answer of a command that runs nothing (``--runs``, ``--compare``...), or ``None``."""
    find = lambda run: folders.find_run(run, args.profile or "default")  # noqa: E731
    if args.readme:
        run_dir = find(args.readme)
        prof = args.profile or "default"
        changed = readme.update_readme(paths.ROOT / "README.md", run_dir, prof)
        path = readme.update_readme(paths.NOTEBOOKS / "README.md", run_dir, prof, readme.learning_path)
        state = lambda c: "updated" if c else "already current"  # noqa: E731
        return f"README.md results {state(changed)}, notebooks/README.md {state(path)} (run {run_dir.name})"
    commands = {
        "list": list_notebooks, "runs": lambda: history.runs_table(args.profile),
        "compare": lambda: history.compare_runs(*map(find, args.compare)),
        "delete": lambda: history.delete_runs(args.delete, args.profile),
        "html": lambda: page.write_html(find(args.html)),
        "results": lambda: readme.markdown_results(find(args.results)),
    }  # fmt: skip
    return next((str(answer()) for name, answer in commands.items() if getattr(args, name)), None)


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib.runner", description=__doc__.split("\n\n")[0])
    for flags, kwargs in OPTIONS:
        parser.add_argument(*flags, **kwargs)
    args = parser.parse_args(argv)
    try:
        if (answer := _answer(args)) is not None:
            print(answer)
            return 0
        if args.execution_timeout is not None and args.execution_timeout <= 0:
            raise ParamError(f"--execution-timeout must be a positive number, got {args.execution_timeout}")
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
    return run_notebooks(
        profile, resolved, args.param, argv, args.execution_timeout, not args.quiet, not args.no_html
    )
