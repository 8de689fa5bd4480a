"""Where things live. Nothing else in the project builds a path by hand.

``outputs/<profile>/`` holds everything a run writes: ``notebooks/`` (executed copies), ``metrics/``
(one JSON record per notebook), ``figures/``, ``models/`` (artifacts later notebooks start from) and
``work/<notebook>/`` (scratch files a notebook rewrites on every run).
Set ``MUXL_OUTPUTS`` to put outputs elsewhere (the tests do, so they never touch your results).
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
PARAMS = ROOT / "params"


def outputs_root() -> Path:
    """The outputs folder: ``$MUXL_OUTPUTS`` if set, else ``<project>/outputs``."""
    env = os.environ.get("MUXL_OUTPUTS")
    return Path(env).expanduser().resolve() if env else ROOT / "outputs"


def profile_dir(profile: str) -> Path:
    return outputs_root() / profile


def metrics_path(profile: str, notebook: str) -> Path:
    return profile_dir(profile) / "metrics" / f"{notebook}.json"


def figures_dir(profile: str) -> Path:
    path = profile_dir(profile) / "figures"
    path.mkdir(parents=True, exist_ok=True)
    return path


def executed_notebook(profile: str, notebook: str) -> Path:
    return profile_dir(profile) / "notebooks" / f"{notebook}.ipynb"


def artifact_dir(profile: str, name: str) -> Path:
    """Folder of a saved model artifact, e.g. ``artifact_dir("default", "teacher")``."""
    return profile_dir(profile) / "models" / name


def work_dir(profile: str, notebook: str) -> Path:
    """Scratch files of one notebook (e.g. the ONNX files of every quantized variant); overwritten on a re-run."""
    path = profile_dir(profile) / "work" / notebook
    path.mkdir(parents=True, exist_ok=True)
    return path


def notebook_path(name: str) -> Path:
    return NOTEBOOKS / f"{name}.ipynb"


def profile_path(profile: str) -> Path:
    return PARAMS / f"{profile}.yaml"
