"""The run's one-page ``report.html`` (written by the runner at the end of every run; ``python -m lib.runner
--html RUN`` writes it again): the run's facts, the choice, every variant grouped by the notebook that made
it, the report's figures, and every executed notebook rendered to HTML. The page is a jinja2 template
(``templates/report.html.j2``); this module only gathers what it shows, from the run's records, and knows no
notebook by name: the *aggregating* record is the one whose variants name their ``source`` notebook.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2

from ..utils import atomic_write_text
from . import folders
from .catalog import NOTEBOOKS
from .records import load_run, own_variants

TEMPLATES = Path(__file__).parent / "templates"
# (record key, header with its unit, format): the columns of the table, in order; a column no row has is left
# out.
COLUMNS = (
    ("accuracy", "accuracy", ".4f"),
    ("f1", "macro-F1", ".4f"),
    ("size_mb", "size (MB)", ".1f"),
    ("num_params", "parameters", ",d"),
    ("latency_ms_b1_p50", "latency, batch 1, p50 (ms)", ".2f"),
    ("throughput_b32", "throughput, batch 32 (samples/s)", ".1f"),
    ("speedup_vs_teacher", "speed-up over the teacher (×)", ".2f"),
    ("trainable_params", "trainable parameters", ",d"),
    ("epsilon", "privacy ε", ".2f"),
    ("faithfulness", "faithfulness (LIME comprehensiveness)", ".3f"),
    ("provenance", "how it was made", ""),
)


def cell(value: Any, spec: str) -> str:
    """One table cell: ``–`` for a missing value, integers with thousands separators."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if spec == ",d":
        return f"{int(value):,}"
    return format(value, spec) if spec and isinstance(value, (int, float)) else str(value)


def aggregate(records: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The record that gathers every notebook's variants (its variants carry ``source``), the newest if
    several."""
    found = [r for r in records if any("source" in v for v in r["variants"])]
    return found[-1] if found else None


def groups(records: Sequence[Mapping[str, Any]], chosen: Mapping[str, str]) -> list[dict[str, Any]]:
    """The table's rows grouped by source notebook, in notebook order, each row with its cells and the choices
    it is."""
    summary = aggregate(records)
    if summary is not None:
        rows = [dict(v) for v in summary["variants"]]
    else:
        rows = [{**v, "source": r["notebook"]} for r in records for v in own_variants(r)]
    keys = [c for c in COLUMNS if any(row.get(c[0]) is not None for row in rows)]
    marks: dict[str, list[str]] = {}
    for setting, name in chosen.items():
        marks.setdefault(str(name), []).append(str(setting))
    order = [nb.name for nb in NOTEBOOKS]
    out: dict[str, dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: order.index(r["source"]) if r["source"] in order else len(order)):
        group = out.setdefault(row["source"], {"notebook": row["source"], "rows": []})
        group["rows"].append(
            {
                "name": row["name"],
                "reference": row.get("role") == "reference",
                "chosen": marks.get(row["name"], []),
                "cells": [cell(row.get(key), spec) for key, _, spec in keys],
            }
        )
    return [{"headers": [h for _, h, _ in keys]}, *out.values()]


def _notebook_html(executed: Path, out: Path) -> Path:
    """One executed notebook rendered to a standalone HTML page with nbconvert (atomic)."""
    import nbconvert  # heavy (mistune, bleach...): only when a report is written

    body, _ = nbconvert.HTMLExporter().from_filename(str(executed))
    return atomic_write_text(out, body)


def write_html(run_dir: Path | str) -> Path:
    """``report.html`` in ``run_dir``, with whatever the run has."""
    run_dir = Path(run_dir)
    manifest, records = folders.read_manifest(run_dir), load_run(run_dir)
    summary = aggregate(records)
    chosen = dict((summary or {}).get("findings", {}).get("best_variant", {}))
    notebooks = []
    for nb in NOTEBOOKS:
        executed = run_dir / "notebooks" / f"{nb.name}.ipynb"
        seconds = manifest.get("notebooks", {}).get(nb.name, {}).get("seconds")
        page = _notebook_html(executed, run_dir / "html" / f"{nb.name}.html") if executed.exists() else None
        notebooks.append(
            {
                "name": nb.name,
                "title": nb.title,
                "minutes": seconds / 60 if seconds else None,
                "href": page.relative_to(run_dir).as_posix() if page else None,
            }
        )
    have = {r["notebook"] for r in records}
    header, *table = groups(records, chosen)
    env = records[0]["env"] if records else {}
    template = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined
    ).get_template("report.html.j2")
    have.add((summary or {}).get("notebook", ""))  # the aggregating notebook does not report on itself
    page = template.render(
        manifest=manifest,
        env=env,
        chosen=chosen,
        headers=header["headers"],
        groups=table,
        figures=(summary or {}).get("figures", []),
        notebooks=notebooks,
        missing=[nb.name for nb in NOTEBOOKS if nb.name not in have],
    )
    return atomic_write_text(run_dir / "report.html", page)
