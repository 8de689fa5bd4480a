"""Provenance: what made a run's numbers — the commit (and whether the code was a clean commit), the versions
of the packages that decide the numbers, and the machine (CPU model and class). Every run's manifest records
them."""

from __future__ import annotations

import hashlib
import os
import platform
import socket
import subprocess
from collections.abc import Iterable
from importlib import metadata
from typing import Any

import psutil

from ..utils import cpu_flags, cpu_generation, cpu_id, cpu_model, isa
from . import paths

PACKAGES = ("torch", "transformers", "peft", "onnxruntime", "onnx", "numpy", "scikit-learn", "pandas",
            "papermill", "lime", "captum", "opacus", "mlflow")  # fmt: skip


def git_state() -> dict[str, Any]:
    """Commit, whether tracked files differ from it (outputs/ is ignored, so results never count), which, and
    a fingerprint of the difference (to tell whether the code changed *during* a run)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=paths.ROOT, capture_output=True, text=True, timeout=20, check=True
        ).stdout

    try:
        changed = git("status", "--porcelain", "--untracked-files=no").splitlines()  # "XY path"
        diff = hashlib.sha1(git("diff", "HEAD").encode()).hexdigest() if changed else None
        return {"commit": git("rev-parse", "HEAD").strip(), "dirty": bool(changed),
                "changed": [line[3:] for line in changed][:20], "diff_sha1": diff}  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None, "changed": [], "diff_sha1": None}


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    installed = {d.metadata["Name"].lower(): d.version for d in metadata.distributions()}
    return {name: installed.get(name) for name in names}


def machine() -> dict[str, Any]:
    """This machine as speed figures need it: CPU model and class, the flags that matter, cores, memory."""
    flags = cpu_flags()
    return {
        "cpu": cpu_model(), "isa": isa(flags, cpu_generation()), "cpu_generation": cpu_generation(),
        "cpu_id": cpu_id(), "cpu_count": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "flags": sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "f16c", "sse4"))),
        "platform": platform.platform(), "python": platform.python_version(), "host": socket.gethostname(),
    }  # fmt: skip
