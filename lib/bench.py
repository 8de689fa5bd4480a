"""Benchmarks: size, inference latency and throughput, peak memory — compared side by side.

Rules every number here follows:

- one fixed probe set (the first ``probe_size`` test examples), the same for every model;
- latency at batch 1 (each example alone, p50 and p90) and throughput at batch 32 (samples/s);
- models compared in the same process, *interleaved*: after a warm-up, each repeat times every model once
  (the order rotates between repeats), and the reported value is the median over repeats;
- speed is reported as a ratio to the reference model measured in that same run.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import torch
from safetensors.torch import save_model
from transformers import DataCollatorWithPadding

from .data import Encoded
from .models import count_params
from .predict import Predictor, as_predictor
from .runner.records import MAX_SPREAD
from .utils import device, load_average, progress, synchronize


@dataclass
class Probe:
    """Fixed inputs for benchmarking: single examples (batch 1) and batches of ``batch_size``."""

    singles: list[dict]
    batches: list[dict]
    batch_size: int

    @property
    def n_batched(self) -> int:
        return sum(int(b["input_ids"].shape[0]) for b in self.batches)


def make_probe(enc: Encoded, tokenizer: Any, size: int = 64, batch_size: int = 32) -> Probe:
    """The first ``size`` examples of ``enc`` (use the test split) as batch-1 and batch-32 inputs."""
    collate = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    feats = [{k: v for k, v in enc[i].items() if k != "labels"} for i in range(min(size, len(enc)))]
    singles = [collate([f]) for f in feats]
    batches = [collate(feats[i : i + batch_size]) for i in range(0, len(feats), batch_size)]
    return Probe(singles, batches, batch_size)


def _time_pass(predictor: Predictor, probe: Probe) -> tuple[list[float], float]:
    lat = []
    for x in probe.singles:
        synchronize()
        t0 = time.perf_counter()
        predictor(x)
        synchronize()  # on a GPU, the work queued by this call is part of its time
        lat.append(time.perf_counter() - t0)
    synchronize()
    t0 = time.perf_counter()
    for b in probe.batches:
        predictor(b)
    synchronize()
    return lat, probe.n_batched / (time.perf_counter() - t0)


def compare(
    predictors: Mapping[str, Any],
    probe: Probe,
    repeats: int = 5,
    reference: str | None = None,
    warmup: int = 1,
) -> pd.DataFrame:
    """Measure every predictor interleaved on ``probe``; one row per model, ratios to ``reference``.

    Columns: ``latency_ms_b1_p50``, ``latency_ms_b1_p90``, ``throughput_b32`` (samples/s),
    ``speedup_vs_reference`` (throughput ratio), ``latency_ratio_vs_reference`` (p50 ratio, <1 is faster), and
    each ratio's noise: ``speedup_low``/``speedup_high`` and ``latency_ratio_low``/``latency_ratio_high``, the
    lowest and highest ratio of one repeat (:func:`lib.verdict.faster` turns them into a word).
    """
    preds = {name: as_predictor(p) for name, p in predictors.items()}
    names = list(preds)
    reference = reference or names[0]
    load_before = load_average()
    bar = progress(total=(warmup + repeats) * len(names), desc="benchmark", unit="pass", leave=False)
    for _ in range(warmup):
        for name in names:
            _time_pass(preds[name], probe)
            bar.update(1)
    p50: dict[str, list[float]] = {n: [] for n in names}
    p90: dict[str, list[float]] = {n: [] for n in names}
    thr: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate: no model always goes first
        for name in order:
            lat, tput = _time_pass(preds[name], probe)
            p50[name].append(float(np.percentile(lat, 50)) * 1000)
            p90[name].append(float(np.percentile(lat, 90)) * 1000)
            thr[name].append(tput)
            bar.update(1)
    bar.close()
    load = [max(a, b) for a, b in zip(load_before, load_average())] if load_before else None
    rows = []
    for name in names:
        med = float(np.median(thr[name]))
        spread = float((max(thr[name]) - min(thr[name])) / med) if med else None
        rows.append(
            {
                "name": name,
                "latency_ms_b1_p50": float(np.median(p50[name])),
                "latency_ms_b1_p90": float(np.median(p90[name])),
                "throughput_b32": med,
                "throughput_spread": spread,  # (max - min) / median over the repeats
                "load_average": load[0] if load else None,  # 1-minute load while measuring (cores busy)
                "unsteady": bool(spread is not None and spread > MAX_SPREAD),
            }
        )
    df = pd.DataFrame(rows).set_index("name")
    df["speedup_vs_reference"] = df["throughput_b32"] / df.loc[reference, "throughput_b32"]
    df["latency_ratio_vs_reference"] = df["latency_ms_b1_p50"] / df.loc[reference, "latency_ms_b1_p50"]
    # the noise of each ratio: the repeats are interleaved, so repeat r of a model and of the reference ran
    # side by side; the lowest and highest of the per-repeat ratios bound the median ratio (lib.verdict)
    for col, per_repeat in (("speedup", thr), ("latency_ratio", p50)):
        ratios = np.asarray([per_repeat[n] for n in names]) / np.asarray(per_repeat[reference])
        df[f"{col}_low"], df[f"{col}_high"] = ratios.min(axis=1), ratios.max(axis=1)
    df.attrs.update(
        reference=reference,
        repeats=repeats,
        probe_size=len(probe.singles),
        batch_size=probe.batch_size,
        threads=_threads(),
        load_average=load,
        device=str(device()),
    )
    busy = load is not None and load[0] > (os.cpu_count() or 1) + 0.5
    if df["unsteady"].any() or busy:
        warnings.warn(
            f"speed figures may not be trustworthy: repeat spread {df['throughput_spread'].max():.0%} "
            f"(flagged above "
            f"{MAX_SPREAD:.0%}), load average {load[0] if load else '?'} on {os.cpu_count()} cores. Another "
            f"program is "
            "using the CPU: close it and re-run this cell.",
            RuntimeWarning,
            stacklevel=2,
        )
    return df


def _threads() -> int:
    return torch.get_num_threads()


def training_table(runs: Mapping[str, Mapping[str, Any]], n_train: int) -> pd.DataFrame:
    """Side-by-side training speed and memory of :func:`lib.train.training_speed` runs (the first is the
    reference): samples/s, peak memory, minutes per epoch of ``n_train`` examples, speed-up against the first.
    """
    df = (
        pd.DataFrame(runs)
        .T[["trainable_params", "trainable_pct", "samples_per_s", "peak_mem_mb", "peak_mem_delta_mb"]]
        .astype(float)
    )
    df["minutes_per_epoch"] = n_train / df["samples_per_s"] / 60
    df["speedup_vs_reference"] = df["samples_per_s"] / df["samples_per_s"].iloc[0]
    return df


# ------------------------------------------------------------------------ size


def serialized_mb(model: Any) -> float:
    """Size in MB (10^6 bytes) of the model's weights saved as safetensors."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        save_model(model, str(path))
        return path.stat().st_size / 1e6


def size_info(model: Any) -> dict[str, float]:
    return {"num_params": count_params(model), "size_mb": serialized_mb(model)}


# ------------------------------------------------------------------------ memory


class PeakMemory:
    """Context manager sampling this process's resident memory (RSS) to find the peak during a block.

    ``peak_mb`` is the highest RSS seen; ``delta_mb`` is that minus the RSS when the block started.
    Sampling every 20 ms can miss a shorter spike; good enough for training steps that take 0.5 s+.
    """

    def __init__(self, interval: float = 0.02):
        self._proc = psutil.Process(os.getpid())
        self.interval = interval
        self.start_mb = self.peak_mb = 0.0
        self._stop = threading.Event()

    def _rss(self) -> float:
        return self._proc.memory_info().rss / 2**20

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, self._rss())

    def __enter__(self) -> PeakMemory:
        self.start_mb = self.peak_mb = self._rss()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self._rss())

    @property
    def delta_mb(self) -> float:
        return self.peak_mb - self.start_mb


# ------------------------------------------------------------------------ isolation


def isolated(fn: Callable[..., Any], **kwargs: Any) -> Any:
    """Run ``fn(**kwargs)`` in a fresh Python process and return its result.

    For memory numbers that must not inherit this process's allocator state (a process's peak RSS never goes
    down, and freed memory is reused): each measurement starts from the same clean slate. ``fn`` must be
    importable (a module-level function in ``lib``). Runs one process at a time: never two trainings at once.

    Each process is forked from a *fork server*: a clean process started once (per kernel) that has only
    imported ``fn``'s module and those of the callables among ``kwargs``. Importing torch and transformers
    costs ~5 s of CPU here; a spawned process paid it on every call. The server never builds a model or
    touches CUDA, so each child is still a clean slate (and may use CUDA).
    """
    ctx = mp.get_context("forkserver")
    modules = {fn.__module__} | {v.__module__ for v in kwargs.values() if callable(v)}
    ctx.set_forkserver_preload(sorted(modules))  # (it applies when the server starts: at the first call)
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(fn, **kwargs).result()
