"""Model UX Lab's helper package: every notebook does its work through it, in three tiers, each importing
only the tiers before it (and ``lib.errors`` / ``lib.utils``; ``tests/test_layers.py`` enforces it): the
**runner** (``lib/runner/``) runs the collection and keeps its results; the **core** (:data:`CORE`) is what
a notebook computes with; the **techniques** (:data:`TECHNIQUES`, ``lib/techniques/``) hold one mechanism
each, a ``# @save`` function identical to the one its notebook defines. Modules load lazily: ``import lib``
is instant, ``python -m lib.runner --list`` never imports torch.
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
CORE = ("errors", "utils", "data", "heads", "models", "predict", "artifacts", "train", "evaluate", "verdict",
        "bench", "baselines", "experiment", "report", "launch", "plots")  # fmt: skip
TECHNIQUES = ("lora", "prune", "quantize", "compact", "distill", "distributed", "explain", "privacy",
              "federated", "behaviour", "robustness", "fairness", "serving", "loadgen")  # fmt: skip
__all__ = [*CORE, *TECHNIQUES, "runner", "techniques", "serve", "setup", "__version__"]


def _show_project_errors_briefly() -> None:
    """In a Jupyter kernel (IPython already loaded), a LabError shows as its message, not as a traceback."""
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    if shell is not None:
        shell.set_custom_exc((errors.LabError,), errors.show_in_notebook)


_show_project_errors_briefly()


def __getattr__(name: str) -> Any:
    if name == "setup":
        return importlib.import_module(f"{__name__}.utils").setup
    if name in TECHNIQUES:
        module = importlib.import_module(f"{__name__}.techniques.{name}")
    elif name in CORE or name in ("runner", "techniques", "serve"):
        module = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module 'lib' has no attribute {name!r}")
    globals()[name] = module
    return module
