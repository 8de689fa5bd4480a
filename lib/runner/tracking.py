"""Experiment tracking with MLflow (opt-in): every notebook's record also lands in a local MLflow store.

On with ``python -m lib.runner --mlflow`` (or ``MUXL_MLFLOW=1`` in the environment of a JupyterLab or script);
off by default, because the run folders already hold every number, and tracking costs time (measured: see the
README).

The store is local, no server: ``sqlite:///<outputs>/mlflow.db`` (MLflow's default backend since 3.7) with
artifacts in ``<outputs>/mlartifacts/``. Browse it with::

    mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db      # then open http://127.0.0.1:5000

Layout: one MLflow experiment per profile (``model-ux-lab/<profile>``); one parent MLflow run per run folder
(named by its run id) and under it one run per notebook, with the notebook's parameters, every numeric finding
and every variant's numbers as metrics (``<variant>/accuracy`` ...), and the record and figures as artifacts.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import paths

ENV = "MUXL_MLFLOW"


def enabled() -> bool:
    return os.environ.get(ENV, "").lower() in ("1", "true", "yes", "on")


def tracking_uri() -> str:
    return f"sqlite:///{paths.outputs_root() / 'mlflow.db'}"


def artifact_root() -> Path:
    return paths.outputs_root() / "mlartifacts"


def flatten_params(params: Mapping[str, Any]) -> dict[str, str]:
    """MLflow params are strings of at most 6000 characters; lists become their JSON text."""
    return {k: (json.dumps(v) if isinstance(v, (list, dict)) else str(v))[:6000] for k, v in params.items()}


def metrics_of(rec: Mapping[str, Any], metrics: Sequence[str]) -> dict[str, float]:
    """Every numeric finding, and each variant's ``metrics`` as ``<variant>/<metric>``."""
    out: dict[str, float] = {}
    for k, v in rec.get("findings", {}).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[_key(k)] = float(v)
    for v in rec.get("variants", []):
        for m in metrics:
            x = v.get(m)
            if isinstance(x, (int, float)) and not isinstance(x, bool):
                out[_key(f"{v['name']}/{m}")] = float(x)
    return out


def _key(name: str) -> str:
    """MLflow metric names allow letters, digits, ``_ - . / space``: anything else becomes ``_``."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)


def log_record(rec: Mapping[str, Any], run_dir: Path, record_path: Path, metrics: Sequence[str]) -> float:
    """Log one notebook's record under its run folder's parent MLflow run; return the seconds it took."""
    t0 = time.perf_counter()
    import mlflow  # optional heavy package (SQLAlchemy, alembic...): only when tracking is on

    mlflow.set_tracking_uri(tracking_uri())
    name = f"model-ux-lab/{rec['profile']}"
    experiment = mlflow.get_experiment_by_name(name)
    experiment_id = (
        experiment.experiment_id
        if experiment is not None
        else mlflow.create_experiment(name, artifact_location=(artifact_root() / rec["profile"]).as_uri())
    )
    parent = _parent_run(mlflow, experiment_id, run_dir.name, rec)
    env = rec.get("env", {})
    tags = {
        "muxl.run_id": run_dir.name,
        "muxl.notebook": rec["notebook"],
        "muxl.profile": rec["profile"],
        "muxl.isa": str(env.get("isa")),
        "muxl.device": str(env.get("device")),
    }
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=rec["notebook"], tags=tags, parent_run_id=parent
    ) as run:
        mlflow.log_params(flatten_params(rec.get("params", {})))
        mlflow.log_metrics(metrics_of(rec, metrics))
        mlflow.log_artifact(str(record_path), artifact_path="metrics")
        for fig in rec.get("figures", []):
            path = run_dir / fig
            if path.exists():
                mlflow.log_artifact(str(path), artifact_path="figures")
        seconds = time.perf_counter() - t0
        mlflow.log_metric("muxl_tracking_seconds", seconds)
        mlflow.set_tag("muxl.mlflow_run_id", run.info.run_id)
    return time.perf_counter() - t0


def _parent_run(mlflow: Any, experiment_id: str, run_id: str, rec: Mapping[str, Any]) -> str:
    """The MLflow run standing for run folder ``run_id`` (created by the first notebook that logs)."""
    found = mlflow.search_runs(
        experiment_ids=[experiment_id],
        output_format="list",
        filter_string=f"tags.`muxl.run_id` = '{run_id}' and tags.`muxl.parent` = 'true'",
    )
    if found:
        return found[0].info.run_id
    client = mlflow.MlflowClient()
    run = client.create_run(
        experiment_id,
        run_name=run_id,
        tags={"muxl.run_id": run_id, "muxl.parent": "true", "muxl.profile": rec["profile"]},
    )
    client.set_terminated(run.info.run_id)
    return run.info.run_id
