"""Small shared helpers: reproducible set-up, environment facts, atomic writes."""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pandas as pd


def num_threads() -> int:
    """Threads for torch: ``$MUXL_THREADS`` or every core (never more: oversubscription is 4x slower)."""
    env = os.environ.get("MUXL_THREADS")
    return int(env) if env else (os.cpu_count() or 1)


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup(seed: int) -> dict[str, Any]:
    """Seed every RNG, pin torch's thread count, and return the environment facts for the record."""
    import torch

    torch.set_num_threads(num_threads())
    seed_everything(seed)
    pd.set_option("display.precision", 4)  # tables of ratios and accuracies: 4 digits are enough to read
    return env_info()


def cpu_flags() -> set[str]:
    """The CPU feature flags of this machine (Linux ``/proc/cpuinfo``), empty where unknown."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_support(flags: Iterable[str] | None = None) -> dict[str, bool]:
    """Which instructions low-precision speed depends on: AVX2, AVX-512, int8 dot products (VNNI), native bf16.

    These machines differ (AMD Zen 4 has AVX-512 VNNI and BF16, Zen 3 only AVX2), and so do the speed-ups of int8 and
    bf16: every speed figure is reported next to :func:`isa`.
    """
    flags = set(cpu_flags() if flags is None else flags)
    return {"avx2": "avx2" in flags, "avx512": "avx512f" in flags,
            "int8_vnni": bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"}),
            "bf16": bool(flags & {"avx512_bf16", "amx_bf16"})}


def isa(flags: Iterable[str] | None = None) -> str:
    """A short name of the CPU class for speed figures, e.g. ``"AVX-512 VNNI BF16"`` or ``"AVX2"``."""
    s = cpu_support(flags)
    base = "AVX-512" if s["avx512"] else "AVX2" if s["avx2"] else "no AVX2"
    return " ".join([base] + (["VNNI"] if s["int8_vnni"] else []) + (["BF16"] if s["bf16"] else []))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def env_info() -> dict[str, Any]:
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu": cpu_model(),
        "isa": isa(),
        "platform": platform.platform(),
    }


def atomic_write_text(path: Path | str, text: str) -> Path:
    """Write ``text`` to ``path`` via a temp file in the same folder and a rename: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: Path | str, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


@contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield a temp folder to fill; on success it replaces ``path`` whole, on error it is removed.

    An interrupted save therefore leaves the previous artifact (or nothing), never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
