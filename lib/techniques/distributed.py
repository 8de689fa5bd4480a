"""Data-parallel training with PyTorch's own engine (torch.distributed, DDP, launched by torchrun).

The mechanism, in three pieces:

- :class:`ShardedBatches` cuts every *global* batch of ``B`` examples into ``world_size`` contiguous slices,
  one per rank: across the ranks every example of every global batch is seen exactly once (nothing dropped,
  nothing duplicated; torch's ``DistributedSampler`` pads by repeating examples instead). A rank whose slice
  of the last, short batch is empty gets one example with weight 0, so that every rank still joins the
  gradient all-reduce.
- :func:`scaled_loss`: each rank's loss is its examples' *sum* divided by the global batch size, times
  ``world_size``; DDP averages the gradients over the ranks, so the update equals one process's mean over
  ``B``.
- :func:`average_gradients`: what DDP does to the gradients, written out: each gradient, once complete in
  the backward pass, is summed over the ranks (``dist.all_reduce``) and divided by ``world_size``. The worker
  runs it instead of DDP with ``comm_hook="by_hand"``.
- :func:`main`, the worker ``torchrun`` starts (``python -m torch.distributed.run --nproc-per-node 2 -m
  lib.techniques.distributed --spec spec.json``): it joins the process group (gloo on CPU, nccl with CUDA),
  wraps the model in ``DistributedDataParallel`` and trains with the project's one loop,
  :func:`lib.train.fit`.

Workers live here, in an importable module: a function defined in a notebook cell cannot be started in a new
process (the child cannot import the kernel's ``__main__``). A notebook that edits :func:`scaled_loss` or
:func:`average_gradients` hands its own versions to the workers with :func:`write_mechanisms`: their source
goes to a file that every worker imports in place of this module's copies.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import inspect
import json
import os
import textwrap
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook
from torch.distributed.elastic.multiprocessing.errors import record
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from transformers import DataCollatorWithPadding
from transformers.utils import logging as hf_logging

from .. import launch as launcher
from ..data import Encoded, make_loader
from ..evaluate import in_dataset_order, predict_logits
from ..launch import LaunchError
from ..models import fresh_classifier, load_tokenizer
from ..predict import as_predictor
from ..train import TrainConfig, fit
from ..utils import atomic_path, atomic_write_json, atomic_write_text, num_threads, seed_everything
from ..verdict import speed_ratio

WEIGHT = (
    "_sample_weight"  # each example's share of its global batch's loss: 1/|global batch|, 0 for a stand-in
)


class ShardedBatches(Sampler[list[tuple[int, float]]]):
    """Rank ``rank``'s slice of each global batch: the global batches are a seeded shuffle of ``range(n)`` cut
    into ``batch_size`` pieces (the same on every rank), re-shuffled every epoch. Each index comes with its
    weight in the loss, ``1 / len(global batch)``: every rank knows the global batch, so no message is needed
    to average over it."""

    def __init__(self, n: int, batch_size: int, world_size: int = 1, rank: int = 0, seed: int = 0):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        if n < 1 or batch_size < 1:
            raise ValueError(
                f"need at least one example and a batch size >= 1, got n={n}, batch_size={batch_size}"
            )
        self.n, self.batch_size, self.world_size, self.rank, self.seed = n, batch_size, world_size, rank, seed
        self.epoch = 0

    def global_batches(self, epoch: int) -> list[list[int]]:
        order = np.random.default_rng(self.seed + epoch).permutation(self.n)
        return [order[i : i + self.batch_size].tolist() for i in range(0, self.n, self.batch_size)]

    def shard(self, batch: Sequence[int]) -> list[int]:
        return np.array_split(np.asarray(batch), self.world_size)[self.rank].tolist()

    def __iter__(self) -> Iterator[list[tuple[int, float]]]:
        batches = self.global_batches(self.epoch)
        self.epoch += 1  # the next pass over the data is a new shuffle, identical on every rank
        for batch in batches:
            mine = self.shard(batch)
            # an empty slice (last batch shorter than the world): one stand-in example with weight 0, so that
            # this rank still runs a backward pass and joins the gradient all-reduce
            yield [(i, 1.0 / len(batch)) for i in mine] if mine else [(batch[0], 0.0)]

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)


class _Weighted(torch.utils.data.Dataset):
    """The encoded examples, looked up by ``(index, weight)``."""

    def __init__(self, enc: Encoded):
        self.enc = enc

    def __len__(self) -> int:
        return len(self.enc)

    def __getitem__(self, item: tuple[int, float]) -> dict[str, Any]:
        i, weight = item
        return {**self.enc[i], WEIGHT: weight}


def sharded_loader(
    enc: Encoded, tokenizer: Any, batch_size: int, world_size: int, rank: int, seed: int
) -> DataLoader:
    """This rank's training batches (see :class:`ShardedBatches`), padded per batch."""
    pad = DataCollatorWithPadding(tokenizer, return_tensors="pt")

    def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
        weights = torch.tensor([it.pop(WEIGHT) for it in items], dtype=torch.float32)
        return {**pad(items), WEIGHT: weights}

    return DataLoader(
        _Weighted(enc),
        batch_sampler=ShardedBatches(len(enc), batch_size, world_size, rank, seed),
        collate_fn=collate,
    )


# @save
def scaled_loss(world_size: int):
    """A ``loss_fn`` for ``lib.train.fit``: each example's cross-entropy times its share of the *global* batch
    (``1/B``), summed over this rank's slice, times ``world_size``. DDP averages the gradients over the ranks
    (divides their sum by ``world_size``), so every rank applies the gradient of the mean loss over all ``B``
    examples: the very update one process with batch ``B`` makes."""

    def loss_fn(model: Any, batch: dict[str, Any]) -> torch.Tensor:
        batch = dict(batch)
        weights, labels = batch.pop(WEIGHT), batch.pop("labels")
        logits = model(**batch).logits
        logits = (
            logits if logits.dtype == torch.float64 else logits.float()
        )  # bf16 autocast -> fp32; fp64 stays
        per_example = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        return (per_example * weights.to(logits.dtype)).sum() * world_size

    return loss_fn


# @save
def average_gradients(model: Any, world_size: int) -> list[Any]:
    """What DDP does to the gradients, by hand: as soon as a parameter's gradient is complete in the
    backward pass, every rank adds its copy to every other rank's (``dist.all_reduce``: then all hold the
    sum) and divides by ``world_size``. All ranks then hold the same average and take the same step. One
    message per tensor: DDP packs them into buckets and sends while backward still runs. Returns the hooks'
    handles."""

    def average(param: torch.Tensor) -> None:
        dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
        param.grad /= world_size

    return [p.register_post_accumulate_grad_hook(average) for p in model.parameters() if p.requires_grad]


def write_mechanisms(folder: Path | str, *functions: Callable[..., Any]) -> str:
    """Write the source of ``functions`` (a notebook's own :func:`scaled_loss`, :func:`average_gradients`) to
    ``folder/mechanisms.py``; a worker given its path (spec ``mechanisms``) runs them instead of this module's
    copies. Returns the path."""
    unknown = [getattr(f, "__name__", repr(f)) for f in functions]
    unknown = [n for n in unknown if n not in ("scaled_loss", "average_gradients")]
    if unknown:
        raise LaunchError(
            f"a worker runs only scaled_loss and average_gradients, not {unknown}: "
            "give the edited cell's function one of those names"
        )
    try:
        sources = [textwrap.dedent(inspect.getsource(f)) for f in functions]
    except (OSError, TypeError) as e:
        raise LaunchError(
            f"cannot read the source of {functions}: define them in a cell or a file ({e})"
        ) from e
    header = (
        "from typing import Any\n\nimport torch\nimport torch.distributed as dist\n\n"
        "from lib.techniques.distributed import WEIGHT\n\n\n"
    )
    path = Path(folder) / "mechanisms.py"
    atomic_write_text(path, header + "\n\n".join(sources))
    return str(path)


def mechanisms(path: str | None) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """``(scaled_loss, average_gradients)``: those of the file a notebook wrote (:func:`write_mechanisms`),
    else this module's."""
    if not path:
        return scaled_loss, average_gradients
    spec = importlib.util.spec_from_file_location("notebook_mechanisms", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, "scaled_loss", scaled_loss), getattr(
        module, "average_gradients", average_gradients
    )


# ------------------------------------------------------------------------ communication

COMM_HOOKS = ("allreduce", "fp16", "powersgd", "by_hand")


def register_comm_hook(
    ddp: DistributedDataParallel, name: str, powersgd_rank: int = 4, powersgd_start: int = 2
) -> Any:
    """Install one of PyTorch's DDP communication hooks: ``allreduce`` (DDP's own averaging, as a Python hook
    so that it is counted like the others), ``fp16`` (gradients sent as float16: half the bytes) or
    ``powersgd`` (Vogels et al., 2019: each gradient matrix sent as a rank-``powersgd_rank`` factorisation,
    with error feedback; plain all-reduce for the first ``powersgd_start`` steps). Returns the hook's state.
    """
    if name == "allreduce":
        ddp.register_comm_hook(None, default_hooks.allreduce_hook)
        return None
    if name == "fp16":
        ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)
        return None
    if name == "powersgd":
        state = powerSGD_hook.PowerSGDState(
            process_group=None,
            matrix_approximation_rank=powersgd_rank,
            start_powerSGD_iter=max(2, powersgd_start),
        )
        ddp.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
        return state
    raise ValueError(f"comm hook must be one of {COMM_HOOKS}, got {name!r}")


class CountingAllReduce:
    """Counts what goes through ``torch.distributed.all_reduce`` while active (every DDP hook above calls it):
    calls and payload bytes, per training step (:meth:`next_step` marks where a step starts). The payload is
    what each rank contributes; a ring all-reduce moves ``2 (W-1)/W`` times it over each rank's link."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.bytes: list[int] = []
        self._original: Any = None

    def next_step(self) -> None:
        self.calls.append(0)
        self.bytes.append(0)

    def __enter__(self) -> CountingAllReduce:
        self._original = original = dist.all_reduce

        def counting(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if not self.calls:
                self.next_step()
            self.calls[-1] += 1
            self.bytes[-1] += tensor.numel() * tensor.element_size()
            return original(tensor, *args, **kwargs)

        dist.all_reduce = counting
        return self

    def __exit__(self, *exc: Any) -> None:
        dist.all_reduce = self._original

    def counted(self, loss_fn: Callable[[Any, dict], Any]) -> Callable[[Any, dict], Any]:
        """``loss_fn``, marking a new step each time it is called (once per step, before that step's
        backward)."""

        def loss(model: Any, batch: dict) -> Any:
            self.next_step()
            return loss_fn(model, batch)

        return loss


def bucket_cap_mb(model: Any, hook: str, asked: float | None = None) -> float | None:
    """DDP's gradient bucket size: ``asked``, else DDP's default (``None``: 25 MiB buckets, a 1 MiB first one,
    sent while backward still runs) -- except PowerSGD on gloo, which gets one bucket holding every gradient:
    its hook sends its later all-reduces from completion callbacks, and with several buckets in flight those
    reach gloo in a different order on different ranks (measured here: gloo aborts with ``op.preamble.length
    <= op.nbytes``)."""
    if asked:
        return asked
    if hook == "powersgd" and dist.is_initialized() and dist.get_backend() == "gloo":
        return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad) / 2**20 + 1
    return None


def allreduce_seconds(numel: int, repeats: int = 5, dtype: Any = torch.float32) -> float:
    """Median wall time of one all-reduce of ``numel`` elements over the current process group (after one
    warm-up): the communication of one step with nothing to overlap it."""
    buf = torch.ones(numel, dtype=dtype)
    times = []
    for i in range(repeats + 1):
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_reduce(buf)
        if i:
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def ddp_timing(ddp: DistributedDataParallel) -> dict[str, float]:
    """DDP's own measurements of a training step (sampled steps, averaged; seconds): forward, backward
    compute, backward communication and the part of it that overlapped backward compute."""
    data = ddp._get_ddp_logging_data()  # PyTorch's "prototype" logging interface: read it, never rely on it
    keys = {
        "forward": "avg_forward_compute_time",
        "backward_compute": "avg_backward_compute_time",
        "backward_comm": "avg_backward_comm_time",
        "overlap": "avg_backward_compute_comm_overlap_time",
    }
    return {name: data[key] / 1e9 for name, key in keys.items() if key in data}


def simulated_ranks_gap(
    model: Any,
    enc: Encoded,
    tokenizer: Any,
    loss_factory: Callable[[int], Any],
    batch_size: int,
    world_size: int,
    seed: int = 0,
) -> dict[str, float]:
    """Check the loss scaling in one process, without DDP: the gradient of the first global batch (one "rank"
    takes it all, ``loss_factory(1)``) against the average over ``world_size`` simulated ranks of each one's
    gradient on its slice (``loss_factory(world_size)``) -- what DDP's all-reduce computes. ``model`` is used
    in eval mode (no dropout), so the two must agree up to round-off."""
    model.eval()

    def grads(world: int, rank: int) -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        batch = next(iter(sharded_loader(enc, tokenizer, batch_size, world, rank, seed)))
        loss_factory(world)(model, batch).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    one = grads(1, 0)
    averaged = sum(grads(world_size, r) for r in range(world_size)) / world_size
    model.zero_grad(set_to_none=True)
    return {"max_abs_grad_diff": float((one - averaged).abs().max()), "max_abs_grad": float(one.abs().max())}


# ------------------------------------------------------------------------ evaluation


def sharded_logits(model: Any, loader: DataLoader, world_size: int, rank: int) -> np.ndarray | None:
    """Distributed evaluation: rank ``r`` predicts the evaluation batches ``r, r + W, r + 2W, ...`` (whole
    batches, so each is computed exactly as in one process), the ranks gather their logits, and rank 0 returns
    them all in dataset order (other ranks return ``None``)."""
    batches, call = list(loader), as_predictor(model)
    mine = {i: predict_logits(call, [batches[i]])[0] for i in range(rank, len(batches), world_size)}
    parts: list[dict[int, np.ndarray]] = [mine]
    if world_size > 1:
        parts = [None] * world_size  # type: ignore[list-item]
        dist.all_gather_object(parts, mine)
    if rank != 0:
        return None
    merged = {i: logits for part in parts for i, logits in part.items()}
    return in_dataset_order(loader, np.concatenate([merged[i] for i in range(len(batches))]))[0]


# ------------------------------------------------------------------------ beyond this machine

# Networks the scaling model is drawn for: nominal bandwidth (Gbit/s) and an assumed per-message latency (s).
NETWORKS = {
    "1 Gb/s Ethernet": (1.0, 50e-6),
    "10 Gb/s Ethernet": (10.0, 20e-6),
    "100 Gb/s (InfiniBand class)": (100.0, 5e-6),
}


def ring_allreduce_seconds(
    nbytes: float, workers: int, gbit_per_s: float, latency_s: float, messages: int = 1
) -> float:
    """Time of a ring all-reduce of ``nbytes`` per worker (Patarasuk & Yuan, 2009): a reduce-scatter then an
    all-gather, ``2 (W-1)`` rounds, each moving ``nbytes / W`` over every link at once. So every worker sends
    and receives ``2 (W-1)/W * nbytes`` -- almost independent of ``W`` -- and pays ``2 (W-1)`` latencies per
    message (``messages``: DDP sends one per gradient bucket)."""
    if workers <= 1:
        return 0.0
    return (
        2 * (workers - 1) / workers * nbytes * 8 / (gbit_per_s * 1e9)
        + 2 * (workers - 1) * latency_s * messages
    )


def scaling_model(
    compute_s: float,
    overlappable_s: float,
    batch_per_worker: int,
    payloads: dict[str, float],
    workers: Sequence[int] = (1, 2, 4, 8, 16, 32, 64),
    networks: dict[str, tuple[float, float]] = NETWORKS,
    messages: int = 1,
) -> pd.DataFrame:
    """Predicted step time, throughput and efficiency of data-parallel training on ``W`` identical workers.

    Assumptions (every one of them a simplification): each worker is one machine like the measured one, doing
    ``compute_s`` of work per step on its own ``batch_per_worker`` examples (weak scaling: the global batch
    grows with ``W``); the gradients (``payloads``: bytes per step per communication scheme) go through one
    ring all-reduce on a network delivering its nominal bandwidth, with the given per-message latency, no
    contention, no stragglers; communication overlaps at most ``overlappable_s`` of the compute (the backward
    pass, as DDP's buckets allow) -- the ``overlap`` column gives both ends: ``none`` (step = compute +
    communication) and ``backward`` (step = compute + the communication that does not fit under the backward
    pass). Efficiency = step time of one worker / step time of ``W`` workers; throughput = ``W *
    batch_per_worker`` / step time."""
    rows = []
    for net, (gbit, latency) in networks.items():
        for scheme, nbytes in payloads.items():
            for w in workers:
                comm = ring_allreduce_seconds(nbytes, w, gbit, latency, messages)
                for overlap, hidden in (("none", 0.0), ("backward", overlappable_s)):
                    step = compute_s + max(0.0, comm - hidden)
                    rows.append(
                        {
                            "network": net,
                            "scheme": scheme,
                            "overlap": overlap,
                            "workers": w,
                            "comm_s": comm,
                            "step_s": step,
                            "efficiency": compute_s / step,
                            "samples_per_s": w * batch_per_worker / step,
                        }
                    )
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------ launching


def torchrun_command(
    spec_path: Path | str | Sequence[Path | str], nproc: int, **rendezvous: Any
) -> list[str]:
    """The torchrun command for this worker on one spec, or several trained in turn
    (:func:`lib.launch.torchrun_command`: one machine, or several with ``nnodes``, ``node_rank`` and one
    ``rdzv_endpoint``)."""
    return launcher.torchrun_command(__name__, _spec_args(spec_path), nproc, **rendezvous)


def _spec_args(spec_path: Path | str | Sequence[Path | str]) -> list[str]:
    paths = [spec_path] if isinstance(spec_path, (str, Path)) else list(spec_path)
    return [arg for path in paths for arg in ("--spec", str(path))]


def launch(
    spec_path: Path | str,
    nproc: int,
    echo: Callable[[str], None] | None = print,
    threads: int | None = None,
    timeout: float | None = None,
    **rendezvous: Any,
) -> dict[str, Any]:
    """Run the worker on ``spec_path`` under torchrun (:func:`lib.launch.launch`: output streamed to ``echo``,
    a failing rank raises a :class:`~lib.launch.LaunchError` with its own error) and return rank 0's stats."""
    launcher.launch(
        __name__, _spec_args(spec_path), nproc, echo=echo, threads=threads, timeout=timeout, **rendezvous
    )
    out = Path(json.loads(Path(spec_path).read_text())["out"])
    return json.loads((out / "stats.json").read_text())


def run(
    name: str,
    spec: dict[str, Any],
    nproc: int,
    work: Path | str,
    threads: int | None = None,
    echo: Callable[[str], None] | None = print,
    timeout: float | None = None,
    **rendezvous: Any,
) -> dict[str, Any]:
    """Launch one training run: :func:`run_all` of ``{name: spec}``."""
    return run_all({name: spec}, nproc, work, threads, echo, timeout, **rendezvous)[name]


def run_all(
    specs: Mapping[str, dict[str, Any]],
    nproc: int,
    work: Path | str,
    threads: int | None = None,
    echo: Callable[[str], None] | None = print,
    timeout: float | None = None,
    **rendezvous: Any,
) -> dict[str, dict[str, Any]]:
    """Launch several training runs on the same ranks, one after the other in one torchrun (its start, the
    imports and the process group are paid once: ~12 s a launch here): each spec goes to
    ``work/<name>/spec.json``, its results to ``work/<name>/``; returns each run's rank-0 stats with ``out``
    (the folder). Unknown spec keys are refused here, before any process starts."""
    unknown = sorted({k for spec in specs.values() for k in spec} - set(SPEC_KEYS) - {"out"})
    if unknown:
        raise LaunchError(f"unknown spec keys {unknown}; known: {sorted(SPEC_KEYS)}")
    paths = []
    for name, spec in specs.items():
        out = Path(work) / name
        out.mkdir(parents=True, exist_ok=True)
        (out / "stats.json").unlink(missing_ok=True)  # a re-run never reads the previous run's numbers
        paths.append(atomic_write_json(out / "spec.json", {**spec, "out": str(out)}))
    if echo is not None:
        echo(f"[{', '.join(specs)}] {' '.join(torchrun_command(paths, nproc, **rendezvous)[1:])}")
    launcher.launch(
        __name__, _spec_args(paths), nproc, echo=echo, threads=threads, timeout=timeout, **rendezvous
    )
    outs = {name: Path(work) / name for name in specs}
    return {
        name: {**json.loads((out / "stats.json").read_text()), "out": str(out)} for name, out in outs.items()
    }


def load_weights(out: Path | str, model: Any) -> Any:
    """``model`` (the same architecture) with the weights a run saved in ``out``."""
    model.load_state_dict(load_file(Path(out) / "weights.safetensors"))
    return model.eval()


def max_weight_diff(a: Path | str, b: Path | str) -> tuple[float, str]:
    """The largest |difference| between the weights two runs saved, and the tensor it is in."""
    wa, wb = load_file(Path(a) / "weights.safetensors"), load_file(Path(b) / "weights.safetensors")
    diffs = {k: float((wa[k].double() - wb[k].double()).abs().max()) for k in wa}
    worst = max(diffs, key=diffs.__getitem__)
    return diffs[worst], worst


def step_table(stats: dict[str, dict[str, Any]], reference: str, warmup: int = 2) -> pd.DataFrame:
    """One row per run: ranks, threads, hook, median step time (after ``warmup`` steps) and its spread,
    throughput and its ratio to ``reference`` (with ``speedup_low``/``speedup_high``, its 95% bootstrap
    interval: :func:`lib.verdict.speed_ratio`), DDP's split of a step, and the all-reduce payload per step."""
    rows = {}
    for name, st in stats.items():
        steps = np.asarray(st["step_seconds"][warmup:] or st["step_seconds"], dtype=float)
        step = float(np.median(steps))
        t = st.get("ddp_timing", {})
        comm, overlap = t.get("backward_comm"), t.get("overlap")
        exposed = max(0.0, comm - overlap) if comm is not None and overlap is not None else 0.0
        row = {
            "world_size": st["world_size"],
            "threads_per_rank": st["threads_per_rank"],
            "comm_hook": st.get("comm_hook") or "-",
            "steps": st["steps"],
            "step_s": step,
            "step_spread": float((np.percentile(steps, 75) - np.percentile(steps, 25)) / step),
            "samples_per_s": st["batch_size"] / step,
            "forward_s": t.get("forward"),
            "backward_s": t.get("backward_compute"),
            "comm_s": comm,
            "overlap_s": overlap,
            "exposed_comm_s": exposed if t else None,
            "mb_per_step": st["allreduce_bytes_per_step"] / 1e6,
        }
        if t:
            row["other_s"] = max(0.0, step - t["forward"] - t["backward_compute"] - exposed)
        else:
            row["other_s"] = step  # no DDP: the whole step is compute (not split further)
        rows[name] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table["speedup_vs_reference"] = table["samples_per_s"] / table.loc[reference, "samples_per_s"]
    # the noise of each speed-up: a bootstrap over the timed steps (time per sample: batches may differ)
    per_sample = {
        n: np.asarray(st["step_seconds"][warmup:] or st["step_seconds"], dtype=float) / st["batch_size"]
        for n, st in stats.items()
    }
    for name, seconds in per_sample.items():
        enough = min(len(seconds), len(per_sample[reference])) >= 2
        r = speed_ratio(per_sample[reference], seconds) if enough else {"low": np.nan, "high": np.nan}
        table.loc[name, ["speedup_low", "speedup_high"]] = r["low"], r["high"]
    return table


# ------------------------------------------------------------------------ the worker

SPEC_KEYS = {
    "model": "model spec (lib.models.load_model): packaged MiniLM, a folder, an HF id or tiny-bert",
    "num_labels": "classes",
    "pooling": "mean | cls",
    "features": "JSON file of tokenized training examples",
    "batch_size": "GLOBAL batch: split over the ranks",
    "steps": "optimizer steps",
    "learning_rate": "AdamW peak rate",
    "warmup_frac": "share of steps warming up (default 0)",
    "seed": "data order, initialisation",
    "out": "folder for weights.safetensors, stats.json, eval_logits.npy",
    "no_dropout": "turn dropout off",
    "threads": "torch threads per rank (default: OMP_NUM_THREADS, else cores / ranks on this machine)",
    "device": "auto | cpu | cuda",
    "max_grad_norm": "gradient clipping (default 1.0)",
    "comm_hook": f"one of {COMM_HOOKS} (default allreduce; by_hand: average_gradients, no DDP)",
    "mechanisms": "a .py file whose scaled_loss / average_gradients replace lib's (write_mechanisms)",
    "powersgd_rank": "PowerSGD matrix rank (default 4)",
    "powersgd_start": "PowerSGD: steps of plain all-reduce first (default 2, the least PyTorch allows)",
    "dtype": "float32 | float64 (the equivalence proof: no round-off for Adam to amplify)",
    "bucket_cap_mb": "DDP gradient bucket size (default: DDP's; PowerSGD on gloo: one bucket)",
    "eval_features": "JSON file of tokenized test examples: sharded evaluation after training",
    "eval_batch_size": "evaluation batch (default 64)",
    "allreduce_repeats": "timed all-reduces of the gradients alone after training (default 5; 0 skips)",
    "fail_on_rank": "for tests: this rank raises at start",
}


@record  # on a crash, torchrun's summary shows this worker's own traceback (not just "exit code 1")
def main(argv: Sequence[str] | None = None) -> None:
    """One rank of a data-parallel training run; ``torchrun`` sets RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR/PORT."""
    ap = argparse.ArgumentParser(
        prog="python -m lib.techniques.distributed",
        epilog="spec keys: " + "; ".join(f"{k}: {v}" for k, v in SPEC_KEYS.items()),
    )
    ap.add_argument(
        "--spec",
        required=True,
        action="append",
        help="JSON file with a run's settings (keys below); several: trained in turn, in one process group",
    )
    specs = [json.loads(Path(path).read_text()) for path in ap.parse_args(argv).spec]
    unknown = sorted({k for spec in specs for k in spec} - set(SPEC_KEYS))
    if unknown:
        raise ValueError(f"unknown spec keys {unknown}; known: {sorted(SPEC_KEYS)}")
    spec = specs[0]  # the device and the failure test are the launch's: its first spec says
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    # nccl needs a GPU per rank; otherwise the ranks run on the CPU with gloo
    cuda = (
        spec.get("device", "auto") != "cpu"
        and torch.cuda.is_available()
        and torch.cuda.device_count() >= local_world
    )
    if spec.get("device") == "cuda" and not cuda:
        raise RuntimeError(
            f"device='cuda' needs one GPU per rank on each machine: {torch.cuda.device_count()} visible, "
            f"{local_world} ranks here (fewer ranks, or device='auto' to run them on the CPU)"
        )
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    os.environ["MUXL_DEVICE"] = "cuda" if cuda else "cpu"  # lib.train.fit and the predictors run there
    if rank == spec.get("fail_on_rank"):  # for the failure test: a worker that crashes
        raise RuntimeError(f"worker {rank} failed on purpose (spec fail_on_rank={rank})")
    hf_logging.disable_progress_bar()  # every rank would draw transformers' weight-loading bar
    for one in specs:  # a launch's start (torchrun, imports, the process group) is paid once
        train_one(one, rank, world, local_world, cuda)
    if world > 1:
        leave_group()


def train_one(spec: dict[str, Any], rank: int, world: int, local_world: int, cuda: bool) -> None:
    """One training run of a launch, in its process group: train, time, evaluate, and (rank 0) write the
    weights and ``stats.json`` to the spec's ``out``."""
    threads = int(
        spec.get("threads") or os.environ.get("OMP_NUM_THREADS") or max(1, num_threads() // local_world)
    )
    torch.set_num_threads(threads)
    seed_everything(spec["seed"])
    model = fresh_classifier(
        spec["model"], spec["num_labels"], pooling=spec.get("pooling", "cls"), seed=spec["seed"]
    )
    if spec.get("dtype", "float32") == "float64":  # the equivalence proof: round-off far below what it tests
        model = model.double()
    if spec.get(
        "no_dropout"
    ):  # for the equivalence proof: each rank draws its own dropout masks (same law, new values)
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    tokenizer = load_tokenizer(spec["model"])
    enc = Encoded.from_features(json.loads(Path(spec["features"]).read_text()))
    loader = sharded_loader(enc, tokenizer, spec["batch_size"], world, rank, spec["seed"])
    cfg = TrainConfig(
        num_epochs=max(1, -(-spec["steps"] // len(loader))),
        max_steps=spec["steps"],
        learning_rate=spec["learning_rate"],
        seed=spec["seed"],
        keep_best=False,
        warmup_frac=spec.get("warmup_frac", 0.0),
        progress=rank == 0,
        max_grad_norm=spec.get("max_grad_norm", 1.0),
    )
    hook = spec.get("comm_hook", "allreduce")
    loss_of, average = mechanisms(spec.get("mechanisms"))
    wrapped: dict[str, Any] = {}

    def wrap(net: Any, optimizer: Any, train_loader: Any) -> tuple[Any, Any, Any]:
        if world == 1:
            return net, optimizer, train_loader
        if hook == "by_hand":  # no DDP: the gradients are averaged by average_gradients' hooks
            wrapped["handles"] = average(net, world)
            return net, optimizer, train_loader
        ddp = DistributedDataParallel(net, bucket_cap_mb=bucket_cap_mb(net, hook, spec.get("bucket_cap_mb")))
        ddp._set_ddp_runtime_logging_sample_rate(
            1
        )  # DDP times every step (its default: 1 in 100 after the 10th)
        wrapped.update(
            ddp=ddp,
            state=register_comm_hook(ddp, hook, spec.get("powersgd_rank", 4), spec.get("powersgd_start", 2)),
        )
        return ddp, optimizer, train_loader

    counter = CountingAllReduce()
    t0 = time.perf_counter()
    with counter:
        hist = fit(model, loader, None, cfg, loss_fn=counter.counted(loss_of(world)), prepare=wrap)
    seconds = time.perf_counter() - t0
    timing, compression = {}, None
    if "ddp" in wrapped:
        timing = ddp_timing(wrapped["ddp"])
        state = wrapped["state"]
        if state is not None and state.total_numel_after_compression:
            compression = state.compression_stats()[0]
    for handle in wrapped.get("handles", []):
        handle.remove()
    wrapped.clear()  # drop DDP now: its reducer holds the process group, which must not outlive leave_group()
    gc.collect()
    losses = (
        hist.step_losses
    )  # this rank's share of each step's loss; their mean over the ranks is the global loss
    if world > 1:
        shares: list[list[float]] = [None] * world  # type: ignore[list-item]
        dist.all_gather_object(shares, losses)
        losses = np.mean(np.asarray(shares, dtype=float), axis=0).tolist()
    steps = len(hist.step_losses)
    plain = max(2, spec.get("powersgd_start", 2)) if hook == "powersgd" else 0
    steady = (
        counter.bytes[plain:] or counter.bytes
    )  # the steady state: after PowerSGD's plain all-reduce steps
    grad_numel = sum(p.numel() for p in model.parameters() if p.requires_grad)
    stats: dict[str, Any] = {
        "world_size": world,
        "batch_size": spec["batch_size"],
        "threads_per_rank": threads,
        "device": "cuda" if cuda else "cpu",
        "steps": steps,
        "seconds": seconds,
        "losses": losses,
        "step_seconds": hist.step_seconds,
        "samples_per_s": hist.samples * world / hist.train_seconds if hist.train_seconds else None,
        "backend": dist.get_backend() if world > 1 else None,
        "comm_hook": hook if world > 1 else None,
        "mechanisms": spec.get("mechanisms") or "lib",  # whose scaled_loss / average_gradients ran
        "grad_numel": grad_numel,
        "grad_bytes_fp32": grad_numel * 4,
        # measured: what went through all_reduce in each training step (PowerSGD's first steps are plain
        # all-reduce)
        "allreduce_calls": counter.calls,
        "allreduce_bytes": counter.bytes,
        "allreduce_bytes_per_step": float(np.median(steady)) if steady else 0.0,
    }
    if timing:
        stats["ddp_timing"] = timing
    if compression is not None:
        stats["powersgd_compression_rate"] = compression
    if world > 1 and spec.get("allreduce_repeats", 5):
        stats["allreduce_seconds_fp32"] = allreduce_seconds(grad_numel, spec.get("allreduce_repeats", 5))
    if spec.get("eval_features"):
        test = Encoded.from_features(json.loads(Path(spec["eval_features"]).read_text()))
        t1 = time.perf_counter()
        logits = sharded_logits(
            model, make_loader(test, tokenizer, spec.get("eval_batch_size", 64), shuffle=False), world, rank
        )
        stats["eval_seconds"] = time.perf_counter() - t1
        if logits is not None:
            with atomic_path(Path(spec["out"]) / "eval_logits.npy") as tmp:
                with open(tmp, "wb") as fh:
                    np.save(fh, logits)
    if rank == 0:
        out = Path(spec["out"])
        with atomic_path(out / "weights.safetensors") as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, tmp)
        atomic_write_json(out / "stats.json", stats)  # written last: its presence means the run finished


def leave_group() -> None:
    """Destroy the process group without gloo's teardown deadlock: destroying a gloo group holds the GIL and
    waits for gloo's worker threads, while a worker thread may still be freeing the last collective's tensors,
    for which it needs the GIL (pytorch/pytorch#56297; seen here once in CI: a rank hung for ever after its
    last all_gather). So: a barrier (every rank is done with every collective), a pause with the GIL released
    for those threads, then the destruction."""
    dist.barrier()
    time.sleep(0.2)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
