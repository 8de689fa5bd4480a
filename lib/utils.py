"""Small shared helpers: reproducible set-up, environment facts, atomic writes."""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import ParamError


def num_threads() -> int:
    """Threads for torch: ``$MUXL_THREADS`` or every core (never more: oversubscription is 4x slower)."""
    env = os.environ.get("MUXL_THREADS")
    return int(env) if env else (os.cpu_count() or 1)


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup(seed: int, device: str = "auto") -> dict[str, Any]:
    """Seed every RNG, pin torch's thread count, choose the device (``auto`` | ``cpu`` | ``cuda``) for
    training, evaluation and benchmarks, and return the environment facts for the record."""
    import torch

    set_device(device)
    torch.set_num_threads(num_threads())
    seed_everything(seed)
    pd.set_option("display.precision", 4)  # tables of ratios and accuracies: 4 digits are enough to read
    return env_info()


def resolve_device(name: str = "auto") -> Any:
    """``auto`` -> a GPU when torch sees one, else the CPU; ``cuda`` without one is a clear error."""
    import torch  # utils stays importable without torch (the runner's --list); every caller here has it

    if name not in ("auto", "cpu", "cuda"):
        raise ParamError(f"device must be 'auto', 'cpu' or 'cuda', got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA device is visible"
        raise ParamError(
            f"device='cuda' was asked, but {why} (torch {torch.__version__}). Use device='auto' (a GPU "
            "when there is one, else the CPU) or device='cpu'."
        )
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def set_device(name: str) -> Any:
    """Make ``name`` this process's device (and its children's: they inherit ``$MUXL_DEVICE``)."""
    dev = resolve_device(name)
    os.environ["MUXL_DEVICE"] = name
    return dev


def device() -> Any:
    """The device training, evaluation and benchmarks use (``lib.setup(seed, device)`` chose it; default
    ``auto``)."""
    return resolve_device(os.environ.get("MUXL_DEVICE", "auto"))


def synchronize() -> None:
    """Wait for queued GPU work (a timing must include it); nothing on the CPU."""
    import torch

    if device().type == "cuda":
        torch.cuda.synchronize()


def to_device(batch: Any, dev: Any) -> Any:
    """A batch (mapping of tensors) on ``dev``."""
    return {k: (v.to(dev, non_blocking=True) if hasattr(v, "to") else v) for k, v in batch.items()}


def progress(iterable: Any = None, **kwargs: Any) -> Any:
    """A tqdm progress bar: a widget in JupyterLab; plain text under the runner (which streams the kernel's
    output to the terminal) and in a worker process whose output a parent relays (``$MUXL_PROGRESS=text``),
    refreshed at most every few seconds so a long run does not flood the log."""
    if os.environ.get("MUXL_RUN_BY") == "runner" or os.environ.get("MUXL_PROGRESS") == "text":
        from tqdm.std import (
            tqdm as text_tqdm,  # tqdm is a dependency of every notebook; utils stays light without it
        )

        kwargs.setdefault("mininterval", 5.0)
        kwargs.setdefault("ascii", True)
        return text_tqdm(iterable, **kwargs)
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)


def load_average() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages (runnable processes per core set), or ``None`` where the OS has
    none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def cpu_ticks(text: str | None = None) -> tuple[int, int] | None:
    """This machine's CPU time so far, in clock ticks: ``(stolen, total)`` from Linux ``/proc/stat`` (or
    ``text`` in its format), ``None`` where the OS does not say. *Stolen* time is time a virtual machine's
    CPUs were ready to run but the hypervisor ran someone else: what makes a shared cloud machine slower one
    hour than the next."""
    if text is None:
        try:
            text = Path("/proc/stat").read_text()
        except OSError:
            return None
    fields = text.split("\n", 1)[0].split()
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    ticks = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal (guest is in user)
    return ticks[7], sum(ticks)


def steal_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The share of the CPU time between two :func:`cpu_ticks` readings that the hypervisor took (stolen),
    or ``None`` if either is unknown or no time passed."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round((after[0] - before[0]) / (after[1] - before[1]), 4)


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
    """Which instructions low-precision speed depends on: AVX2, AVX-512, int8 dot products (VNNI), native
    bf16, Intel's AMX tile units (int8 and bf16 matrix multiplies that oneDNN and ONNX Runtime use).

    These machines differ (AMD Zen 4 has AVX-512 VNNI and BF16, Zen 3 only AVX2, some Intel Xeons AMX), and
    so do the speed-ups of int8 and bf16: every speed figure is reported next to :func:`isa`.
    """
    flags = set(cpu_flags() if flags is None else flags)
    return {
        "avx2": "avx2" in flags,
        "avx512": "avx512f" in flags,
        "int8_vnni": bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"}),
        "bf16": bool(flags & {"avx512_bf16", "amx_bf16"}),
        "amx": bool(flags & {"amx_int8", "amx_bf16"}),
    }


# AMD family 25 (0x19) holds two generations, told apart by the model number (AMD's revision guides)
ZEN_25 = {"Zen 3": (range(0x00, 0x10), range(0x20, 0x30), range(0x40, 0x60)),
          "Zen 4": (range(0x10, 0x20), range(0x60, 0x80), range(0xA0, 0xB0))}  # fmt: skip


def cpu_id(text: str | None = None) -> dict[str, Any]:
    """Vendor, family, model and model name of the first CPU in ``/proc/cpuinfo`` (``text``: its contents;
    empty if unknown)."""
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            return {}
    keys = {"vendor_id": "vendor", "cpu family": "family", "model": "model", "model name": "name"}
    out: dict[str, Any] = {}
    for line in text.splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key in keys:
            out[keys[key]] = int(value) if key in ("cpu family", "model") and value.isdigit() else value
        if not line.strip() and out:  # the first processor's block is enough
            break
    return out


def cpu_generation(text: str | None = None) -> str:
    """The CPU generation, e.g. ``"Zen 4"``: these machines differ by more than their flags (Zen 4 and Zen 5
    both have AVX-512 VNNI BF16; Zen 5's full-width units measured 2x Zen 4's int8 speed-up). AMD families 23
    (Zen, Zen 2), 25 (Zen 3 / Zen 4 by model) and 26 (Zen 5); otherwise vendor, family and model; ``""`` if
    unknown."""
    c = cpu_id(text)
    if not isinstance(c.get("family"), int):
        return ""
    family, model = c["family"], c.get("model", -1)
    if c.get("vendor") == "AuthenticAMD":
        if family == 26:
            return "Zen 5"
        if family == 25:
            return next((g for g, ranges in ZEN_25.items() if any(model in r for r in ranges)), "Zen 3/4")
        if family == 23:
            return "Zen 2" if model >= 0x30 else "Zen"
    vendor = {"GenuineIntel": "Intel", "AuthenticAMD": "AMD"}.get(c.get("vendor", ""), c.get("vendor", "CPU"))
    return f"{vendor} family {family} model {model}"


def isa(flags: Iterable[str] | None = None, generation: str | None = None) -> str:
    """A short name of the CPU class for speed figures: the generation and the instructions speed depends on,
    e.g. ``"Zen 4, AVX-512 VNNI BF16"`` or ``"Zen 3, AVX2"`` (this machine's generation unless ``flags`` are
    given: then only ``generation``, if any)."""
    s = cpu_support(flags)
    base = "AVX-512" if s["avx512"] else "AVX2" if s["avx2"] else "no AVX2"
    extra = [name for name, key in (("VNNI", "int8_vnni"), ("BF16", "bf16"), ("AMX", "amx")) if s[key]]
    label = " ".join([base, *extra])
    generation = cpu_generation() if flags is None and generation is None else generation
    return f"{generation}, {label}" if generation else label


def cpu_model() -> str:
    """The CPU's model name with its generation, family and model: virtual machines often name only the
    brand ("AMD EPYC"), which says nothing about the speed to expect."""
    c, generation = cpu_id(), cpu_generation()
    name = c.get("name") or platform.processor() or platform.machine()
    ident = f"family {c['family']} model {c.get('model', '?')}" if isinstance(c.get("family"), int) else ""
    parts = (generation,) if ident and ident in generation else (generation, ident)  # no model named twice
    extra = ", ".join(x for x in parts if x and x not in name)
    return f"{name} ({extra})" if extra else name


def cpu_label(cpu: str, isa_name: str) -> str:
    """One name for a speed figure from a record's ``cpu`` (:func:`cpu_model`) and ``isa`` (:func:`isa`), each
    part once: ``"AMD EPYC 9R14 (Zen 4, family 25 model 17, AVX-512 VNNI BF16)"``."""
    name, _, rest = cpu.partition(" (")
    parts = [p.strip() for p in (rest.rstrip(")").split(",") if rest else [])]
    for part in (p.strip() for p in isa_name.split(",")):
        if part and part not in parts:
            parts.append(part)
    return f"{name} ({', '.join(parts)})" if parts else name


def env_info() -> dict[str, Any]:
    import torch
    import transformers

    dev = device()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": str(dev),
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu": cpu_model(),
        "isa": isa(),
        "platform": platform.platform(),
    }


def umask() -> int:
    """The process's umask, read without changing it where Linux allows (``/proc/self/status``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)  # elsewhere: the classic read-by-setting (restored at once)
    os.umask(old)
    return old


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temp file name next to ``path`` to write; on success it becomes ``path`` (with the permissions
    a plain ``open()`` would give under the user's umask, not mkstemp's private 0600), on error it is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_text(path: Path | str, text: str) -> Path:
    """Write ``text`` to ``path`` via a temp file in the same folder and a rename: never half-written."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


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
    os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes it 0700: others could not read the saved model
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
