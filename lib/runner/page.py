"""The run's ``report.html`` (written at the end of a run; ``--html RUN`` again): the run's facts, the choice,
every variant grouped by the notebook that made it, the figures, each executed notebook as HTML. It fills
``templates/report.html.j2`` (jinja2) and names no notebook: the aggregating record is the one whose
variants name their ``source``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2

from ..utils import atomic_write_text
from . import folders
from .catalog import NOTEBOOKS
from .records import load_run, own_variants

TEMPLATES = Path(__file__).parent / "templates"
COLUMNS = (  # (record key, header with its unit, format), in order; a column no row has is left out
    ("accuracy", "accuracy", ".4f"), ("f1", "macro-F1", ".4f"), ("size_mb", "size (MB)", ".1f"),
    ("num_params", "parameters", ",d"), ("latency_ms_b1_p50", "latency, batch 1, p50 (ms)", ".2f"),
    ("throughput_b32", "throughput, batch 32 (samples/s)", ".1f"),
    ("speedup_vs_teacher", "speed-up over the teacher (×)", ".2f"),
    ("trainable_params", "trainable parameters", ",d"), ("epsilon", "privacy ε", ".2f"),
    ("faithfulness", "faithfulness (LIME comprehensiveness)", ".3f"),
    ("max_rps_at_slo", "served requests/s at the SLO", ".0f"), ("p99_ms", "served p99 there (ms)", ".1f"),
    ("served_share", "served share of in-process speed", ".0%"), ("provenance", "how it was made", ""),
    ("unmeasured", "why a figure is missing (–)", ""),
)  # fmt: skip


def cell(value: Any, spec: str) -> str:
    """One table cell: ``–`` for a missing value, integers with thousands separators."""
    if value is None:  # records hold no NaN: they are written through records.plain
        return "–"
    if spec == ",d":
        return f"{int(value):,}"
    return format(value, spec) if spec and isinstance(value, (int, float)) else str(value)


def aggregate(records: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The record that gathers every notebook's variants (they carry ``source``), the newest if several."""
    return next((r for r in reversed(records) if any("source" in v for v in r["variants"])), None)


def groups(records: Sequence[Mapping[str, Any]], chosen: Mapping[str, str]) -> list[dict[str, Any]]:
    """The headers, then the rows grouped by source notebook in notebook order, each with its cells and the
    settings that chose it."""
    summary = aggregate(records)
    order = [nb.name for nb in NOTEBOOKS]
    own = [{**v, "source": r["notebook"]} for r in records for v in own_variants(r)]
    after = [  # notebooks after the aggregator (11_serve) measured what it chose: their rows come on top
        v for v in own if summary and v["source"] in order and summary["notebook"] in order
        and order.index(v["source"]) > order.index(summary["notebook"])
    ]  # fmt: skip
    rows = [dict(v) for v in summary["variants"]] + after if summary else own
    keys = [c for c in COLUMNS if any(row.get(c[0]) is not None for row in rows)]
    out: dict[str, dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: order.index(r["source"]) if r["source"] in order else len(order)):
        out.setdefault(row["source"], {"notebook": row["source"], "rows": []})["rows"].append({
            "name": row["name"], "reference": row.get("role") == "reference",
            "chosen": [str(s) for s, name in chosen.items() if str(name) == row["name"]],
            "cells": [cell(row.get(key), spec) for key, _, spec in keys],
        })  # fmt: skip
    return [{"headers": [h for _, h, _ in keys]}, *out.values()]


def write_html(run_dir: Path | str) -> Path:
    """``report.html`` in ``run_dir``, with whatever the run has."""
    import nbconvert  # heavy (mistune, bleach...): only when a report is written

    run_dir = Path(run_dir)
    manifest, records = folders.read_manifest(run_dir), load_run(run_dir)
    summary = aggregate(records) or {}
    chosen = dict(summary.get("findings", {}).get("best_variant", {}))
    notebooks = []
    for nb in NOTEBOOKS:
        executed, html = run_dir / "notebooks" / f"{nb.name}.ipynb", run_dir / "html" / f"{nb.name}.html"
        if executed.exists():
            atomic_write_text(html, nbconvert.HTMLExporter().from_filename(str(executed))[0])
        seconds = manifest.get("notebooks", {}).get(nb.name, {}).get("seconds")
        link = html.relative_to(run_dir).as_posix() if executed.exists() else None
        notebooks.append(dict(name=nb.name, title=nb.title, minutes=seconds and seconds / 60, href=link))
    have = {r["notebook"] for r in records} | {summary.get("notebook", "")}  # the aggregator is not missing
    header, *table = groups(records, chosen)
    loader = jinja2.FileSystemLoader(TEMPLATES)
    template = jinja2.Environment(loader=loader, autoescape=True, undefined=jinja2.StrictUndefined)
    context = {
        "manifest": manifest, "env": records[0]["env"] if records else {}, "chosen": chosen, "groups": table,
        "headers": header["headers"], "figures": summary.get("figures", []), "notebooks": notebooks,
        "missing": [nb.name for nb in NOTEBOOKS if nb.name not in have],
    }  # fmt: skip
    page = template.get_template("report.html.j2").render(**context)
    return atomic_write_text(run_dir / "report.html", page)
