"""Federated learning: many clients train one model without sending their data anywhere, on Flower.

The mechanism, in four pieces:

- **Clients** are cut from one training split: :func:`iid_partition` (a random, even cut),
  :func:`dirichlet_partition` (label skew: for every label, the share each client gets is drawn from a
  Dirichlet distribution with concentration ``alpha``; small ``alpha`` gives each client one label, large
  ``alpha`` the IID cut; the definition of ``flwr_datasets``' ``DirichletPartitioner`` and of NIID-Bench,
  Li et al., 2022) and :func:`group_partition` (the data's own groups, e.g. every review of a movie on the
  same client). :func:`holdout` keeps a slice of every client for evaluating the global model on that
  client's own data.
- **What trains** is a small head on the sentence vectors the frozen encoder computes once
  (:func:`lib.evaluate.sentence_vectors`), the same cheap setup as ``07_privacy``: a round costs
  milliseconds of compute, so what the notebook measures is federated learning itself. This module imports
  no transformers: every client process of the Deployment Engine imports it, and starts in seconds.
- **Aggregation** (:func:`fedavg`, McMahan et al., 2017): the server's new model is the average of the
  clients' models, each weighted by its number of training examples. **FedProx** (:func:`proximal_term`, Li
  et al., 2020) changes only the clients: their loss adds ``μ/2 · ‖w − w_global‖²``, which keeps a client with
  skewed data from drifting far from the global model in its local epochs.
- :func:`local_train` is one client's work in a round, the same function for every engine.
"""

from __future__ import annotations

import functools
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, FedProx
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
from flwr.simulation import run_simulation
from torch import nn

from ..errors import ArtifactError, DataError, ParamError
from ..launch import LaunchError, free_port, start_server, stop_all, tail
from ..utils import atomic_path, atomic_write_json, atomic_write_text

# ------------------------------------------------------------------------ clients


def iid_partition(n: int, num_clients: int, seed: int) -> list[np.ndarray]:
    """Indices ``0..n-1`` shuffled and cut into ``num_clients`` parts of equal size (±1)."""
    _check_clients(n, num_clients)
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(order, num_clients)]


def dirichlet_partition(
    labels: Sequence[int] | np.ndarray, num_clients: int, alpha: float, seed: int, min_size: int = 10
) -> list[np.ndarray]:
    """Label skew: for every label ``k``, shares ``p_k ~ Dirichlet(alpha, ..., alpha)`` over the clients, and
    that label's examples (shuffled) cut in those shares. Redrawn (the same seeded generator) until every
    client has ``min_size`` examples, as ``flwr_datasets.partitioner.DirichletPartitioner`` does."""
    labels = np.asarray(labels)
    _check_clients(len(labels), num_clients)
    if not alpha > 0:
        raise ParamError(f"dirichlet alpha = {alpha}: it must be > 0 (0.1: one label per client; 100: IID)")
    if min_size * num_clients > len(labels):
        raise ParamError(
            f"{num_clients} clients of at least {min_size} examples need {min_size * num_clients}; the split "
            f"has {len(labels)}: use fewer clients"
        )
    rng = np.random.default_rng(seed)
    for _ in range(1000):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for k in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == k))
            shares = rng.dirichlet(np.full(num_clients, float(alpha)))
            cuts = np.round(np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].append(chunk)
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in out) >= min_size:
            return out
    raise ParamError(
        f"1000 Dirichlet draws at alpha = {alpha} all left a client with fewer than {min_size} examples: "
        f"raise alpha, lower the number of clients ({num_clients}) or min_size"
    )


def group_partition(groups: Sequence[object], num_clients: int, seed: int) -> list[np.ndarray]:
    """The data's own groups (every example of a group on one client): groups in a seeded random order, each
    given to the client that has the fewest examples so far (so the clients are about equally large)."""
    groups = pd.Series(np.asarray(groups, dtype=object))
    if groups.isna().any():
        raise DataError(
            f"{int(groups.isna().sum())} examples have no group: a natural split needs a group for "
            "every example (set group_column to a column without gaps)"
        )
    by_group = groups.groupby(groups, sort=True).indices
    if len(by_group) < num_clients:
        raise ParamError(
            f"{len(by_group)} groups cannot fill {num_clients} clients: use at most {len(by_group)} clients"
        )
    names = list(by_group)
    order = np.random.default_rng(seed).permutation(len(names))
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    sizes = np.zeros(num_clients, dtype=int)
    for i in order:
        client = int(np.argmin(sizes))
        parts[client].append(by_group[names[i]])
        sizes[client] += len(by_group[names[i]])
    return [np.sort(np.concatenate(p)) for p in parts]


def holdout(
    parts: Sequence[np.ndarray], fraction: float, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each client's indices cut into (train, held out): a seeded ``fraction`` of every client (at least one
    example each) is kept for evaluating the global model on that client's own data."""
    if not 0 < fraction < 1:
        raise ParamError(f"client_holdout = {fraction}: it must be between 0 and 1 (0.2 keeps a fifth)")
    rng = np.random.default_rng(seed)
    train, held = [], []
    for p in parts:
        if len(p) < 2:
            raise DataError(f"a client has {len(p)} example(s): it needs 2 to train and to hold one out")
        shuffled = rng.permutation(p)
        k = min(max(1, round(fraction * len(p))), len(p) - 1)
        held.append(np.sort(shuffled[:k]))
        train.append(np.sort(shuffled[k:]))
    return train, held


def label_table(
    parts: Sequence[np.ndarray], labels: Sequence[int], label_names: Sequence[str]
) -> pd.DataFrame:
    """Examples of each label per client (rows: clients), for a stacked bar of the split."""
    labels = np.asarray(labels)
    counts = [np.bincount(labels[p], minlength=len(label_names)) for p in parts]
    return pd.DataFrame(counts, columns=list(label_names), index=pd.RangeIndex(len(parts), name="client"))


def _check_clients(n: int, num_clients: int) -> None:
    if not 2 <= num_clients <= n:
        raise ParamError(f"num_clients = {num_clients}: federated training needs 2 to {n} clients")


# ------------------------------------------------------------------------ what trains


def make_head(dim: int, num_labels: int, hidden: int, seed: int) -> nn.Module:
    """The classifier every client trains: linear (``hidden = 0``) or one hidden layer; seeded, so every
    engine starts from the same weights."""
    torch.manual_seed(seed)
    if hidden == 0:
        return nn.Linear(dim, num_labels)
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, num_labels))


@dataclass(frozen=True)
class LocalConfig:
    """One client's training in one round (every client of a run gets the same)."""

    epochs: int = 1  # passes over the client's own examples per round
    batch_size: int = 32
    learning_rate: float = 1e-3  # Adam, fresh each round: a client keeps no state between rounds
    proximal_mu: float = 0.0  # FedProx's μ; 0 is FedAvg
    seed: int = 0


# @save
def fedavg(models: Sequence[Mapping[str, np.ndarray]], num_examples: Sequence[int]) -> dict[str, np.ndarray]:
    """FedAvg's server step: every tensor of the new global model is the clients' tensors averaged, each
    client weighted by its number of training examples."""
    total = sum(num_examples)
    return {
        name: sum(model[name] * (n / total) for model, n in zip(models, num_examples, strict=True))
        for name in models[0]
    }


# @save
def proximal_term(model: nn.Module, global_weights: Sequence[torch.Tensor], mu: float) -> torch.Tensor:
    """FedProx's addition to a client's loss: ``μ/2 · ‖w − w_global‖²`` over all trainable weights."""
    drift = sum(((w - g) ** 2).sum() for w, g in zip(model.parameters(), global_weights, strict=True))
    return mu / 2 * drift


def local_train(
    head: nn.Module, features: torch.Tensor, labels: torch.Tensor, cfg: LocalConfig
) -> tuple[dict[str, np.ndarray], float]:
    """One client's round: ``cfg.epochs`` passes of Adam over its own examples, from the global weights the
    head holds, with FedProx's :func:`proximal_term` when ``cfg.proximal_mu > 0``. Returns the new weights
    and the mean training loss."""
    global_weights = [p.detach().clone() for p in head.parameters()]
    opt = torch.optim.Adam(head.parameters(), lr=cfg.learning_rate)
    gen = torch.Generator().manual_seed(cfg.seed)
    head.train()
    losses = []
    for _ in range(cfg.epochs):
        for idx in torch.randperm(len(labels), generator=gen).split(cfg.batch_size):
            loss = nn.functional.cross_entropy(head(features[idx]), labels[idx])
            if cfg.proximal_mu > 0:
                loss = loss + proximal_term(head, global_weights, cfg.proximal_mu)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return weights_of(head), float(np.mean(losses))


def centralized(
    head: nn.Module, data: ClientData, rounds: int, cfg: LocalConfig
) -> tuple[dict[str, np.ndarray], list[float]]:
    """What federated training is measured against: the same head trained on every client's training
    examples gathered in one place, with the same budget — ``rounds`` calls of :func:`local_train`
    (``cfg.epochs`` passes each, a fresh optimizer each, as a client gets). Returns the final weights and
    the test accuracy before the first and after every round."""
    x = torch.cat([data.client(c)[0] for c in range(data.num_clients)])
    y = torch.cat([data.client(c)[1] for c in range(data.num_clients)])
    curve = [accuracy(head, data.test_features, data.test_labels)]
    for r in range(1, rounds + 1):
        local_train(head, x, y, replace(cfg, seed=cfg.seed * 1_000_003 + r * 1009))
        curve.append(accuracy(head, data.test_features, data.test_labels))
    return weights_of(head), curve


def weights_of(head: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in head.state_dict().items()}


def load_weights(head: nn.Module, weights: Mapping[str, np.ndarray]) -> nn.Module:
    head.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()})
    return head


def predict(head: nn.Module, features: torch.Tensor) -> np.ndarray:
    """The head's label for every row of ``features``."""
    head.eval()
    with torch.inference_mode():
        return head(features).argmax(-1).numpy()


def accuracy(head: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> float:
    return float((predict(head, features) == labels.numpy()).mean())


def model_bytes(weights: Mapping[str, np.ndarray]) -> int:
    """What one copy of the model weighs on the wire (the raw tensors)."""
    return int(sum(np.asarray(v).nbytes for v in weights.values()))


# ------------------------------------------------------------------------ the clients' data, on disk


@dataclass(frozen=True)
class ClientData:
    """What a federation works on: features and labels of the training split and of the test split, and
    every client's (train, held-out) indices into the training split. Saved once by the notebook; each
    client process reads only its own slices (``partition-id``), the server only the test split."""

    features: torch.Tensor
    labels: torch.Tensor
    test_features: torch.Tensor
    test_labels: torch.Tensor
    train: tuple[np.ndarray, ...]
    held: tuple[np.ndarray, ...]

    @property
    def num_clients(self) -> int:
        return len(self.train)

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def num_labels(self) -> int:
        return int(max(self.labels.max(), self.test_labels.max())) + 1

    def client(self, pid: int, part: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor((self.train if part == "train" else self.held)[pid])
        return self.features[idx], self.labels[idx]

    def save(self, path: Path | str) -> Path:
        arrays = {
            "features": self.features.numpy(),
            "labels": self.labels.numpy(),
            "test_features": self.test_features.numpy(),
            "test_labels": self.test_labels.numpy(),
        }
        arrays.update({f"train_{c}": t for c, t in enumerate(self.train)})
        arrays.update({f"held_{c}": h for c, h in enumerate(self.held)})
        _save_npz(Path(path), arrays)
        return Path(path)

    @staticmethod
    def load(path: Path | str) -> ClientData:
        return _load_client_data(str(path))


@functools.lru_cache(maxsize=2)
def _load_client_data(path: str) -> ClientData:
    if not Path(path).exists():
        raise ArtifactError(f"no client data at {path}: the notebook saves it (ClientData.save) before a run")
    with np.load(path) as z:
        n = sum(k.startswith("train_") for k in z.files)
        t = {k: torch.from_numpy(z[k]) for k in ("features", "labels", "test_features", "test_labels")}
        return ClientData(
            **t,
            train=tuple(z[f"train_{c}"] for c in range(n)),
            held=tuple(z[f"held_{c}"] for c in range(n)),
        )


# ------------------------------------------------------------------------ the Flower apps

# The settings of a run: Flower's run config (``[tool.flwr.app.config]`` of the app, ``flwr run
# --run-config``), or, in the Simulation Engine, the defaults the apps are built with. The server sends the
# clients what they need in every message's config (so a client needs nothing but its data and its
# partition-id).
SETTINGS = {
    "data": "",  # the ClientData file
    "out": "",  # the folder the server writes each experiment's results to
    "experiments": "",  # JSON list of {"name": ..., setting: value}, run in turn ("" = one run, "run")
    "strategy": "fedavg",  # fedavg | fedprox
    "proximal-mu": 0.0,  # FedProx's μ
    "num-rounds": 10,
    "fraction-train": 1.0,  # share of the clients that train in a round
    "local-epochs": 1,
    "batch-size": 32,
    "learning-rate": 1e-3,
    "head-hidden": 0,
    "seed": 0,
    "threads": 1,  # torch threads per client process
    "client-eval-every": 0,  # clients score the global model every k rounds and after the last (0: the last
    # only; -1: never, the server's test accuracy only)
}
CLIENT_KEYS = ("data", "local-epochs", "batch-size", "learning-rate", "head-hidden", "seed", "threads")


def settings_of(defaults: Mapping[str, object], overrides: Mapping[str, object]) -> dict[str, object]:
    unknown = (set(defaults) | set(overrides)) - set(SETTINGS) - {"name"}
    if unknown:
        raise ParamError(f"unknown federated setting(s) {sorted(unknown)}: known are {sorted(SETTINGS)}")
    return {**SETTINGS, **defaults, **overrides}


def client_app() -> ClientApp:
    """The ClientApp: ``train`` runs :func:`local_train` on this client's slice, from the global weights the
    message carries; ``evaluate`` scores them on the client's held-out slice. Which client it is comes from
    the node's ``partition-id`` (the Simulation Engine numbers its virtual nodes; a SuperNode gets it with
    ``--node-config``); the rest from the message's config."""
    app = ClientApp()

    def setup(msg: Message, context: Context) -> tuple[Mapping, ClientData, int, nn.Module]:
        cfg = msg.content["config"]
        torch.set_num_threads(int(cfg["threads"]))
        data = ClientData.load(str(cfg["data"]))
        pid = int(context.node_config["partition-id"])
        if pid >= data.num_clients:
            raise ParamError(
                f"partition-id {pid}: the data has {data.num_clients} clients (0 to {data.num_clients - 1})"
            )
        head = make_head(data.dim, data.num_labels, int(cfg["head-hidden"]), 0)
        head.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        return cfg, data, pid, head

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        cfg, data, pid, head = setup(msg, context)
        x, y = data.client(pid)
        local = LocalConfig(
            epochs=int(cfg["local-epochs"]),
            batch_size=int(cfg["batch-size"]),
            learning_rate=float(cfg["learning-rate"]),
            proximal_mu=float(cfg.get("proximal-mu", 0.0)),
            seed=int(cfg["seed"]) * 1_000_003 + int(cfg["server-round"]) * 1009 + pid,
        )
        _, loss = local_train(head, x, y, local)
        metrics = MetricRecord({"num-examples": len(y), "train-loss": loss, "partition-id": pid})
        reply = RecordDict({"arrays": ArrayRecord(head.state_dict()), "metrics": metrics})
        return Message(reply, reply_to=msg)

    @app.query()
    def query(msg: Message, context: Context) -> Message:  # which client is this node? (see clients_of)
        pid = int(context.node_config["partition-id"])
        return Message(RecordDict({"metrics": MetricRecord({"partition-id": pid})}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        _, data, pid, head = setup(msg, context)
        x, y = data.client(pid, "held")
        metrics = MetricRecord(
            {"num-examples": len(y), "accuracy": accuracy(head, x, y), "partition-id": pid}
        )
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    return app


def server_app(defaults: Mapping[str, object] | None = None) -> ServerApp:
    """The ServerApp: each experiment (``experiments``; one when empty) is a run of Flower's own FedAvg or
    FedProx strategy over the connected clients, written to ``out/<name>/`` by :func:`run_experiment`."""
    app = ServerApp()
    defaults = dict(defaults or {})

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        s = settings_of(defaults, context.run_config)
        partitions: dict[int, int] = {}  # node id -> partition-id, asked once if an experiment needs it
        for exp in json.loads(str(s["experiments"])) if s["experiments"] else [{"name": "run"}]:
            s_exp = settings_of(s, exp)
            clients = ClientData.load(str(s_exp["data"])).num_clients
            if len(list(grid.get_node_ids())) > clients:  # more nodes than this experiment has clients
                partitions = partitions or partitions_of(grid)
                grid_exp: Grid = Nodes(grid, [n for n, pid in partitions.items() if pid < clients])
            else:
                grid_exp = grid
            run_experiment(grid_exp, s_exp, Path(str(s["out"])) / str(exp["name"]))

    return app


def partitions_of(grid: Grid) -> dict[int, int]:
    """Every connected node's ``partition-id``, asked with one ``query`` message per node."""
    ids = list(grid.get_node_ids())
    asks = [Message(RecordDict(), dst_node_id=node, message_type="query") for node in ids]
    replies = grid.send_and_receive(asks)
    return {r.metadata.src_node_id: int(r.content["metrics"]["partition-id"]) for r in replies}


class Nodes(Grid):
    """A grid that shows a strategy only some of the connected nodes: an experiment with fewer clients than
    the federation has nodes (Flower's strategies sample from every node the grid names)."""

    def __init__(self, grid: Grid, node_ids: Sequence[int]):
        self.grid, self.node_ids = grid, list(node_ids)

    def set_run(self, run: object) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> object:
        return self.grid.run

    def create_message(self, *args: object, **kwargs: object) -> Message:
        return self.grid.create_message(*args, **kwargs)

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)

    def push_messages(self, messages: object) -> object:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: object) -> object:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: object, *, timeout: float | None = None) -> object:
        return self.grid.send_and_receive(messages, timeout=timeout)


def run_experiment(grid: Grid, s: Mapping[str, object], out: Path) -> None:
    """One federated training: the global model is scored on the test split before round 1 and after every
    round (``evaluate_fn``), and every client reports its held-out accuracy. Writes ``result.json`` (per
    round: global accuracy, each client's accuracy, clients trained, bytes, seconds), the final weights, and
    round 1's client models with the model Flower aggregated from them."""
    out.mkdir(parents=True, exist_ok=True)
    data = ClientData.load(str(s["data"]))
    random.seed(int(s["seed"]))  # Flower samples a round's clients with random.sample
    head = make_head(data.dim, data.num_labels, int(s["head-hidden"]), int(s["seed"]))
    rounds: dict[int, dict] = {}
    first: dict[str, object] = {}
    start = time.perf_counter()

    def on_train(replies: list[RecordDict], key: str) -> MetricRecord:
        r = max(rounds, default=0) + 1
        rounds[r] = {"round": r, "clients_trained": len(replies)}
        if r == 1:
            first["models"] = [{k: v.numpy() for k, v in rd["arrays"].items()} for rd in replies]
            first["num_examples"] = [int(rd["metrics"]["num-examples"]) for rd in replies]
        return aggregate_metricrecords(replies, key)

    def on_evaluate(replies: list[RecordDict], key: str) -> MetricRecord:
        rounds[max(rounds)]["client_accuracy"] = {
            int(rd["metrics"]["partition-id"]): float(rd["metrics"]["accuracy"]) for rd in replies
        }
        return aggregate_metricrecords(replies, key)

    def global_eval(r: int, arrays: ArrayRecord) -> MetricRecord:
        model = make_head(data.dim, data.num_labels, int(s["head-hidden"]), 0)
        model.load_state_dict(arrays.to_torch_state_dict())
        acc = accuracy(model, data.test_features, data.test_labels)
        if r == 1:
            first["aggregate"] = {k: v.numpy() for k, v in arrays.items()}
        rounds.setdefault(r, {"round": r, "clients_trained": 0})
        rounds[r].update(global_accuracy=acc, seconds=time.perf_counter() - start)
        return MetricRecord({"accuracy": acc})

    kind = {"fedavg": FedAvg, "fedprox": FedProx}
    if s["strategy"] not in kind:
        raise ParamError(f"strategy = {s['strategy']!r}: use one of {sorted(kind)}")
    extra = {"proximal_mu": float(s["proximal-mu"])} if s["strategy"] == "fedprox" else {}
    n, last, every = data.num_clients, int(s["num-rounds"]), int(s["client-eval-every"])
    on_clients = {r for r in range(1, last + 1) if every >= 0 and (r == last or (every and r % every == 0))}
    strategy = evaluated_on_clients(kind[str(s["strategy"])], on_clients)(
        fraction_train=float(s["fraction-train"]),
        fraction_evaluate=1.0,
        min_train_nodes=2,
        min_evaluate_nodes=n,
        min_available_nodes=n,
        train_metrics_aggr_fn=on_train,
        evaluate_metrics_aggr_fn=on_evaluate,
        **extra,
    )
    config = ConfigRecord({k: s[k] for k in CLIENT_KEYS})
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(head.state_dict()),
        num_rounds=int(s["num-rounds"]),
        train_config=config,
        evaluate_config=ConfigRecord(dict(config)),
        evaluate_fn=global_eval,
    )
    final = {k: v.numpy() for k, v in result.arrays.items()}
    size = model_bytes(final)
    for r in rounds.values():
        r["bytes"] = 2 * size * r["clients_trained"]  # the global model down, each trained model up
    _save_npz(out / "final.npz", final)
    _save_npz(
        out / "first_round.npz",
        {
            "num_examples": np.asarray(first["num_examples"]),
            **{f"client{i}.{k}": v for i, m in enumerate(first["models"]) for k, v in m.items()},
            **{f"aggregate.{k}": v for k, v in first["aggregate"].items()},
        },
    )
    atomic_write_json(
        out / "result.json",
        {"settings": dict(s), "model_bytes": size, "rounds": [rounds[r] for r in sorted(rounds)]},
    )


def evaluated_on_clients(strategy: type, rounds: set[int]) -> type:
    """A Flower strategy class that asks the clients to evaluate only in ``rounds``: a simulated round
    waits for every message it sends (Flower polls for replies), so client evaluation in every round would
    nearly double the sweep's time; the server's own test accuracy is still measured after every round."""

    class Strategy(strategy):
        def configure_evaluate(
            self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
        ) -> list[Message]:
            return (
                list(super().configure_evaluate(server_round, arrays, config, grid))
                if server_round in rounds
                else []
            )

    Strategy.__name__ = strategy.__name__
    return Strategy


def _save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


# ------------------------------------------------------------------------ the Simulation Engine

QUIET = {
    "FLWR_TELEMETRY_ENABLED": "0",  # Flower sends no usage events
    "RAY_USAGE_STATS_ENABLED": "0",  # nor does Ray
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",  # Ray leaves CUDA_VISIBLE_DEVICES alone (and says nothing)
}


def simulate(settings: Mapping[str, object], num_supernodes: int, cpus_per_client: float = 1.0) -> None:
    """Flower's Simulation Engine: ``num_supernodes`` virtual SuperNodes (``partition-id`` 0..n-1) in Ray
    workers of ``cpus_per_client`` CPUs each, running this module's ServerApp (built with ``settings``: its
    ``experiments`` run in turn) and ClientApp; telemetry off. ``run_simulation`` is Flower's API for apps
    built in this process (``flwr run`` needs them importable from an app folder, as :func:`deploy` has
    them)."""
    os.environ.update(QUIET)  # read by Flower and by the Ray workers it starts
    run_simulation(
        server_app(settings),
        client_app(),
        num_supernodes=num_supernodes,
        backend_config={
            "client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0},
            "init_args": {"log_to_driver": False},  # the workers' logs stay in Ray's files, not the notebook
        },
    )


# ------------------------------------------------------------------------ the Deployment Engine, on loopback

APP_PYPROJECT = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "muxl-federated"
version = "1.0.0"
description = "Model UX Lab 08: a classifier head trained by federated clients"
license = "Apache-2.0"
dependencies = []  # the apps live in lib, installed where the SuperLink and SuperNodes run

[tool.flwr.app]
publisher = "model-ux-lab"

[tool.flwr.app.components]
serverapp = "lib.techniques.federated:app_server"
clientapp = "lib.techniques.federated:app_client"

[tool.flwr.app.config]
{config}
"""


def write_app(folder: Path, settings: Mapping[str, object]) -> Path:
    """A Flower App (the folder ``flwr run`` packs and sends to the SuperLink): its pyproject.toml names this
    module's apps and carries the run's settings as the app's config."""
    s = settings_of({}, settings)
    lines = [f"{k} = {json.dumps(v)}" for k, v in s.items()]
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "pyproject.toml", APP_PYPROJECT.format(config="\n".join(lines)))
    return folder


def deployment_commands(link: str, nodes: int) -> list[str]:
    """The commands for a federation across machines (SuperLink on ``link``'s host, one SuperNode per
    machine): what :func:`deploy` runs here on loopback."""
    host = link.split(":")[0]
    cmds = [
        f"# machine {host} (the SuperLink)",
        f"flower-superlink --insecure --host 0.0.0.0 --port {link.split(':')[1]}",
    ]
    for i in range(nodes):
        cmds += [
            f"# client machine {i}",
            f"flower-supernode --insecure --superlink {link} "
            f'--node-config "partition-id={i} num-partitions={nodes}"',
        ]
    cmds += ["# anywhere: ~/.flwr/config.toml names the SuperLink's address", "flwr run ./app <connection>"]
    return cmds


def deploy(work: Path, settings: Mapping[str, object], nodes: int = 2, timeout: float = 600) -> dict:
    """Run one federation with Flower's Deployment Engine, every part its own process on 127.0.0.1: a
    SuperLink, ``nodes`` SuperNodes (``partition-id`` 0..nodes-1) and ``flwr run`` of the app
    :func:`write_app` makes. Waits for each to listen before the next starts; stops them all (and every
    process they started) in ``finally``. Returns the server's ``result.json``."""
    work = Path(work)
    home, logs = work / "flwr-home", work / "logs"
    for d in (home, logs):
        d.mkdir(parents=True, exist_ok=True)
    link, node_ports = free_port(), [free_port() for _ in range(nodes)]
    out = Path(str(settings_of({}, settings)["out"]))
    app = write_app(work / "app", {**settings, "experiments": ""})
    atomic_write_text(
        home / "config.toml",
        '[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\n'
        f'address = "127.0.0.1:{link}"\ninsecure = true\n',
    )
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        **QUIET,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }

    def tool(name: str) -> str:  # Flower's commands, from the environment this Python runs in
        found = shutil.which(name, path=env["PATH"])
        if found is None:
            raise LaunchError(
                f"{name} not found next to {sys.executable} or on PATH: install flwr (make install)"
            )
        return found

    procs: list[subprocess.Popen] = []
    try:
        superlink = [tool("flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(link),
                     "--database", str(work / "superlink.db")]  # fmt: skip
        start_server(procs, "superlink", superlink, link, logs, env)
        for i, port in enumerate(node_ports):
            start_server(procs, f"supernode{i}", [tool("flower-supernode"), "--insecure", "--superlink",
                         f"127.0.0.1:{link}", "--host", "127.0.0.1", "--port", str(port), "--node-config",
                         f"partition-id={i} num-partitions={nodes}"], port, logs, env)  # fmt: skip
        run = subprocess.run(
            [tool("flwr"), "run", str(app), "loopback", "--stream"],
            env=env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        atomic_write_text(logs / "flwr-run.log", run.stdout + run.stderr)
        result = out / "run" / "result.json"
        if run.returncode != 0 or not result.exists():
            raise LaunchError(f"flwr run did not finish the federation:\n{tail(logs / 'flwr-run.log')}")
        return json.loads(result.read_text())
    except subprocess.TimeoutExpired as e:
        raise LaunchError(f"the federation took more than {timeout:.0f} s: logs in {logs}") from e
    finally:
        stop_all(procs)


# What a Flower App names in its pyproject.toml ([tool.flwr.app.components]) for the Deployment Engine.
app_client = client_app()
app_server = server_app()
