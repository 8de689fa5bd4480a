"""The run history on the command line: one run's headline table, every run in a table, what changed between
two runs, deleting runs (``python -m lib.runner --runs / --compare / --delete``)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from . import folders, paths
from .records import fmt, load_run, own_variants

COLUMNS = {"accuracy": ("acc", ".4f"), "f1": ("F1", ".4f"), "size_mb": ("MB", ".1f"),
           "latency_ms_b1_p50": ("ms b1", ".2f"), "throughput_b32": ("smp/s b32", ".1f"),
           "speedup_vs_reference": ("speedup", ".2f")}  # fmt: skip


def _table(rows: Sequence[Mapping[str, Any]]) -> str:
    return pd.DataFrame(rows).to_string(index=False) if rows else "(nothing)"


def _numbers(rec: Mapping[str, Any]) -> list[tuple[str, float]]:
    """A record's headline findings that are numbers."""
    found = [(k, rec["findings"].get(k)) for k in rec.get("headline", [])]
    return [(k, v) for k, v in found if isinstance(v, (int, float)) and not isinstance(v, bool)]


def headline(run_dir: Path) -> str:
    """A short table of every variant measured in one run, then each notebook's headline findings."""
    recs = load_run(run_dir)
    rows = [
        {
            "notebook": r["notebook"],
            "variant": v["name"],
            **{h: fmt(v[k], spec) for k, (h, spec) in COLUMNS.items()},
        }
        for r in recs
        for v in own_variants(r)
    ]
    found = [f"{r['notebook']}: {k} = {v:.4g}" for r in recs for k, v in _numbers(r)]
    return "\n".join([_table(rows), *found])


def _summary(run_dir: Path) -> str:
    """The first headline number of each notebook, compactly: ``00 acc=0.8325 · 03 ...``."""
    parts = []
    for rec in load_run(run_dir):
        ref = next(v for v in rec["variants"] if v["role"] == "reference")
        if rec["notebook"].startswith("00") and ref.get("accuracy") is not None:
            parts.append(f"00 acc={ref['accuracy']:.4f}")
        elif _numbers(rec):
            parts.append(f"{rec['notebook'][:2]} {_numbers(rec)[0][0]}={_numbers(rec)[0][1]:.4g}")
    return " · ".join(parts)


def runs_table(profile: str | None) -> str:
    dirs = folders.all_runs(profile)
    if not dirs:
        return f"no runs under {paths.outputs_root()}" + (f" for profile {profile!r}" if profile else "")
    latest = {p.name: folders.latest(p.name) for p in paths.outputs_root().iterdir() if p.is_dir()}
    rows = []
    for d in dirs:
        try:
            m = folders.read_manifest(d)
        except (OSError, json.JSONDecodeError):
            rows.append({"run": d.name, "status": "(unreadable manifest)"})
            continue
        nbs, git = m.get("notebooks", {}), m.get("git", {})
        rows.append({
            "run": d.name, "profile": m["profile"], "by": m.get("by", "?"), "status": folders.status(m),
            "min": fmt(m.get("minutes"), ".1f"),
            "done": f"{sum(e.get('status') == 'complete' for e in nbs.values())}/{len(nbs)}",
            "commit": (git.get("commit") or "?")[:7] + ("*" if git.get("dirty") else ""),
            "overrides": ",".join(f"{k}={v}" for k, v in m.get("overrides", {}).items())[:24] or "-",
            "headline": _summary(d) + (" <- latest" if latest.get(m["profile"]) == d.resolve() else ""),
        })  # fmt: skip
    return _table(rows) + f"\n(* = the code was not a clean commit; outputs: {paths.outputs_root()})"


def compare_runs(a: Path, b: Path) -> str:
    """What changed from run ``a`` to run ``b``: parameters per notebook, then every shared number."""
    ra, rb = ({r["notebook"]: r for r in load_run(x)} for x in (a, b))
    both = [n for n in ra if n in rb]
    lines = [f"{a.name} -> {b.name}", "", "parameters:"]
    for nb in both:
        pa, pb = ra[nb]["params"], rb[nb]["params"]
        lines += [
            f"  {nb} {k}: {pa.get(k)!r} -> {pb.get(k)!r}"
            for k in sorted(set(pa) | set(pb))
            if k != "profile" and pa.get(k) != pb.get(k)
        ]
    if len(lines) == 3:
        lines.append("  (same parameters in every notebook both runs have)")
    if set(ra) ^ set(rb):
        lines.append(f"  notebooks in one run only: {', '.join(sorted(set(ra) ^ set(rb)))}")
    ea, eb = (folders.read_manifest(x).get("machine", {}) for x in (a, b))
    if (ea.get("isa"), ea.get("cpu")) != (eb.get("isa"), eb.get("cpu")):
        lines.append(
            f"  machine: {ea.get('cpu')} [{ea.get('isa')}] -> {eb.get('cpu')} [{eb.get('isa')}] (speed "
            "figures do not compare across CPU classes)"
        )
    rows = []
    for nb in both:
        va, vb = ({v["name"]: v for v in r[nb]["variants"]} for r in (ra, rb))
        pairs = [
            (f"{n} {k}", va[n].get(k), vb[n].get(k))
            for n in va
            if n in vb
            for k in ("accuracy", "speedup_vs_reference")
        ]
        pairs += [
            (k, ra[nb]["findings"].get(k), rb[nb]["findings"].get(k)) for k in ra[nb].get("headline", [])
        ]
        rows += [
            {
                "notebook": nb,
                "variant / finding": what[:34],
                "A": f"{x:.4g}",
                "B": f"{y:.4g}",
                "B-A": f"{y - x:+.4g}",
            }
            for what, x, y in pairs
            if all(isinstance(z, (int, float)) for z in (x, y))
        ]
    return "\n".join([*lines, "", _table(rows)])


def delete_runs(ids: Sequence[str], profile: str | None) -> str:
    if list(ids) == ["incomplete"]:
        ended = ("failed", "interrupted", "killed")
        targets = [d for d in folders.all_runs(profile) if folders.status(folders.read_manifest(d)) in ended]
    else:
        targets = [folders.find_run(i, profile) for i in ids]
    gone = folders.delete(targets)
    return f"deleted {len(gone)} run(s)" + (f": {', '.join(gone)}" if gone else "")
