"""Where things live; nothing else builds a path by hand. ``outputs/<profile>/`` holds a profile's runs
(:mod:`.folders`); ``$MUXL_OUTPUTS`` puts outputs elsewhere (the tests do, never touching your results).
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
