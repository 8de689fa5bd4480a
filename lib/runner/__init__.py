"""The runner tier: what runs the collection and keeps its results. Core modules build on it (to know where a
run writes, what a record holds); it imports nothing from the core or the techniques, only :mod:`lib.errors`
and :mod:`lib.utils`.

- ``paths``      where things live (project root, notebooks, params, the outputs folder)
- ``catalog``    the notebooks in order, the artifacts each needs and makes, what a complete artifact folder
  holds
- ``params``     profiles, parameter declarations, every value rule; ``from_namespace`` in a notebook
- ``folders``    run folders: one per run with its manifest; ``latest``; where a notebook reads inputs and
  writes
- ``records``    the metrics record every notebook writes (schema, atomic write, loading)
- ``preflight``  checks of the world before a run: the CSV file, prerequisite artifacts and their settings,
  the device
- ``tracking``   opt-in MLflow logging of every record (a local SQLite store under outputs/)
- ``execute``    one notebook through papermill into the run folder; Ctrl-C and SIGTERM
- ``history``    the run history on the command line: headline, runs table, compare, delete
- ``readme``     the README's generated results block
- ``page``       the run's ``report.html`` (a jinja2 template)
- ``cli``        ``python -m lib.runner``: plan, check, run
"""

from __future__ import annotations

import importlib
from typing import Any

MODULES = (
    "paths",
    "provenance",
    "catalog",
    "params",
    "folders",
    "records",
    "preflight",
    "tracking",
    "execute",
    "history",
    "readme",
    "page",
    "cli",
)


def __getattr__(name: str) -> Any:
    if name not in MODULES:
        raise AttributeError(f"module 'lib.runner' has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{name}")
    globals()[name] = module
    return module
