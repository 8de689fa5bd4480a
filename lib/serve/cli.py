"""``python -m lib.serve`` (``make serve``): serve a saved variant of a run over HTTP on 127.0.0.1.

Which model: ``--model-dir`` (any artifact folder), else ``--variant`` (an artifact name: teacher, student,
quantized, stacked, ...) of ``--run`` (an id, default: the newest complete run of ``--profile`` that has it).
Without ``--variant``, the variant 10_report chose under the user's weights (its best *saved* candidate). The
batching settings default to the configuration 11_serve measured best for that model in that run, if it has
measured it, else to :class:`lib.serve.app.Settings`' defaults; every flag overrides.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
import uvicorn

from .. import artifacts
from ..errors import ArtifactError, LabError
from ..runner import catalog, folders
from ..techniques.serving import Classifier
from .app import Settings, make_app

REPORT, SERVE = "10_report", "11_serve"
HELP = {
    "max_batch_size": "most texts in one model call (1: no batching)",
    "max_wait_ms": "how long a batch waits for more texts after its first (0: only what is already queued)",
    "max_queue": "most texts waiting for the model; past it /predict answers 429 at once",
    "cache_size": "answers kept in the LRU cache (0: no cache)",
    "max_texts": "most texts in one request (more: 422)",
    "max_chars": "longest text in characters (longer: 422)",
    "max_padding": "padding a length group may add, as a share of its real tokens (< 0: one group per batch)",
    "threads": "torch / ONNX Runtime threads (the rest of the CPU is left to the clients on this machine)",
    "model_nice": "nice value of the threads that run the model (Linux): the event loop answers first",
}


def record(run_dir: Path, notebook: str) -> dict[str, Any] | None:
    path = run_dir / "metrics" / f"{notebook}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def chosen_variant(profile: str, run: str) -> tuple[str, Path]:
    """``(artifact name, run folder)`` of the variant 10_report chose under the user's weights."""
    try:
        run_dir = folders.source(profile, f"metrics/{REPORT}.json", run)
    except ArtifactError as e:
        raise LabError(
            f"no report to take the chosen variant from ({e}): run 10_report "
            f"(python -m lib.runner --profile {profile}) or name one with --variant"
        ) from None
    pick = (record(run_dir, REPORT) or {}).get("findings", {}).get("best_artifact", {}).get("yours")
    if not pick:
        raise LabError(
            f"run {run_dir.name}'s report names no saved variant it chose: name one with --variant"
        )
    return pick, run_dir


def resolve(profile: str, run: str, variant: str, model_dir: str) -> tuple[Path, str, str]:
    """``(artifact folder, variant name, run id)`` to serve; clear errors naming the fix."""
    if model_dir:
        path = Path(model_dir)
        if problem := catalog.check_artifact(path):
            raise ArtifactError(f"--model-dir {problem}")
        in_run = (path.parent.parent / folders.MANIFEST).exists()
        return path, path.name, path.parent.parent.name if in_run else ""
    if not variant:
        variant, run_dir = chosen_variant(profile, run)
        run = run or run_dir.name
    path = catalog.require_artifact(profile, variant, run)
    return path, variant, path.parent.parent.name


MEASURED = ("max_batch_size", "max_wait_ms", "max_padding", "threads", "model_nice")  # what 11 compares


def measured_settings(run_dir: Path, variant: str) -> dict[str, Any]:
    """The batching settings 11_serve measured best for ``variant`` in that run (``{}`` if it did not serve
    it). The rest keep a server's defaults: 11's load runs used no cache, an unbounded queue and one text per
    request because they measure the model's knee, not because a user's server should."""
    best = (record(run_dir, SERVE) or {}).get("findings", {}).get("best_settings", {})
    return {k: v for k, v in best.get(variant, {}).items() if k in MEASURED}


def load_classifier(path: Path, max_padding: float) -> tuple[Classifier, dict[str, Any]]:
    """The artifact as a :class:`Classifier` and its metadata."""
    model, tokenizer, meta = artifacts.load(path)
    names = meta.get("label_names") or [str(i) for i in range(2)]
    max_length = int(meta.get("params", {}).get("max_length", 128))
    return Classifier(model, tokenizer, names, max_length, max_padding), meta


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lib.serve", description=__doc__.split("\n\n", 1)[1])
    p.add_argument(
        "--profile", default="default", help="the profile whose runs to look in (default: default)"
    )
    p.add_argument("--run", default="", help="a run id (default: the newest complete run that has the model)")
    p.add_argument("--variant", default="", help="an artifact name of the run (default: the report's choice)")
    p.add_argument("--model-dir", default="", help="serve this artifact folder instead")
    p.add_argument("--host", default="127.0.0.1", help="interface (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--allow-reconfigure",
        action="store_true",
        help="let PUT /admin/settings from this machine change batching, queue and cache while serving",
    )
    for f in fields(Settings):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=None, help=HELP[f.name])
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        path, name, run_id = resolve(args.profile, args.run, args.variant, args.model_dir)
        measured = measured_settings(path.parent.parent, name) if not args.model_dir else {}
        given = {f.name: getattr(args, f.name) for f in fields(Settings) if getattr(args, f.name) is not None}
        settings = Settings(**{**measured, **given})
    except (LabError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    torch.set_num_threads(settings.threads)  # ONNX Runtime sessions take the same count (lib.predict)
    classifier, _ = load_classifier(path, settings.max_padding)
    lowercase = bool(getattr(classifier.tokenizer, "do_lower_case", False))
    app = make_app(
        classifier,
        settings,
        name,
        run_id,
        warm_up=classifier.warm_up,
        lowercase=lowercase,
        allow_reconfigure=args.allow_reconfigure,
    )
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        access_log=False,
        timeout_graceful_shutdown=30,
        log_level="info",
        ws="none",
    )
    source = "measured best in 11_serve" if measured else "defaults"
    logging.getLogger("uvicorn.error").info(
        "serving %s (run %s) on http://%s:%d, settings (%s): %s; docs at /docs",
        name,
        run_id or "-",
        args.host,
        args.port,
        source,
        asdict(settings),
    )
    uvicorn.Server(config).run()  # SIGTERM / Ctrl-C: stop accepting, finish in-flight requests, exit
    return 0
