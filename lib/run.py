"""The runner: execute the notebooks in order with papermill, under a params profile.

    python -m lib.run --list
    python -m lib.run --profile quick
    python -m lib.run --profile quick --only 00_baseline -p num_epochs=1

Before running anything it merges ``params/<profile>.yaml`` with the ``-p`` overrides, validates every
selected notebook's parameters (unknown name, wrong type, impossible value) and checks each notebook's
prerequisite artifacts (made earlier in this run, or already on disk). Then it executes the notebooks in
order into ``outputs/<profile>/notebooks/``, stops at the first failure (exit 1, naming the notebook, the
failing cell's error and the executed copy), and ends with where everything is and the headline numbers.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from tqdm.auto import tqdm

from . import catalog, params, paths, results
from .errors import ArtifactError, LabError, ParamError

KERNEL = "python3"  # the kernel of the Python running the runner (the project's .venv under make)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lib.run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="default", help="params/<profile>.yaml (smoke, quick, default)")
    p.add_argument("--only", nargs="+", metavar="NOTEBOOK", help="run just these notebooks (in catalog order; space- or comma-separated)")
    p.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                   help="override a parameter for every selected notebook that declares it (repeatable)")
    p.add_argument("--list", action="store_true", help="list notebooks, their order and prerequisites, and exit")
    p.add_argument("--check", action="store_true", help="validate parameters and prerequisites only; run nothing")
    p.add_argument("--execution-timeout", type=int, default=None, metavar="SECONDS",
                   help="fail a cell that runs longer than this (default: no limit)")
    return p


def list_notebooks() -> str:
    lines = [f"{'#':>2}  {'notebook':<20} {'needs':<14} {'produces':<14} title"]
    for i, nb in enumerate(catalog.NOTEBOOKS):
        lines.append(f"{i:>2}  {nb.name:<20} {','.join(nb.needs) or '-':<14} {','.join(nb.produces) or '-':<14} "
                     f"{nb.title}")
    lines.append(f"\nprofiles: {', '.join(params.available_profiles())}")
    lines.append("needs/produces name artifacts in outputs/<profile>/models/.")
    return "\n".join(lines)


def select(only: Sequence[str] | None) -> list[catalog.Notebook]:
    only = [n.strip() for item in (only or []) for n in item.split(",") if n.strip()]  # "a,b" or "a b"
    if not only:
        return list(catalog.NOTEBOOKS)
    unknown = [n for n in only if n not in catalog.BY_NAME]
    if unknown:
        raise ParamError(f"unknown notebook(s) {unknown}; known: {', '.join(catalog.BY_NAME)} (see --list)")
    return [nb for nb in catalog.NOTEBOOKS if nb.name in only]


def plan(profile: str, only: Sequence[str] | None, overrides: Sequence[str]) -> list[tuple[catalog.Notebook, dict]]:
    """Resolve and validate everything up front; raise one error listing every problem."""
    data = params.load_profile(profile)
    notebooks = select(only)
    parsed = dict(params.parse_override(o) for o in overrides)
    declared = {nb.name: params.declared(nb.name) for nb in notebooks}
    errors: list[str] = []
    for key in parsed:
        if not any(key in d for d in declared.values()):
            errors.append(f"override {key!r} is not a parameter of any selected notebook "
                          f"({', '.join(declared)})")
    if "profile" in parsed:
        errors.append("set the profile with --profile, not -p profile=...")
    resolved = []
    for nb in notebooks:
        try:
            resolved.append((nb, params.resolve(profile, nb.name, parsed, data)))
        except ParamError as e:
            errors.append(str(e))
    made_here: set[str] = set()
    for nb in notebooks:
        for need in nb.needs:
            if need in made_here:
                continue
            problem = catalog.check_artifact(paths.artifact_dir(profile, need))
            if problem:
                errors.append(f"{nb.name} needs the '{need}' artifact, which {problem}. "
                              f"{catalog.artifact_hint(need, profile)}")
        made_here.update(nb.produces)
    if errors:
        raise ParamError("cannot start the run:\n" + "\n".join(f"* {e}" for e in errors))
    return resolved


def execute(nb: catalog.Notebook, values: dict[str, Any], profile: str, timeout: int | None) -> Path:
    """Run one notebook with papermill; the executed copy lands atomically at its output path."""
    import papermill as pm  # heavy (jupyter, nbclient): imported only when a notebook really runs

    out = paths.executed_notebook(profile, nb.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    running = out.with_name(f"{nb.name}.running.ipynb")
    failed = out.with_name(f"{nb.name}.failed.ipynb")
    failed.unlink(missing_ok=True)
    try:
        pm.execute_notebook(str(paths.notebook_path(nb.name)), str(running), parameters=values, kernel_name=KERNEL,
                            cwd=str(paths.NOTEBOOKS), progress_bar=True, execution_timeout=timeout,
                            report_mode=False)
    except BaseException:
        if running.exists():
            os.replace(running, failed)
        raise
    os.replace(running, out)
    return out


def _failure_message(nb: catalog.Notebook, profile: str, err: BaseException, timeout: int | None) -> str:
    from papermill.exceptions import PapermillExecutionError  # heavy: only once a run has failed

    where = paths.executed_notebook(profile, nb.name).with_name(f"{nb.name}.failed.ipynb")
    if isinstance(err, PapermillExecutionError):
        what = f"cell {err.cell_index} raised {err.ename}: {err.evalue}"
    elif type(err).__name__ in ("CellTimeoutError", "TimeoutError") or "timed out" in str(err).lower():
        what = f"a cell ran longer than --execution-timeout={timeout}s ({type(err).__name__})"
    else:
        what = f"{type(err).__name__}: {err}"
    return f"FAILED: {nb.name}: {what}\n  executed notebook (open it to see the traceback): {where}"


def headline(profile: str, names: Sequence[str]) -> str:
    """A short table of every variant measured by the given notebooks in this profile."""
    rows = [f"{'notebook':<14} {'variant':<22} {'acc':>6} {'F1':>6} {'MB':>7} {'ms b1':>7} {'smp/s b32':>10} "
            f"{'speedup':>8}"]

    def fmt(x: Any, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    for name in names:
        try:
            rec = results.load(profile, name)
        except FileNotFoundError:
            continue
        for v in rec["variants"]:
            rows.append(f"{name:<14} {v['name']:<22} {fmt(v['accuracy'], '.4f'):>6} {fmt(v['f1'], '.4f'):>6} "
                        f"{fmt(v['size_mb'], '.1f'):>7} {fmt(v['latency_ms_b1_p50'], '.2f'):>7} "
                        f"{fmt(v['throughput_b32'], '.1f'):>10} {fmt(v['speedup_vs_reference'], '.2f'):>8}")
        for k in rec.get("headline", []):  # the few findings a notebook names as its headline
            val = rec["findings"].get(k)
            if isinstance(val, (int, float)) and not isinstance(val, bool):
                rows.append(f"{'':<14} {k} = {val:.4g}")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list:
        print(list_notebooks())
        return 0
    try:
        resolved = plan(args.profile, args.only, args.param)
    except LabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.check:
        print(f"ok: {len(resolved)} notebook(s) valid for profile {args.profile!r}")
        return 0
    started = time.perf_counter()
    timings = {}
    bar = tqdm(resolved, desc=f"profile {args.profile}", unit="notebook", position=0)
    for nb, values in bar:
        bar.set_postfix_str(nb.name)
        t0, wall = time.perf_counter(), datetime.now(timezone.utc)
        try:
            execute(nb, values, args.profile, args.execution_timeout)
        except KeyboardInterrupt:
            print(f"\ninterrupted during {nb.name}; completed notebooks and artifacts are intact", file=sys.stderr)
            return 130
        except (Exception, ArtifactError) as e:  # noqa: BLE001 - reported with context, then exit 1
            bar.close()
            print("\n" + _failure_message(nb, args.profile, e, args.execution_timeout), file=sys.stderr)
            return 1
        timings[nb.name] = time.perf_counter() - t0
        results.stamp_run(args.profile, nb.name, timings[nb.name], wall)
    bar.close()
    total = time.perf_counter() - started
    base = paths.profile_dir(args.profile)
    budget = results.budget_note(args.profile, total / 60).replace("*", "")
    print(f"\nDone: {len(resolved)} notebook(s), profile {args.profile!r}, {total / 60:.1f} min "
          f"({', '.join(f'{k} {v:.0f}s' for k, v in timings.items())}){f'; {budget}' if budget else ''}")
    print(f"  executed notebooks: {base / 'notebooks'}\n  metrics: {base / 'metrics'}\n"
          f"  figures: {base / 'figures'}\n  models: {base / 'models'}\n")
    print(headline(args.profile, list(timings)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
