"""Model UX Lab's shared helper package: every notebook does its work through these modules.

Three tiers, one folder each, imported lazily (``import lib`` is instant; ``python -m lib.runner --list``
never imports torch). Each tier imports only the tiers before it (and ``lib.errors`` / ``lib.utils``, which
every tier may use); ``tests/test_layers.py`` enforces it:

1. **Runner** (``lib/runner/``): runs the collection and keeps its results (see :mod:`lib.runner`).
2. **Core** (``lib/*.py``): what a notebook computes with — ``utils`` (seeding, devices, the machine's facts,
   atomic writes), ``errors``, ``data``, ``heads``, ``models``, ``predict``, ``artifacts``, ``train``,
   ``evaluate``, ``bench``, ``baselines``, ``experiment`` (variants -> scores, timings -> table -> record),
   ``report`` (every variant in one table, Pareto fronts, the weighted choice), ``launch`` (workers under
   torchrun), ``plots``.
3. **Techniques** (``lib/techniques/``): one module per technique, only its mechanism, importing only core
   (and the runner): ``lib.lora``, ``lib.prune``, ``lib.quantize``, ``lib.distill``, ``lib.distributed``,
   ``lib.explain`` and ``lib.privacy``. A function marked ``# @save`` is defined, identically, in the notebook
   that teaches it (a test keeps the two the same).

Notebooks sit on top and reach the runner as ``lib.runner.params``, ``.records``, ``.folders``, ``.catalog``.
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
CORE = ("errors", "utils", "data", "heads", "models", "predict", "artifacts", "train", "evaluate", "bench",
        "baselines", "experiment", "report", "launch", "plots")  # fmt: skip
TECHNIQUES = ("lora", "prune", "quantize", "distill", "distributed", "explain", "privacy")
__all__ = [*CORE, *TECHNIQUES, "runner", "techniques", "setup", "__version__"]


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
    elif name in CORE or name in ("runner", "techniques"):
        module = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module 'lib' has no attribute {name!r}")
    globals()[name] = module
    return module
