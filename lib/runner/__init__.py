"""The runner tier: what runs the collection and keeps its results. The core builds on it (to know where a run
writes, what a record holds); it imports nothing from the core or the techniques, only :mod:`lib.errors` and
:mod:`lib.utils`. Its modules, in import order:

``paths`` where things live · ``provenance`` commit, packages, machine · ``catalog`` the notebooks, the
artifacts each needs and makes · ``contract`` the data contract a run shares, the CSV check · ``folders`` run
folders, their manifests, ``latest`` · ``params`` declarations, rules, profiles; ``from_namespace`` in a
notebook · ``records`` the metrics record · ``tracking`` opt-in MLflow · ``execute`` one notebook through
papermill, Ctrl-C and SIGTERM · ``history`` runs table, compare, delete · ``readme`` the README block ·
``page`` the run's ``report.html`` · ``cli`` ``python -m lib.runner``.
"""

from __future__ import annotations

import importlib
from typing import Any

MODULES = ("paths", "provenance", "catalog", "contract", "folders", "params", "records", "tracking",
           "execute", "history", "readme", "page", "cli")  # fmt: skip


def __getattr__(name: str) -> Any:
    if name not in MODULES:
        raise AttributeError(f"module 'lib.runner' has no attribute {name!r}")
    globals()[name] = importlib.import_module(f"{__name__}.{name}")
    return globals()[name]
