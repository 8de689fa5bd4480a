"""The runner tier: what runs the collection and keeps its results; it imports nothing from the core or the
techniques (only :mod:`lib.errors`, :mod:`lib.utils`). Its modules, in import order: ``paths`` ·
``provenance`` (commit, packages, machine) · ``catalog`` (the notebooks, the artifacts each needs and makes)
· ``contract`` (the data contract) · ``folders`` (run folders, manifests, ``latest``) · ``params``
(declarations, rules, profiles; ``from_namespace``) · ``records`` (the metrics record) · ``tracking`` (opt-in
MLflow) · ``execute`` (one notebook through papermill; Ctrl-C, SIGTERM) · ``history`` (runs, compare,
delete) · ``readme`` (the results block) · ``page`` (``report.html``) · ``cli`` (``python -m lib.runner``).
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
