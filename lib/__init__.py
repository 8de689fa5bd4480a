"""Model UX Lab's shared helper package: every notebook does its work through these modules.

Two layers, imported lazily (``import lib`` is instant; ``python -m lib.run --list`` never imports torch):

**Core** (``lib/*.py``) — imports no technique:

- ``lib.paths``      where things live (project root, notebooks, params, the outputs folder)
- ``lib.runs``       run folders: one per run, with its manifest; ``latest``; where a later notebook reads inputs
- ``lib.preflight``  deep checks before a run: the CSV file, prerequisite artifacts and their settings, the device
- ``lib.errors``     the errors a user can fix, each naming the problem and the fix
- ``lib.catalog``    the notebooks in order, the artifacts each needs and makes, what a complete artifact holds
- ``lib.params``     profiles, parameter declarations, validation (one place for every rule)
- ``lib.utils``      seeding, the machine's facts (CPU class / ISA), atomic writes
- ``lib.data``       datasets (built-in, CSV, HF hub), grouped splits, tokenized loaders
- ``lib.heads``      the mean-pooling classification head
- ``lib.models``     model specs, the tiny test model, architecture facts (encoder layers and their shapes)
- ``lib.predict``    one predictor interface (batch -> logits) for torch, cast and ONNX Runtime models
- ``lib.artifacts``  save and load every artifact kind (model, adapter, ONNX) with its metadata
- ``lib.train``      the one training loop, and an isolated training-speed probe
- ``lib.evaluate``   predictions and metrics, agreement between two models
- ``lib.bench``      size, latency, throughput, peak memory; interleaved side-by-side comparisons
- ``lib.baselines``  the TF-IDF reference and the check of ``lib.train`` against ``transformers.Trainer``
- ``lib.experiment`` the comparison every notebook fills: variants -> scores, timings -> table -> record
- ``lib.results``    the metrics record every notebook writes (schema + atomic write), the README block
- ``lib.report``     the trade-off view: every record's variants in one table, Pareto front, the variant a user's
                     weights pick, the run's ``report.html``
- ``lib.tracking``   opt-in MLflow logging of every record (local SQLite store under outputs/)
- ``lib.plots``      the figures
- ``lib.run``        the papermill runner (``python -m lib.run``)

**Techniques** (``lib/techniques/``) — one module per technique, only its mechanism, importing only core;
reachable as ``lib.lora``, ``lib.prune``, ``lib.quantize``, ``lib.distill``, ``lib.distributed`` (DDP under
torchrun), ``lib.explain`` (LIME, Integrated Gradients, faithfulness) and ``lib.privacy`` (DP-SGD with Opacus, the
membership-inference audit). A function marked ``#@save`` is defined, identically, in the notebook that teaches it (a test keeps the two
the same).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

# Offline by default: nothing can be fetched from a hub here, and HF reads this once, at import time.
# Users with a hub set HF_HUB_OFFLINE=0 before starting Python / Jupyter.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", os.environ["HF_HUB_OFFLINE"])
# Tokenizers' own thread pool fights torch for the 2 cores and warns after a fork; torch does the work.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from . import errors  # stdlib only: instant

__version__ = "0.1.0"


def _show_project_errors_briefly() -> None:
    """In a Jupyter kernel (IPython already loaded), a LabError shows as its message, not as a traceback."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is not None:
        shell.set_custom_exc((errors.LabError,), errors.show_in_notebook)


_show_project_errors_briefly()

CORE = ("paths", "errors", "runs", "preflight", "catalog", "params", "utils", "data", "heads", "models", "predict", "artifacts", "train",
        "evaluate", "bench", "baselines", "experiment", "results", "report", "tracking", "plots", "run")
TECHNIQUES = ("lora", "prune", "quantize", "distill", "distributed", "explain", "privacy")

__all__ = [*CORE, *TECHNIQUES, "techniques", "setup", "__version__"]


def __getattr__(name: str) -> Any:
    if name in CORE or name == "techniques":
        module = importlib.import_module(f"{__name__}.{name}")
    elif name in TECHNIQUES:
        module = importlib.import_module(f"{__name__}.techniques.{name}")
    elif name == "setup":
        return importlib.import_module(f"{__name__}.utils").setup
    else:
        raise AttributeError(f"module 'lib' has no attribute {name!r}")
    globals()[name] = module
    return module
