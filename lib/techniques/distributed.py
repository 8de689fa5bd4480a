"""Data-parallel training with PyTorch's own engine (torch.distributed, DDP, launched by torchrun).

The mechanism, in three pieces:

- :class:`ShardedBatches` cuts every *global* batch of ``B`` examples into ``world_size`` contiguous slices, one per
  rank: across the ranks every example of every global batch is seen exactly once (nothing dropped, nothing
  duplicated; torch's ``DistributedSampler`` pads by repeating examples instead). A rank whose slice of the last,
  short batch is empty gets one example with weight 0, so that every rank still joins the gradient all-reduce.
- :func:`scaled_loss`: each rank's loss is its examples' *sum* divided by the global batch size, times
  ``world_size``; DDP averages the gradients over the ranks, so the update equals one process's mean over ``B``.
- :func:`main`, the worker ``torchrun`` starts (``python -m torch.distributed.run --nproc-per-node 2 -m
  lib.techniques.distributed --spec spec.json``): it joins the process group (gloo on CPU, nccl with CUDA), wraps the
  model in ``DistributedDataParallel`` and trains with the project's one loop, :func:`lib.train.fit`.

Workers live here, in an importable module: a function defined in a notebook cell cannot be started in a new
process (the child cannot import the kernel's ``__main__``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.distributed.elastic.multiprocessing.errors import record
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from transformers import DataCollatorWithPadding

from ..data import Encoded
from ..errors import LabError
from ..models import fresh_classifier, load_tokenizer
from ..train import TrainConfig, fit
from ..utils import num_threads, seed_everything

WEIGHT = "_sample_weight"  # a per-example weight the collate adds: 0 for a stand-in on an empty slice


class ShardedBatches(Sampler[list[int]]):
    """Rank ``rank``'s slice of each global batch: the global batches are a seeded shuffle of ``range(n)`` cut into
    ``batch_size`` pieces (the same on every rank), re-shuffled every epoch."""

    def __init__(self, n: int, batch_size: int, world_size: int = 1, rank: int = 0, seed: int = 0):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.n, self.batch_size, self.world_size, self.rank, self.seed = n, batch_size, world_size, rank, seed
        self.epoch = 0

    def global_batches(self, epoch: int) -> list[list[int]]:
        order = np.random.default_rng(self.seed + epoch).permutation(self.n)
        return [order[i:i + self.batch_size].tolist() for i in range(0, self.n, self.batch_size)]

    def shard(self, batch: Sequence[int]) -> list[int]:
        return np.array_split(np.asarray(batch), self.world_size)[self.rank].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.global_batches(self.epoch)
        self.epoch += 1  # the next pass over the data is a new shuffle, identical on every rank
        for batch in batches:
            mine = self.shard(batch)
            yield mine if mine else [-1 - batch[0]]  # empty slice: a stand-in (index encoded negative), weight 0

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)


class _Indexed(torch.utils.data.Dataset):
    """The encoded examples, where index ``-1 - i`` stands for example ``i`` with weight 0."""

    def __init__(self, enc: Encoded):
        self.enc = enc

    def __len__(self) -> int:
        return len(self.enc)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.enc[i if i >= 0 else -1 - i], WEIGHT: 1.0 if i >= 0 else 0.0}


def sharded_loader(enc: Encoded, tokenizer: Any, batch_size: int, world_size: int, rank: int, seed: int) -> DataLoader:
    """This rank's training batches (see :class:`ShardedBatches`), padded per batch."""
    pad = DataCollatorWithPadding(tokenizer, return_tensors="pt")

    def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
        weights = torch.tensor([it.pop(WEIGHT) for it in items])
        return {**pad(items), WEIGHT: weights}

    return DataLoader(_Indexed(enc), batch_sampler=ShardedBatches(len(enc), batch_size, world_size, rank, seed),
                      collate_fn=collate)


def scaled_loss(global_batch: int, world_size: int):
    """A ``loss_fn`` for :func:`lib.train.fit`: this rank's summed cross-entropy over the global batch size, times the
    world size (DDP then averages over the ranks: the mean over the global batch, as in one process)."""

    def loss_fn(model: Any, batch: dict[str, Any]) -> torch.Tensor:
        batch = dict(batch)
        weights = batch.pop(WEIGHT)
        labels = batch.pop("labels")
        logits = model(**batch).logits
        per_example = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="none")
        n = torch.tensor(float(weights.sum()))
        if world_size > 1:  # the real size of this global batch (the last one may be short)
            dist.all_reduce(n)
        return (per_example * weights).sum() / n * world_size

    return loss_fn


# ---------------------------------------------------------------------------------------------- launching

class LaunchError(LabError, RuntimeError):
    """A torchrun launch failed; the message carries the failing worker's own error."""


def free_port() -> int:
    """A TCP port nobody listens on now (the OS picks it), for a rendezvous on this machine."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(spec_path: Path | str, nproc: int, nnodes: int = 1, node_rank: int = 0,
                     rdzv_endpoint: str | None = None, rdzv_id: str = "muxl") -> list[str]:
    """The torchrun command for this worker. One machine: ``--standalone`` (a free port is chosen). Several: every
    machine runs the same command with its own ``node_rank`` and the same ``rdzv_endpoint`` (``host:port`` of one of
    them; c10d rendezvous). With gloo across machines, set ``GLOO_SOCKET_IFNAME`` to the network interface: the
    hostname often resolves to 127.0.1.1."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
    if nnodes == 1 and rdzv_endpoint is None:
        cmd.append("--standalone")
    else:
        cmd += ["--nnodes", str(nnodes), "--node-rank", str(node_rank), "--rdzv-backend", "c10d",
                "--rdzv-endpoint", rdzv_endpoint or f"127.0.0.1:{free_port()}", "--rdzv-id", rdzv_id]
    return cmd + ["-m", __name__, "--spec", str(spec_path)]


def launch(spec_path: Path | str, nproc: int, **rendezvous: Any) -> dict[str, Any]:
    """Run the worker under torchrun and return rank 0's stats; a :class:`LaunchError` with the failing worker's
    error if any rank fails (torchrun then stops the others)."""
    done = subprocess.run(torchrun_command(spec_path, nproc, **rendezvous), capture_output=True, text=True)
    if done.returncode != 0:
        raise LaunchError(f"torchrun failed (exit {done.returncode}): {worker_error(done.stdout + done.stderr)}")
    out = Path(json.loads(Path(spec_path).read_text())["out"])
    return json.loads((out / "stats.json").read_text())


def worker_error(stderr: str) -> str:
    """The failing worker's exception line from torchrun's output (its last ``SomethingError: ...`` line)."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ": " in ln and ln.split(": ", 1)[0].split(".")[-1].endswith(("Error", "Exception"))
              and "ChildFailedError" not in ln]
    return errors[-1] if errors else (lines[-1] if lines else "no output")


# ---------------------------------------------------------------------------------------------- the worker

@record  # on a crash, torchrun's summary shows this worker's own traceback (not just "exit code 1")
def main(argv: Sequence[str] | None = None) -> None:
    """One rank of a data-parallel training run; ``torchrun`` sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT."""
    ap = argparse.ArgumentParser(prog="python -m lib.techniques.distributed")
    ap.add_argument("--spec", required=True, help="JSON: model, num_labels, pooling, features (JSON file), "
                    "batch_size (global), steps, learning_rate, seed, out (folder)")
    spec = json.loads(Path(ap.parse_args(argv).spec).read_text())
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    cuda = torch.cuda.is_available() and spec.get("device", "auto") != "cpu"
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    torch.set_num_threads(int(spec.get("threads") or max(1, num_threads() // world)))
    if rank == spec.get("fail_on_rank"):  # for the failure test: a worker that crashes
        raise RuntimeError(f"worker {rank} failed on purpose (spec fail_on_rank={rank})")
    seed_everything(spec["seed"])
    model = fresh_classifier(spec["model"], spec["num_labels"], pooling=spec.get("pooling", "cls"), seed=spec["seed"])
    if spec.get("no_dropout"):  # for the equivalence proof: each rank draws its own dropout masks (same law, new values)
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    tokenizer = load_tokenizer(spec["model"])
    enc = Encoded.from_features(json.loads(Path(spec["features"]).read_text()))
    loader = sharded_loader(enc, tokenizer, spec["batch_size"], world, rank, spec["seed"])
    cfg = TrainConfig(num_epochs=max(1, -(-spec["steps"] // len(loader))), max_steps=spec["steps"],
                      learning_rate=spec["learning_rate"], seed=spec["seed"], keep_best=False, warmup_frac=0.0,
                      progress=rank == 0, max_grad_norm=spec.get("max_grad_norm", 1.0))

    def wrap(net: Any, optimizer: Any, train_loader: Any) -> tuple[Any, Any, Any]:
        return (DistributedDataParallel(net) if world > 1 else net), optimizer, train_loader

    t0 = time.perf_counter()
    hist = fit(model, loader, None, cfg, loss_fn=scaled_loss(spec["batch_size"], world), prepare=wrap)
    seconds = time.perf_counter() - t0
    if rank == 0:
        out = Path(spec["out"])
        out.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(weights, out / "weights.safetensors")
        (out / "stats.json").write_text(json.dumps({
            "world_size": world, "steps": len(hist.step_losses), "seconds": seconds, "losses": hist.step_losses,
            "samples_per_s": hist.samples * world / hist.train_seconds if hist.train_seconds else None,
            "backend": dist.get_backend() if world > 1 else None}))
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
