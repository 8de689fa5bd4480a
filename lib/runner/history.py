"""The run history on the command line: every run in a table, what changed between two runs, deleting runs
(``python -m lib.runner --runs / --compare / --delete``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from . import folders, paths
from .records import fmt, load_run


def _table(rows: Sequence[Mapping[str, Any]]) -> str:
    return pd.DataFrame(rows).to_string(index=False) if rows else "(nothing)"


def _summary(run_dir: Path) -> str:
    """The first headline number of each notebook (of the first, its reference's accuracy), compactly."""
    parts = []
    for i, r in enumerate(load_run(run_dir)):
        ref = next(v for v in r["variants"] if v["role"] == "reference")
        found = [("acc", f"{ref['accuracy']:.4f}")] if i == 0 and ref.get("accuracy") is not None else []
        found += [(k, f"{v:.4g}") for k in r["headline"] if type(v := r["findings"].get(k)) in (int, float)]
        parts += [f"{r['notebook'][:2]} {found[0][0]}={found[0][1]}"] * bool(found)
    return " · ".join(parts)


def runs_table(profile: str | None) -> str:
    dirs = folders.all_runs(profile)
    if not dirs:
        return f"no runs under {paths.outputs_root()}" + (f" for profile {profile!r}" if profile else "")
    latest = {p.name: folders.latest(p.name) for p in paths.outputs_root().iterdir() if p.is_dir()}
    rows = []
    for d in dirs:
        if not (m := folders.peek(d)):
            rows.append({"run": d.name, "status": "(unreadable manifest)"})
            continue
        nbs, git = m.get("notebooks", {}), m.get("git", {})
        rows.append({
            "run": d.name, "profile": m["profile"], "by": m.get("by", "?"), "status": folders.status(m),
            "min": fmt(m.get("minutes"), ".1f"),
            "done": f"{sum(e.get('status') == 'complete' for e in nbs.values())}/{len(nbs)}",
            "commit": (git.get("commit") or "?")[:7] + ("*" if git.get("dirty") else ""),
            "overrides": ",".join(f"{k}={v}" for k, v in (m.get("overrides") or {}).items())[:24] or "-",
            "headline": _summary(d) + (" <- latest" if latest.get(m["profile"]) == d.resolve() else ""),
        })  # fmt: skip
    return _table(rows) + f"\n(* = the code was not a clean commit; outputs: {paths.outputs_root()})"


def compare_runs(a: Path, b: Path) -> str:
    """What changed from run ``a`` to run ``b``: parameters per notebook, then every shared number."""
    ra, rb = ({r["notebook"]: r for r in load_run(x)} for x in (a, b))
    both, lines = [n for n in ra if n in rb], [f"{a.name} -> {b.name}", "", "parameters:"]
    for nb in both:
        pa, pb = ra[nb]["params"], rb[nb]["params"]
        changed = [k for k in sorted(set(pa) | set(pb)) if k != "profile" and pa.get(k) != pb.get(k)]
        lines += [f"  {nb} {k}: {pa.get(k)!r} -> {pb.get(k)!r}" for k in changed]
    lines += ["  (same parameters in every notebook both runs have)"] * (len(lines) == 3)
    only = set(ra) ^ set(rb)
    lines += [f"  notebooks in one run only: {', '.join(sorted(only))}"] * bool(only)
    ea, eb = (folders.read_manifest(x).get("machine", {}) for x in (a, b))
    if (ea.get("isa"), ea.get("cpu")) != (eb.get("isa"), eb.get("cpu")):
        lines.append(f"  machine: {ea.get('cpu')} [{ea.get('isa')}] -> {eb.get('cpu')} [{eb.get('isa')}] "
                     "(speed figures do not compare across CPU classes)")  # fmt: skip
    rows = []
    for nb in both:
        va, vb = ({v["name"]: v for v in r[nb]["variants"]} for r in (ra, rb))
        keys = ("accuracy", "speedup_vs_reference")
        pairs = [(f"{n} {k}", va[n].get(k), vb[n].get(k)) for n in va if n in vb for k in keys]
        pairs += [(k, ra[nb]["findings"].get(k), rb[nb]["findings"].get(k)) for k in ra[nb]["headline"]]
        for what, x, y in pairs:
            if isinstance(x, (int, float)) and isinstance(y, (int, float)):
                rows.append({"notebook": nb, "variant / finding": what[:34], "A": f"{x:.4g}", "B": f"{y:.4g}",
                             "B-A": f"{y - x:+.4g}"})  # fmt: skip
    return "\n".join([*lines, "", _table(rows)])


def delete_runs(ids: Sequence[str], profile: str | None) -> str:
    ended = ("failed", "interrupted", "killed")
    incomplete = [d for d in folders.all_runs(profile) if folders.status(folders.read_manifest(d)) in ended]
    targets = incomplete if list(ids) == ["incomplete"] else [folders.find_run(i, profile) for i in ids]
    gone = folders.delete(targets)
    return f"deleted {len(gone)} run(s)" + (f": {', '.join(gone)}" if gone else "")
