"""The run history on the command line: one run's headline table, every run in a table, what changed between
two runs, deleting runs (``python -m lib.runner --runs / --compare / --delete``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from . import folders, paths
from .catalog import NOTEBOOKS
from .records import fmt, load_run, own_variants


def headline(run_dir: Path) -> str:
    """A short table of every variant measured in one run."""
    rows = [
        f"{'notebook':<14} {'variant':<22} {'acc':>6} {'F1':>6} {'MB':>7} {'ms b1':>7} {'smp/s b32':>10} "
        f"{'speedup':>8}"
    ]
    for rec in load_run(run_dir):
        for v in own_variants(rec):
            rows.append(
                f"{rec['notebook']:<14} {v['name']:<22} {fmt(v['accuracy'], '.4f'):>6} "
                f"{fmt(v['f1'], '.4f'):>6} {fmt(v['size_mb'], '.1f'):>7} "
                f"{fmt(v['latency_ms_b1_p50'], '.2f'):>7} {fmt(v['throughput_b32'], '.1f'):>10} "
                f"{fmt(v['speedup_vs_reference'], '.2f'):>8}"
            )
        for k in rec.get("headline", []):  # the few findings a notebook names as its headline
            val = rec["findings"].get(k)
            if isinstance(val, (int, float)) and not isinstance(val, bool):
                rows.append(f"{'':<14} {k} = {val:.4g}")
    return "\n".join(rows)


# ------------------------------------------------------------------------ the run history


def _headline_numbers(run_dir: Path) -> str:
    """The first headline finding of each notebook, compactly: ``00 tfidf_accuracy=0.7417 · 03 ...``."""
    parts = []
    for rec in load_run(run_dir):
        ref = next((v for v in rec["variants"] if v["role"] == "reference"), None)
        keys = [k for k in rec.get("headline", []) if isinstance(rec["findings"].get(k), (int, float))]
        if rec["notebook"] == NOTEBOOKS[0].name and ref and ref.get("accuracy") is not None:
            parts.append(f"{rec['notebook'][:2]} acc={ref['accuracy']:.4f}")
        elif keys:
            parts.append(f"{rec['notebook'][:2]} {keys[0]}={rec['findings'][keys[0]]:.4g}")
    return " · ".join(parts)


def runs_table(profile: str | None) -> str:
    dirs = folders.all_runs(profile)
    if not dirs:
        return f"no runs under {paths.outputs_root()}" + (f" for profile {profile!r}" if profile else "")
    rows = [
        f"{'run':<24} {'profile':<8} {'by':<6} {'status':<11} {'min':>6} {'done':>5}  {'commit':<8} "
        f"{'overrides':<24} headline"
    ]
    latest = {p.name: folders.latest(p.name) for p in paths.outputs_root().iterdir() if p.is_dir()}
    for d in dirs:
        try:
            m = folders.read_manifest(d)
        except (OSError, json.JSONDecodeError):
            rows.append(f"{d.name:<24} (unreadable manifest)")
            continue
        nbs = m.get("notebooks", {})
        done = f"{sum(e.get('status') == 'complete' for e in nbs.values())}/{len(nbs)}"
        git = m.get("git", {})
        commit = (git.get("commit") or "?")[:7] + ("*" if git.get("dirty") else "")
        over = ",".join(f"{k}={v}" for k, v in m.get("overrides", {}).items()) or "-"
        mark = " <- latest" if latest.get(m["profile"]) == d.resolve() else ""
        rows.append(
            f"{d.name:<24} {m['profile']:<8} {m.get('by', '?'):<6} {folders.status(m):<11} "
            f"{fmt(m.get('minutes'), '.1f'):>6} {done:>5}  {commit:<8} {over[:24]:<24} "
            f"{_headline_numbers(d)}{mark}"
        )
    rows.append("(* = the code was not a clean commit; outputs: " + str(paths.outputs_root()) + ")")
    return "\n".join(rows)


def compare_runs(a: Path, b: Path) -> str:
    """What changed from run ``a`` to run ``b``: parameters per notebook, then every shared number."""
    ra = {r["notebook"]: r for r in load_run(a)}
    rb = {r["notebook"]: r for r in load_run(b)}
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
    ea, eb = folders.read_manifest(a).get("machine", {}), folders.read_manifest(b).get("machine", {})
    if ea.get("isa") != eb.get("isa") or ea.get("cpu") != eb.get("cpu"):
        lines.append(
            f"  machine: {ea.get('cpu')} [{ea.get('isa')}] -> {eb.get('cpu')} [{eb.get('isa')}] "
            "(speed figures do not compare across CPU classes)"
        )
    lines += ["", f"{'notebook':<14} {'variant / finding':<34} {'A':>10} {'B':>10} {'B-A':>10}"]
    for nb in [n for n in ra if n in rb]:
        va = {v["name"]: v for v in ra[nb]["variants"]}
        vb = {v["name"]: v for v in rb[nb]["variants"]}
        for name in [n for n in va if n in vb]:
            for key in ("accuracy", "speedup_vs_reference"):
                x, y = va[name].get(key), vb[name].get(key)
                if isinstance(x, (int, float)) and isinstance(y, (int, float)):
                    lines.append(
                        f"{nb:<14} {(name + ' ' + key)[:34]:<34} {x:>10.4g} {y:>10.4g} {y - x:>+10.4g}"
                    )
        for key in ra[nb].get("headline", []):
            x, y = ra[nb]["findings"].get(key), rb[nb]["findings"].get(key)
            if isinstance(x, (int, float)) and isinstance(y, (int, float)):
                lines.append(f"{nb:<14} {key[:34]:<34} {x:>10.4g} {y:>10.4g} {y - x:>+10.4g}")
    return "\n".join(lines)


def delete_runs(ids: Sequence[str], profile: str | None) -> str:
    if list(ids) == ["incomplete"]:
        targets = [
            d
            for d in folders.all_runs(profile)
            if folders.status(folders.read_manifest(d)) in ("failed", "interrupted", "killed")
        ]
    else:
        targets = [folders.find_run(i, profile) for i in ids]
    gone = folders.delete(targets)
    return f"deleted {len(gone)} run(s)" + (f": {', '.join(gone)}" if gone else "")
