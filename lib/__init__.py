"""Model UX Lab's shared helper package: every notebook does its work through these modules.

Modules are named by pipeline stage and imported lazily, so ``import lib`` is instant and
``python -m lib.run --list`` never pays for importing torch:

- ``lib.paths``    where things live (project root, ``outputs/<profile>/...``)
- ``lib.params``   profiles, parameter declarations, validation (one place for every rule)
- ``lib.data``     datasets (built-in, CSV, HF hub), grouped splits, tokenized loaders
- ``lib.models``   model specs, tiny test model, artifact save/load with metadata
- ``lib.train``    the one training loop (and its comparison with ``transformers.Trainer``)
- ``lib.adapt``    LoRA adapters with peft: add, count, save/load, merge
- ``lib.evaluate`` predictions and metrics, the classical TF-IDF reference
- ``lib.bench``    size, latency, throughput, peak memory; interleaved side-by-side comparisons
- ``lib.results``  the metrics record every notebook writes (schema + atomic write)
- ``lib.plots``    the figures
- ``lib.run``      the papermill runner (``python -m lib.run``)
"""

from __future__ import annotations

import importlib
import os
from typing import Any

# Offline by default: nothing can be fetched from a hub here, and HF reads this once, at import time.
# Users with a hub set HF_HUB_OFFLINE=0 before starting Python / Jupyter.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", os.environ["HF_HUB_OFFLINE"])
# Tokenizers' own thread pool fights torch for the 2 cores and warns after a fork; torch does the work.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__version__ = "0.1.0"

_SUBMODULES = {
    "paths", "params", "data", "models", "train", "evaluate", "bench", "results", "plots", "run",
    "errors", "catalog", "utils", "adapt", "heads", "prune", "quantize", "distill",
}

__all__ = sorted(_SUBMODULES) + ["setup", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    if name == "setup":
        from .utils import setup

        return setup
    raise AttributeError(f"module 'lib' has no attribute {name!r}")
