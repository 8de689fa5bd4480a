"""Federated learning (lib.techniques.federated): the clients' splits, FedAvg's aggregation, FedProx's term,
and the Flower apps on both engines."""

from __future__ import annotations

import json

import numpy as np
import psutil
import pytest
import torch

from lib.errors import DataError, ParamError
from lib.techniques import federated as fl


def _labels(n=2000, seed=0):
    return np.random.default_rng(seed).integers(0, 2, n)


def _skew(parts, labels):
    """Mean over clients of the share of the client's majority label (0.5: balanced, 1: one label each)."""
    return float(np.mean([np.bincount(labels[p], minlength=2).max() / len(p) for p in parts]))


@pytest.mark.parametrize("cut", ["iid", "dirichlet", "group"])
def test_every_example_is_in_exactly_one_client_and_the_cut_is_seeded(cut):
    labels = _labels()
    groups = [f"movie{i % 97}" for i in range(len(labels))]
    make = {
        "iid": lambda s: fl.iid_partition(len(labels), 10, s),
        "dirichlet": lambda s: fl.dirichlet_partition(labels, 10, 0.5, s),
        "group": lambda s: fl.group_partition(groups, 10, s),
    }[cut]
    parts = make(1)
    assert len(parts) == 10 and all(len(p) for p in parts)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(labels)))
    assert all(np.array_equal(a, b) for a, b in zip(parts, make(1)))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, make(2)))


def test_smaller_alpha_skews_the_labels_more():
    labels = _labels()
    skew = {a: np.mean([_skew(fl.dirichlet_partition(labels, 10, a, s), labels) for s in range(5)])
            for a in (0.1, 1.0, 100.0)}  # fmt: skip
    assert skew[0.1] > skew[1.0] > skew[100.0]
    assert skew[0.1] > 0.85 and skew[100.0] < 0.56
    assert _skew(fl.iid_partition(len(labels), 10, 0), labels) < 0.56


def test_dirichlet_gives_every_client_its_minimum_and_refuses_what_cannot_be():
    labels = _labels(2000)
    parts = fl.dirichlet_partition(labels, 10, 0.1, seed=3, min_size=10)
    assert min(len(p) for p in parts) >= 10
    with pytest.raises(ParamError, match="use fewer clients"):
        fl.dirichlet_partition(labels[:400], 50, 0.1, seed=0, min_size=10)
    with pytest.raises(ParamError, match="1000 Dirichlet draws"):
        fl.dirichlet_partition(labels[:400], 20, 0.01, seed=0, min_size=15)
    with pytest.raises(ParamError, match="must be > 0"):
        fl.dirichlet_partition(labels, 10, 0.0, seed=0)
    with pytest.raises(ParamError, match="2 to 400 clients"):
        fl.iid_partition(400, 1, 0)


def test_a_group_stays_on_one_client_and_clients_are_about_equal():
    rng = np.random.default_rng(0)
    groups = np.repeat([f"g{i}" for i in range(60)], rng.integers(5, 40, 60))
    parts = fl.group_partition(groups, 6, seed=0)
    owner = {g: {c for c, p in enumerate(parts) if g in set(groups[p])} for g in set(groups)}
    assert all(len(c) == 1 for c in owner.values())
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 40  # at most one group apart
    with pytest.raises(ParamError, match="at most 60 clients"):
        fl.group_partition(groups, 61, 0)
    with pytest.raises(DataError, match="no group"):
        fl.group_partition([*groups[:-1], None], 6, 0)


def test_holdout_keeps_a_slice_of_every_client_apart():
    parts = fl.iid_partition(103, 5, 0)
    train, held = fl.holdout(parts, 0.2, seed=0)
    for p, t, h in zip(parts, train, held):
        assert len(h) >= 1 and not set(t) & set(h) and sorted([*t, *h]) == p.tolist()
        assert abs(len(h) - 0.2 * len(p)) <= 1
    with pytest.raises(ParamError, match="between 0 and 1"):
        fl.holdout(parts, 1.0, 0)


def test_label_table_counts_each_clients_labels():
    labels = np.array([0, 1, 1, 0, 1])
    table = fl.label_table([np.array([0, 1]), np.array([2, 3, 4])], labels, ["neg", "pos"])
    assert table.to_dict("index") == {0: {"neg": 1, "pos": 1}, 1: {"neg": 1, "pos": 2}}


def test_fedavg_is_the_example_weighted_mean():
    a = {"w": np.array([1.0, 2.0]), "b": np.array([0.0])}
    b = {"w": np.array([3.0, 6.0]), "b": np.array([4.0])}
    out = fl.fedavg([a, b], [1, 3])
    np.testing.assert_allclose(out["w"], [(1 + 3 * 3) / 4, (2 + 3 * 6) / 4])
    np.testing.assert_allclose(out["b"], [3.0])
    np.testing.assert_allclose(fl.fedavg([a, a], [5, 7])["w"], a["w"])  # equal clients: unchanged


def test_proximal_term_is_half_mu_times_the_squared_distance_and_pulls_towards_the_global_model():
    head = fl.make_head(4, 2, 0, seed=0)
    start = [p.detach().clone() for p in head.parameters()]
    with torch.no_grad():
        assert float(fl.proximal_term(head, start, 0.5)) == 0.0
        head.weight += 1.0
        assert float(fl.proximal_term(head, start, 0.5)) == pytest.approx(0.5 / 2 * head.weight.numel())

    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    drift = {}
    for mu in (0.0, 10.0):
        h = fl.make_head(4, 2, 0, seed=0)
        w0 = fl.weights_of(h)
        w, loss = fl.local_train(h, x, y, fl.LocalConfig(epochs=5, learning_rate=0.05, proximal_mu=mu))
        drift[mu] = sum(float(((w[k] - w0[k]) ** 2).sum()) for k in w)
        assert np.isfinite(loss)
    assert drift[10.0] < drift[0.0]


def test_local_training_is_seeded_and_learns():
    x = torch.randn(200, 8)
    y = (x[:, 0] > 0).long()
    runs = []
    for _ in range(2):
        head = fl.make_head(8, 2, 16, seed=1)
        before = fl.accuracy(head, x, y)
        w, _ = fl.local_train(head, x, y, fl.LocalConfig(epochs=20, learning_rate=0.01, seed=4))
        runs.append(w)
    assert all(np.array_equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert fl.accuracy(fl.load_weights(fl.make_head(8, 2, 16, 0), runs[0]), x, y) > max(before, 0.9)
    assert fl.model_bytes(runs[0]) == 4 * (8 * 16 + 16 + 16 * 2 + 2)


def test_the_fedavg_mechanism_equals_flowers_aggregation():
    from flwr.app import ArrayRecord, MetricRecord, RecordDict
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    rng = np.random.default_rng(0)
    models = [{"weight": rng.normal(size=(2, 4)).astype("float32"),
               "bias": rng.normal(size=2).astype("float32")} for _ in range(3)]  # fmt: skip
    counts = [10, 30, 5]
    replies = [
        RecordDict({"arrays": ArrayRecord({k: torch.from_numpy(v) for k, v in m.items()}),
                    "metrics": MetricRecord({"num-examples": n})})
        for m, n in zip(models, counts)
    ]  # fmt: skip
    flower = aggregate_arrayrecords(replies, "num-examples")
    mine = fl.fedavg(models, counts)
    for k in mine:
        np.testing.assert_allclose(mine[k], flower[k].numpy(), rtol=1e-6)


def test_unknown_settings_are_refused_with_the_known_ones():
    with pytest.raises(ParamError, match="unknown federated setting.*num-round"):
        fl.settings_of({}, {"num-round": 3})
    assert fl.settings_of({"num-rounds": 2}, {"seed": 1})["num-rounds"] == 2


def _federation(tmp_path, clients=2, n=400):
    g = torch.Generator().manual_seed(0)
    x, xt = torch.randn(n, 8, generator=g), torch.randn(100, 8, generator=g)
    y, yt = (x[:, 0] > 0).long(), (xt[:, 0] > 0).long()
    train, held = fl.holdout(fl.iid_partition(n, clients, 0), 0.2, 0)
    return fl.ClientData(x, y, xt, yt, tuple(train), tuple(held)).save(tmp_path / "clients.npz")


@pytest.mark.launch
@pytest.mark.slow  # make test: 08_federated's smoke run simulates and checks the same
def test_one_simulated_round_of_two_clients_is_fedavg_of_their_models(tmp_path):
    from flwr.simulation import run_simulation

    settings = {"data": str(_federation(tmp_path)), "out": str(tmp_path / "out"), "num-rounds": 1,
                "learning-rate": 0.05}  # fmt: skip
    run_simulation(fl.server_app(settings), fl.client_app(), num_supernodes=2,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})  # fmt: skip
    result = json.loads((tmp_path / "out" / "run" / "result.json").read_text())
    assert [r["round"] for r in result["rounds"]] == [0, 1]
    assert result["rounds"][1]["clients_trained"] == 2
    assert set(result["rounds"][1]["client_accuracy"]) == {"0", "1"}
    assert result["rounds"][1]["bytes"] == 2 * 2 * result["model_bytes"]
    first = np.load(tmp_path / "out" / "run" / "first_round.npz")
    models = [{k: first[f"client{i}.{k}"] for k in ("weight", "bias")} for i in range(2)]
    mine = fl.fedavg(models, first["num_examples"].tolist())
    for k in mine:
        np.testing.assert_allclose(mine[k], first[f"aggregate.{k}"], rtol=1e-6)


@pytest.mark.launch
@pytest.mark.slow  # make test: 08_federated's smoke run deploys and checks the same
def test_a_deployment_round_on_loopback_runs_and_leaves_nothing_running(tmp_path):
    data = _federation(tmp_path)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    settings = {"data": str(data), "out": str(tmp_path / "out"), "num-rounds": 1}
    result = fl.deploy(tmp_path / "deploy", settings, nodes=2, timeout=300)
    assert [r["round"] for r in result["rounds"]] == [0, 1] and result["rounds"][1]["clients_trained"] == 2
    assert (
        not {p.pid for p in psutil.Process().children(recursive=True)} - before
    )  # (Ray may still be ending)
    assert not [
        p for p in psutil.process_iter(["cmdline"]) if "flower-super" in " ".join(p.info["cmdline"] or [])
    ]


def test_the_centralized_reference_trains_on_every_clients_training_slice_with_the_same_budget(tmp_path):
    data = fl.ClientData.load(_federation(tmp_path, clients=3))
    cfg = fl.LocalConfig(epochs=1, batch_size=16, learning_rate=0.05, seed=0)
    weights, curve = fl.centralized(fl.make_head(data.dim, 2, 0, 0), data, 3, cfg)
    assert len(curve) == 4 and curve[-1] > max(curve[0], 0.9)  # before round 1, then after each
    held_out = set(np.concatenate(data.held).tolist())
    assert held_out and not held_out & set(
        np.concatenate(data.train).tolist()
    )  # the reference never sees them
    again, _ = fl.centralized(fl.make_head(data.dim, 2, 0, 0), data, 3, cfg)
    assert all(np.array_equal(weights[k], again[k]) for k in weights)  # seeded


def test_clients_evaluate_only_in_the_rounds_asked_for_and_a_node_subset_is_all_a_strategy_sees():
    class Strategy:  # stands in for Flower's: what it would ask, and of which nodes
        def configure_evaluate(self, server_round, arrays, config, grid):
            return [(server_round, tuple(grid.get_node_ids()))]

    grid = fl.Nodes(None, [11, 12, 13])  # three of the federation's nodes (the inner grid is never asked)
    only_3 = fl.evaluated_on_clients(Strategy, {3})()
    assert only_3.configure_evaluate(1, None, None, grid) == []
    assert only_3.configure_evaluate(3, None, None, grid) == [(3, (11, 12, 13))]
    assert type(only_3).__name__ == "Strategy" and isinstance(only_3, Strategy)
