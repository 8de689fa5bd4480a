"""Where things live. Nothing else in the project builds a path by hand.

``outputs/<profile>/`` holds the profile's runs, each in its own folder (``runs/<run id>/``, see
:mod:`lib.runner.folders`, which also names the files inside a run), and ``latest``, a link to the last
complete run. Set ``MUXL_OUTPUTS`` to put outputs elsewhere (the tests do, so they never touch your results).
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
PARAMS = ROOT / "params"


def outputs_root() -> Path:
    """The outputs folder: ``$MUXL_OUTPUTS`` if set, else ``<project>/outputs``."""
    env = os.environ.get("MUXL_OUTPUTS")
    return Path(env).expanduser().resolve() if env else ROOT / "outputs"


def profile_dir(profile: str) -> Path:
    return outputs_root() / profile


def notebook_path(name: str) -> Path:
    return NOTEBOOKS / f"{name}.ipynb"


def profile_path(profile: str) -> Path:
    return PARAMS / f"{profile}.yaml"
