"""Experiment tracking with MLflow, opt-in (``python -m lib.runner --mlflow`` or ``MUXL_MLFLOW=1``): each
record also lands in a local store, ``sqlite:///<outputs>/mlflow.db`` (browse it with ``mlflow ui
--backend-store-uri sqlite:///outputs/mlflow.db``): one experiment per profile, a parent MLflow run per run
folder, one run per notebook with its parameters, numeric findings and ``<variant>/<metric>`` metrics.
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


def flatten_params(params: Mapping[str, Any]) -> dict[str, str]:
    """MLflow params are strings of at most 6000 characters; lists become their JSON text."""
    return {k: (json.dumps(v) if isinstance(v, (list, dict)) else str(v))[:6000] for k, v in params.items()}


def metrics_of(rec: Mapping[str, Any], metrics: Sequence[str]) -> dict[str, float]:
    """Every numeric finding, and each variant's ``metrics`` as ``<variant>/<metric>``; MLflow allows letters,
    digits and ``_ - . / space`` in a name: anything else becomes ``_``."""
    found = [(k, v) for k, v in rec.get("findings", {}).items()]
    found += [(f"{v['name']}/{m}", v.get(m)) for v in rec.get("variants", []) for m in metrics]
    key = lambda name: "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)  # noqa: E731
    return {key(k): float(x) for k, x in found if isinstance(x, (int, float)) and not isinstance(x, bool)}


def log_record(rec: Mapping[str, Any], run_dir: Path, record_path: Path, metrics: Sequence[str]) -> float:
    """Log one notebook's record under its run folder's parent MLflow run; return the seconds it took."""
    t0 = time.perf_counter()
    import mlflow  # optional heavy package (SQLAlchemy, alembic...): only when tracking is on

    mlflow.set_tracking_uri(tracking_uri())
    name = f"model-ux-lab/{rec['profile']}"
    found = mlflow.get_experiment_by_name(name)
    where = (paths.outputs_root() / "mlartifacts" / rec["profile"]).as_uri()
    experiment = found.experiment_id if found else mlflow.create_experiment(name, artifact_location=where)
    env, notebook = rec.get("env", {}), rec["notebook"]
    tags = {"muxl.run_id": run_dir.name, "muxl.notebook": notebook, "muxl.profile": rec["profile"],
            "muxl.isa": str(env.get("isa")), "muxl.device": str(env.get("device"))}  # fmt: skip
    parent = _parent_run(mlflow, experiment, run_dir.name, rec["profile"])
    with mlflow.start_run(
        experiment_id=experiment, run_name=notebook, tags=tags, parent_run_id=parent
    ) as run:
        mlflow.log_params(flatten_params(rec.get("params", {})))
        mlflow.log_metrics(metrics_of(rec, metrics))
        mlflow.log_artifact(str(record_path), artifact_path="metrics")
        for fig in rec.get("figures", []):
            if (run_dir / fig).exists():
                mlflow.log_artifact(str(run_dir / fig), artifact_path="figures")
        mlflow.log_metric("muxl_tracking_seconds", time.perf_counter() - t0)
        mlflow.set_tag("muxl.mlflow_run_id", run.info.run_id)
    return time.perf_counter() - t0


def _parent_run(mlflow: Any, experiment_id: str, run_id: str, profile: str) -> str:
    """The MLflow run standing for run folder ``run_id`` (created by the first notebook that logs)."""
    search = f"tags.`muxl.run_id` = '{run_id}' and tags.`muxl.parent` = 'true'"
    found = mlflow.search_runs(experiment_ids=[experiment_id], output_format="list", filter_string=search)
    if found:
        return found[0].info.run_id
    client = mlflow.MlflowClient()
    tags = {"muxl.run_id": run_id, "muxl.parent": "true", "muxl.profile": profile}
    run = client.create_run(experiment_id, run_name=run_id, tags=tags)
    client.set_terminated(run.info.run_id)
    return run.info.run_id
