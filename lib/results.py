"""The metrics record: one JSON file per notebook run, ``<run>/metrics/<notebook>.json`` (a run folder: :mod:`lib.runs`).

Other tools and the ``08_report`` notebook read these, so the schema is fixed here and validated on
every write (and by a test). Top-level keys:

===========  ==========================================================================================
notebook     notebook name, e.g. ``"00_baseline"``
profile      the params profile of the run (``"lab"`` when run by hand in Jupyter)
created      ISO-8601 time (UTC) the record was written
params       the resolved parameters the notebook ran with
env          python / torch / transformers versions, torch threads, CPU model and class (``isa``; ``lib.utils.env_info``)
variants     list, one entry per model measured (see below); exactly one has ``role == "reference"``
findings     dict of notebook-specific numbers (e.g. ``tfidf_accuracy``, ``lib_vs_trainer_speed_ratio``)
figures      list of figure paths written by the run (relative to the run folder)
run          the id of the run folder the record belongs to
inputs       what the notebook took from earlier runs: ``{"models/teacher": "<run id>", ...}`` (empty: all from this run)
run_seconds  (added by the runner, ``lib.run``) wall-clock time of the whole notebook execution
===========  ==========================================================================================

Each variant has at least: ``name``, ``role`` (``"reference"`` for the model the others are compared
against, else ``"variant"``), ``accuracy``, ``f1`` (macro), ``size_mb`` (serialized weights, 10^6 bytes),
``num_params``, ``latency_ms_b1_p50``, ``throughput_b32`` (samples/s) and ``speedup_vs_reference``
(batch-32 throughput ratio measured side by side in the same run; 1.0 for the reference). Numbers that do
not apply (a TF-IDF model has no batch-32 torch latency) are ``null``. Notebooks add keys freely.
"""

from __future__ import annotations

import json
import math
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from . import paths, preflight, runs, tracking
from .catalog import NOTEBOOKS, run_hint
from .errors import ArtifactError, LabError, ParamError
from .utils import atomic_write_json, atomic_write_text, env_info

TOP_KEYS = ("notebook", "profile", "created", "params", "env", "variants", "findings")
VARIANT_KEYS = ("name", "role", "accuracy", "f1", "size_mb", "num_params", "latency_ms_b1_p50",
                "throughput_b32", "speedup_vs_reference")
ENV_KEYS = ("python", "torch", "transformers", "threads", "cpu", "isa")  # isa: every speed figure names its CPU class
ROLES = ("reference", "variant")
# A repeat spread above this ((max - min) / median of the batch-32 throughputs) makes a speed figure untrustworthy:
# the machine was busy or throttling. In the idle 2-core default run of 2026-11-26 every spread was 1-10%.
MAX_SPREAD = 0.25
# How long a whole `make run` of each profile may take on the 2-core reference machine (all notebooks).
BUDGET_MINUTES = {"smoke": 5, "quick": 10, "default": 60}


def variant(name: str, role: str, metrics: Mapping[str, Any], bench: Mapping[str, Any] | None = None,
            size: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """Build one ``variants`` entry from a metrics dict, a row of ``lib.bench.compare`` and ``size_info``."""
    bench = {} if bench is None else bench
    size = {} if size is None else size
    v = {
        "name": name,
        "role": role,
        "accuracy": metrics.get("accuracy"),
        "f1": metrics.get("f1"),
        "size_mb": size.get("size_mb"),
        "num_params": size.get("num_params"),
        "latency_ms_b1_p50": bench.get("latency_ms_b1_p50"),
        "latency_ms_b1_p90": bench.get("latency_ms_b1_p90"),
        "throughput_b32": bench.get("throughput_b32"),
        "speedup_vs_reference": bench.get("speedup_vs_reference"),
        "throughput_b32_spread": bench.get("throughput_spread"),  # (max - min) / median of the repeats
        "load_average": bench.get("load_average"),  # 1-minute load average while it was measured
    }
    v.update(extra)
    return _plain(v)


def validate_record(rec: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` listing every way ``rec`` breaks the schema above."""
    errs = [f"missing top-level key {k!r}" for k in TOP_KEYS if k not in rec]
    if not errs:
        if not isinstance(rec["params"], dict):
            errs.append("params must be a dict")
        if not isinstance(rec["findings"], dict):
            errs.append("findings must be a dict")
        errs += [f"env lacks {k!r}" for k in ENV_KEYS if k not in rec.get("env", {})]
        try:
            datetime.fromisoformat(rec["created"])
        except (TypeError, ValueError):
            errs.append(f"created is not an ISO time: {rec['created']!r}")
        variants = rec["variants"]
        if not isinstance(variants, list) or not variants:
            errs.append("variants must be a non-empty list")
            variants = []
        refs = [v for v in variants if v.get("role") == "reference"]
        if len(refs) != 1:
            errs.append(f"exactly one variant must have role 'reference' (found {len(refs)})")
        names = [v.get("name") for v in variants]
        if len(set(names)) != len(names):
            errs.append(f"variant names must be unique: {names}")
        for v in variants:
            label = v.get("name", "?")
            errs += [f"variant {label!r} lacks {k!r}" for k in VARIANT_KEYS if k not in v]
            if v.get("role") not in ROLES:
                errs.append(f"variant {label!r}: role must be one of {ROLES}, got {v.get('role')!r}")
            for k in ("accuracy", "f1"):
                x = v.get(k)
                if x is not None and not (isinstance(x, (int, float)) and 0.0 <= x <= 1.0):
                    errs.append(f"variant {label!r}: {k} must be a fraction in [0, 1], got {x!r}")
            for k in ("size_mb", "num_params", "latency_ms_b1_p50", "throughput_b32", "speedup_vs_reference"):
                x = v.get(k)
                if x is not None and not (isinstance(x, (int, float)) and math.isfinite(x) and x > 0):
                    errs.append(f"variant {label!r}: {k} must be a positive number or null, got {x!r}")
        for v in refs:
            s = v.get("speedup_vs_reference")
            if s is not None and abs(s - 1.0) > 1e-9:
                errs.append(f"the reference's speedup_vs_reference must be 1.0, got {s}")
    if errs:
        raise ValueError("metrics record does not match the schema (lib/results.py):\n  - " + "\n  - ".join(errs))


def record(notebook: str, params: Mapping[str, Any], variants: Sequence[Mapping[str, Any]],
           findings: Mapping[str, Any], figures: Sequence[Path | str] = (), env: Mapping[str, Any] | None = None,
           **extra: Any) -> Path:
    """Validate and atomically write the notebook's metrics record; return its path."""
    profile = params["profile"]
    base = runs.current(profile)
    rec = {
        "notebook": notebook,
        "profile": profile,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "params": dict(params),
        "env": dict(env or env_info()),
        "variants": [dict(v) for v in variants],
        "findings": dict(findings),
        "figures": [str(Path(f).relative_to(base)) if Path(f).is_absolute() and base in Path(f).parents else str(f)
                    for f in figures],
        "run": base.name,
        "inputs": runs.inputs(),
        **extra,
    }
    rec = _plain(rec)
    validate_record(rec)
    out = atomic_write_json(runs.metrics_path(profile, notebook), rec)
    if tracking.enabled():  # opt-in: python -m lib.run --mlflow, or MUXL_MLFLOW=1
        seconds = tracking.log_record(rec, base, out)
        print(f"MLflow: {notebook} logged to {tracking.tracking_uri()} in {seconds:.1f} s")
    runs.notebook_done(profile, notebook)  # a notebook run by hand: its run is complete now
    return out


def stamp_run(profile: str, notebook: str, seconds: float, started: datetime) -> bool:
    """Add the runner's wall-clock ``run_seconds`` to the record the notebook just wrote in this run (atomic rewrite).

    Returns False, changing nothing, when there is no record or it predates ``started`` (a notebook that did not
    write its record this run must not inherit the time)."""
    path = runs.metrics_path(profile, notebook)
    if not path.exists():
        return False
    rec = json.loads(path.read_text(encoding="utf-8"))
    if datetime.fromisoformat(rec["created"]) < started.replace(microsecond=0):
        return False
    rec["run_seconds"] = float(seconds)
    validate_record(rec)
    atomic_write_json(path, rec)
    return True


def run_times(profile: str, recs: Sequence[Mapping[str, Any]]) -> str:
    """One sentence: minutes per notebook (as the runner timed them), their sum and the profile's budget."""
    timed = [(r["notebook"], r["run_seconds"] / 60) for r in recs if r.get("run_seconds")]
    if not timed:
        return ""
    total = sum(m for _, m in timed)
    verdict = budget_note(profile, total)
    return ("Run time (`make run`, this machine): " + ", ".join(f"{n} {m:.1f} min" for n, m in timed)
            + f"; {total:.1f} min in all{f' ({verdict})' if verdict else ''}.")


def speed_trust(recs: Sequence[Mapping[str, Any]]) -> str:
    """One sentence on how quiet the machine was while the speed figures were measured (load, repeat spread)."""
    timed = [(r["notebook"], v) for r in recs for v in r["variants"] if v.get("throughput_b32") is not None]
    loads = [v["load_average"] for _, v in timed if isinstance(v.get("load_average"), (int, float))]
    spreads = [(v["throughput_b32_spread"], f"{n} {v['name']}") for n, v in timed
               if isinstance(v.get("throughput_b32_spread"), (int, float))]
    if not loads and not spreads:
        return ""
    parts = []
    if loads:
        parts.append(f"1-minute load average at most {max(loads):.2f} while timing")
    if spreads:
        worst = max(spreads)
        parts.append(f"largest repeat spread of a batch-32 throughput {worst[0]:.0%} ({worst[1]})")
        shaky = [name for spread, name in spreads if spread > MAX_SPREAD]
        if shaky:
            parts.append(f"**unsteady (spread over {MAX_SPREAD:.0%}): {', '.join(shaky)}**")
    return "Speed measurement conditions: " + "; ".join(parts) + "."


def budget_note(profile: str, minutes: float) -> str:
    """``minutes`` against the profile's budget for the whole collection ("" for a profile without one)."""
    budget = BUDGET_MINUTES.get(profile)
    if budget is None:
        return ""
    left = f"{budget - minutes:.1f} min left" if minutes <= budget else f"**over by {minutes - budget:.1f} min**"
    return f"budget for the whole collection: {budget} min; {left}"


def load(profile: str, notebook: str, run: str = "") -> dict[str, Any]:
    """Read ``notebook``'s record: from ``run`` if named, else this run, else the newest complete run of ``profile``
    that has one (``FileNotFoundError`` naming the notebook to run)."""
    rel = f"metrics/{notebook}.json"
    try:
        path = runs.source(profile, rel, run) / rel
    except ArtifactError as e:
        raise FileNotFoundError(f"no metrics for {notebook} in profile {profile!r} ({e}): run that notebook first") \
            from None
    if not path.exists():
        raise FileNotFoundError(f"no metrics for {notebook} in run {path.parent.parent.name}: run that notebook first")
    return json.loads(path.read_text(encoding="utf-8"))


def load_run(run_dir: Path) -> list[dict[str, Any]]:
    """Every record of one run folder, in notebook order."""
    out = []
    for nb in NOTEBOOKS:
        path = Path(run_dir) / "metrics" / f"{nb.name}.json"
        if path.exists():
            out.append(json.loads(path.read_text(encoding="utf-8")))
    return out


def own_variants(rec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The variants a record measured itself: 08_report's record also lists every other notebook's (``source``)."""
    return [v for v in rec["variants"] if v.get("source", rec["notebook"]) == rec["notebook"]]


def _plain(obj: Any) -> Any:
    """numpy scalars/arrays and paths -> plain JSON types, NaN -> None."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


# ---------------------------------------------------------------------------------------------- README block

README_START = "<!-- results:start (generated by `make readme` from a clean default run; do not edit) -->"
README_END = "<!-- results:end -->"


def _fmt(x: Any, spec: str) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):  # before numbers: True would print as 1
        return f"`{str(x).lower()}`"
    if isinstance(x, Mapping):  # a finding per method or model, e.g. {"lime": 0.49, "random": 0.04}
        return "{" + ", ".join(f"{k}: {_fmt(v, spec)}" for k, v in x.items()) + "}"
    return f"`{x}`" if isinstance(x, str) else format(x, spec)


def readme_refusal(manifest: Mapping[str, Any], profile: str = "default") -> list[str]:
    """Why a run must not be published as the README's results (empty: it may)."""
    why = []
    if manifest.get("profile") != profile:
        why.append(f"it ran profile {manifest.get('profile')!r}, the README shows {profile!r}")
    if manifest.get("by") != "runner":
        why.append("it was run by hand, not by the runner (make run)")
    if runs.status(manifest) != "complete":
        why.append(f"it did not complete (status {runs.status(manifest)})")
    if manifest.get("overrides"):
        why.append("it ran with -p overrides: " + ", ".join(f"{k}={v!r}" for k, v in manifest["overrides"].items()))
    missing = [nb.name for nb in NOTEBOOKS if manifest.get("notebooks", {}).get(nb.name, {}).get("status") != "complete"]
    if missing:
        why.append(f"it did not run every notebook (missing: {', '.join(missing)})")
    git = manifest.get("git", {})
    if git.get("dirty") or git.get("commit") is None:
        changed = ", ".join(git.get("changed") or []) or "unknown"
        why.append("the code was not a clean commit" + (" (it changed during the run)" if git.get("changed_during_run")
                                                        else f" (changed files: {changed})"))
    return why


def markdown_results(run_dir: Path) -> str:
    """A markdown section of every variant of every record of one run, with its date, machine and run id."""
    manifest, recs = runs.read_manifest(run_dir), load_run(run_dir)
    profile = manifest["profile"]
    if not recs:
        return f"_No results for profile `{profile}` yet: run `make run PROFILE={profile}`, then `make readme`._"
    env = recs[0]["env"]
    commit = (manifest.get("git", {}).get("commit") or "?")[:10]
    lines = [
        f"Profile `{profile}`, run `{manifest['id']}` (commit `{commit}`), measured {min(r['created'][:10] for r in recs)} "
        f"on {env['cpu']} (CPU class **{env.get('isa', 'not recorded')}**, {env['threads']} torch threads), Python "
        f"{env['python']}, torch {env['torch']}, transformers {env['transformers']}. Speed is measured side by side in "
        "one process (warm-up, median of repeats); `speedup` is batch-32 throughput relative to each notebook's "
        "reference. int8 and bf16 speed-ups depend on the CPU class (VNNI, native bf16): on another class, expect "
        "other ratios.",
        "",
        "| notebook | variant | accuracy | macro-F1 | size (MB) | params (M) | latency b1 p50 (ms) | "
        "throughput b32 (samples/s) | speedup |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for rec in recs:
        for v in own_variants(rec):
            params_m = None if v["num_params"] is None else v["num_params"] / 1e6
            lines.append(
                f"| {rec['notebook']} | {v['name']}{' (reference)' if v['role'] == 'reference' else ''} | "
                f"{_fmt(v['accuracy'], '.4f')} | {_fmt(v['f1'], '.4f')} | {_fmt(v['size_mb'], '.1f')} | "
                f"{_fmt(params_m, '.1f')} | {_fmt(v['latency_ms_b1_p50'], '.2f')} | "
                f"{_fmt(v['throughput_b32'], '.1f')} | {_fmt(v['speedup_vs_reference'], '.2f')} |")
    lines.append("")
    trust = speed_trust(recs)
    if trust:
        lines += [trust, ""]
    times = run_times(profile, recs)
    if times:
        lines += [times, ""]
    for rec in recs:
        keys = rec.get("headline") or []
        items = [f"`{k}` = {_fmt(rec['findings'].get(k), '.4g')}" for k in keys if k in rec["findings"]]
        if items:
            lines.append(f"- **{rec['notebook']}**: " + "; ".join(items))
    return "\n".join(lines)


def update_readme(path: Path | str, run_dir: Path, profile: str = "default") -> bool:
    """Replace the generated block in the README with ``run_dir``'s results; return whether it changed.

    Refuses (``LabError`` saying why) a run that is not a complete, clean, override-free runner run of ``profile``."""
    why = readme_refusal(runs.read_manifest(run_dir), profile)
    if why:
        raise LabError(f"run {Path(run_dir).name} cannot be published in the README: " + "; ".join(why)
                       + f". Run `make run PROFILE={profile}` from a clean commit, then `make readme`.")
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if README_START not in text or README_END not in text:
        raise ValueError(f"{path} lacks the markers {README_START!r} ... {README_END!r}")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    new = f"{head}{README_START}\n{markdown_results(run_dir)}\n{README_END}{tail}"
    if new != text:
        atomic_write_text(path, new)
    return new != text


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lib.results [--readme] [--profile default] [--run ID]``: print or publish a run's results."""
    import argparse  # only for the command line

    ap = argparse.ArgumentParser(prog="python -m lib.results")
    ap.add_argument("--readme", action="store_true", help="regenerate the results block of README.md")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--run", default=runs.LATEST, help="run id (default: the profile's latest complete run)")
    a = ap.parse_args(argv)
    try:
        run_dir = runs.find_run(a.run, a.profile)
        if a.readme:
            changed = update_readme(paths.ROOT / "README.md", run_dir, a.profile)
            print(f"README.md results {'updated' if changed else 'already current'} from run {run_dir.name}")
        else:
            print(markdown_results(run_dir))
    except LabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


# ---------------------------------------------------------------------------------------------- comparability

def comparable_record(profile: str, notebook: str, params: Mapping[str, Any],
                      keys: Sequence[str] = preflight.SPLIT_KEYS) -> dict[str, Any]:
    """Load ``notebook``'s record for ``profile`` and check it used the same split/model as ``params``.

    Raises a clear error naming every differing parameter (and the fix) instead of silently comparing
    numbers measured on different data.
    """
    try:
        rec = load(profile, notebook, params.get("input_run", ""))
    except FileNotFoundError as e:
        raise ArtifactError(f"{e}. {run_hint(notebook, profile)}") from None
    diffs = preflight.split_differences(rec["params"], params, notebook, keys)
    if diffs:
        raise ParamError(
            f"{notebook}'s results (profile {profile!r}) come from different data or model settings, so they "
            "cannot serve as the reference here:\n  - " + "\n  - ".join(diffs)
            + f"\nSet these parameters to match, or re-run {notebook} with them (python -m lib.run --profile "
            f"{profile} --only {notebook} -p name=value ...)."
        )
    return rec


if __name__ == "__main__":
    sys.exit(main())
