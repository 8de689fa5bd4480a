"""The metrics record: one JSON file per notebook run, ``outputs/<profile>/metrics/<notebook>.json``.

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
figures      list of figure paths written by the run (relative to ``outputs/<profile>/``)
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
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from . import paths
from .catalog import NOTEBOOKS
from .errors import ArtifactError, ParamError
from .utils import atomic_write_json, atomic_write_text, env_info

TOP_KEYS = ("notebook", "profile", "created", "params", "env", "variants", "findings")
VARIANT_KEYS = ("name", "role", "accuracy", "f1", "size_mb", "num_params", "latency_ms_b1_p50",
                "throughput_b32", "speedup_vs_reference")
ENV_KEYS = ("python", "torch", "transformers", "threads", "cpu", "isa")  # isa: every speed figure names its CPU class
ROLES = ("reference", "variant")
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
    base = paths.profile_dir(profile)
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
        **extra,
    }
    rec = _plain(rec)
    validate_record(rec)
    return atomic_write_json(paths.metrics_path(profile, notebook), rec)


def stamp_run(profile: str, notebook: str, seconds: float, started: datetime) -> bool:
    """Add the runner's wall-clock ``run_seconds`` to the record the notebook just wrote (atomic rewrite).

    Returns False, changing nothing, when there is no record or it predates ``started`` (a notebook that did not
    write its record this run must not inherit the time)."""
    try:
        rec = load(profile, notebook)
    except FileNotFoundError:
        return False
    if datetime.fromisoformat(rec["created"]) < started.replace(microsecond=0):
        return False
    rec["run_seconds"] = float(seconds)
    validate_record(rec)
    atomic_write_json(paths.metrics_path(profile, notebook), rec)
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


def budget_note(profile: str, minutes: float) -> str:
    """``minutes`` against the profile's budget for the whole collection ("" for a profile without one)."""
    budget = BUDGET_MINUTES.get(profile)
    if budget is None:
        return ""
    left = f"{budget - minutes:.1f} min left" if minutes <= budget else f"**over by {minutes - budget:.1f} min**"
    return f"budget for the whole collection: {budget} min; {left}"


def load(profile: str, notebook: str) -> dict[str, Any]:
    """Read a record written by :func:`record` (``FileNotFoundError`` naming the notebook to run)."""
    path = paths.metrics_path(profile, notebook)
    if not path.exists():
        raise FileNotFoundError(f"no metrics for {notebook} in profile {profile!r} ({path}): run that notebook first")
    return json.loads(path.read_text(encoding="utf-8"))


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

README_START = "<!-- results:start (generated by `make readme` from outputs/{profile}/metrics; do not edit) -->"
README_END = "<!-- results:end -->"


def _fmt(x: Any, spec: str) -> str:
    if x is None:
        return "–"
    return f"`{x}`" if isinstance(x, str) else format(x, spec)


def markdown_results(profile: str, notebooks: Sequence[str]) -> str:
    """A markdown section of every variant of every recorded notebook, with date and machine."""
    recs = []
    for name in notebooks:
        try:
            recs.append(load(profile, name))
        except FileNotFoundError:
            continue
    if not recs:
        return f"_No results for profile `{profile}` yet: run `make run PROFILE={profile}`, then `make readme`._"
    env = recs[0]["env"]
    lines = [
        f"Profile `{profile}`, measured {min(r['created'][:10] for r in recs)} on {env['cpu']} "
        f"(CPU class **{env.get('isa', 'not recorded')}**, {env['threads']} torch threads), Python {env['python']}, "
        f"torch {env['torch']}, transformers {env['transformers']}. Speed is measured side by side in one process "
        "(warm-up, median of repeats); `speedup` is batch-32 throughput relative to each notebook's reference. "
        "int8 and bf16 speed-ups depend on the CPU class (VNNI, native bf16): on another class, expect other ratios.",
        "",
        "| notebook | variant | accuracy | macro-F1 | size (MB) | params (M) | latency b1 p50 (ms) | "
        "throughput b32 (samples/s) | speedup |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for rec in recs:
        for v in rec["variants"]:
            params_m = None if v["num_params"] is None else v["num_params"] / 1e6
            lines.append(
                f"| {rec['notebook']} | {v['name']}{' (reference)' if v['role'] == 'reference' else ''} | "
                f"{_fmt(v['accuracy'], '.4f')} | {_fmt(v['f1'], '.4f')} | {_fmt(v['size_mb'], '.1f')} | "
                f"{_fmt(params_m, '.1f')} | {_fmt(v['latency_ms_b1_p50'], '.2f')} | "
                f"{_fmt(v['throughput_b32'], '.1f')} | {_fmt(v['speedup_vs_reference'], '.2f')} |")
    lines.append("")
    times = run_times(profile, recs)
    if times:
        lines += [times, ""]
    for rec in recs:
        keys = rec.get("headline") or []
        items = [f"`{k}` = {_fmt(rec['findings'].get(k), '.4g')}" for k in keys if k in rec["findings"]]
        if items:
            lines.append(f"- **{rec['notebook']}**: " + "; ".join(items))
    return "\n".join(lines)


def update_readme(path: Path | str, profile: str, notebooks: Sequence[str]) -> bool:
    """Replace the generated block in the README; return whether it changed."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    start = README_START.format(profile=profile)
    if start not in text or README_END not in text:
        raise ValueError(f"{path} lacks the markers {start!r} ... {README_END!r}")
    head, rest = text.split(start, 1)
    _, tail = rest.split(README_END, 1)
    new = f"{head}{start}\n{markdown_results(profile, notebooks)}\n{README_END}{tail}"
    if new != text:
        atomic_write_text(path, new)
    return new != text


if __name__ == "__main__":  # python -m lib.results --readme [--profile default]
    import argparse  # only for the command line

    ap = argparse.ArgumentParser(prog="python -m lib.results")
    ap.add_argument("--readme", action="store_true", help="regenerate the results block of README.md")
    ap.add_argument("--profile", default="default")
    a = ap.parse_args()
    names = [nb.name for nb in NOTEBOOKS]
    if a.readme:
        changed = update_readme(paths.ROOT / "README.md", a.profile, names)
        print("README.md results updated" if changed else "README.md results already current")
    else:
        print(markdown_results(a.profile, names))


# ---------------------------------------------------------------------------------------------- comparability

# Parameters that define "the same data split and base model": numbers from two notebooks are only
# comparable when these agree.
SPLIT_KEYS = ("dataset", "text_column", "label_column", "group_column", "val_frac", "test_frac", "seed",
              "max_train_samples", "max_eval_samples", "model", "pooling", "max_length")


def comparable_record(profile: str, notebook: str, params: Mapping[str, Any],
                      keys: Sequence[str] = SPLIT_KEYS) -> dict[str, Any]:
    """Load ``notebook``'s record for ``profile`` and check it used the same split/model as ``params``.

    Raises a clear error naming every differing parameter (and the fix) instead of silently comparing
    numbers measured on different data.
    """
    try:
        rec = load(profile, notebook)
    except FileNotFoundError as e:
        raise ArtifactError(f"{e}: python -m lib.run --profile {profile} --only {notebook}") from None
    diffs = [f"{k}: {notebook} used {rec['params'].get(k)!r}, this notebook has {params.get(k)!r}"
             for k in keys if k in params and rec["params"].get(k) != params.get(k)]
    if diffs:
        raise ParamError(
            f"{notebook}'s results (profile {profile!r}) come from different data or model settings, so they "
            "cannot serve as the reference here:\n  - " + "\n  - ".join(diffs)
            + f"\nSet these parameters to match, or re-run {notebook} with them (python -m lib.run --profile "
            f"{profile} --only {notebook} -p name=value ...)."
        )
    return rec
