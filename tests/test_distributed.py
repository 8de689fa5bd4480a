"""Data-parallel training (lib.techniques.distributed): the sharded batches, and DDP on 2 processes = 1
process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import lib
from lib import verdict
from lib.techniques.distributed import LaunchError, ShardedBatches, launch, main, torchrun_command
from tests.conftest import toy_dataset


@pytest.mark.parametrize("n, batch, world", [(10, 4, 2), (9, 4, 2), (7, 3, 3), (5, 8, 2), (1, 2, 2)])
def test_every_example_of_every_global_batch_is_seen_exactly_once(n, batch, world):
    ranks = [ShardedBatches(n, batch, world, r, seed=3) for r in range(world)]
    for _ in range(2):  # two epochs: a new shuffle, the same on every rank
        per_rank = [list(iter(s)) for s in ranks]
        assert len({len(p) for p in per_rank}) == 1  # every rank takes the same number of steps
        for step, global_batch in enumerate(ranks[0].global_batches(ranks[0].epoch - 1)):
            real = [i for p in per_rank for i, w in p[step] if w > 0]
            assert sorted(real) == sorted(global_batch)  # nothing dropped, nothing duplicated
            weights = [w for p in per_rank for _, w in p[step]]
            assert sum(weights) == pytest.approx(1.0)  # each example weighs 1/|global batch|, a stand-in 0
        seen = [i for p in per_rank for b in p for i, w in b if w > 0]
        assert sorted(seen) == list(range(n))


def _spec(tmp_path, tiny, world, **extra):
    _, tokenizer = tiny
    enc = lib.data.Encoded(toy_dataset(40), tokenizer, 16)
    features = tmp_path / "features.json"
    features.write_text(json.dumps(enc.features))
    spec = {
        "model": lib.models.TINY,
        "num_labels": 2,
        "features": str(features),
        "batch_size": 8,
        "steps": 6,
        "learning_rate": 1e-3,
        "seed": 0,
        "no_dropout": True,
        "out": str(tmp_path / f"world{world}"),
        "allreduce_repeats": 0,
        **extra,
    }
    path = tmp_path / f"spec{world}.json"
    path.write_text(json.dumps(spec))
    return path, tmp_path / f"world{world}"


@pytest.mark.slow  # starts processes; 05_distributed's smoke run proves the same (float64, 2 ranks)
def test_two_processes_reach_the_weights_of_one(tmp_path, tiny, monkeypatch):
    """torchrun, 2 ranks on gloo, per-rank batch B/2 == one process with batch B, after the same steps
    (dropout off)."""
    one_spec, one_out = _spec(tmp_path, tiny, 1)
    monkeypatch.delenv("RANK", raising=False)
    main(["--spec", str(one_spec)])
    two_spec, two_out = _spec(tmp_path, tiny, 2)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "lib.techniques.distributed",
            "--spec",
            str(two_spec),
        ],
        cwd=lib.runner.paths.ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = load_file(one_out / "weights.safetensors"), load_file(two_out / "weights.safetensors")
    start = lib.models.fresh_classifier(lib.models.TINY, 2, seed=0).state_dict()
    moved = max(float((one[k] - start[k]).abs().max()) for k in one)
    diff = max(float((one[k] - two[k]).abs().max()) for k in one)
    print(f"max |weight change| {moved:.3g}, max |1 process - 2 processes| {diff:.3g}")
    assert moved > 1e-3 and diff < 1e-5, (moved, diff)  # it trained, and both ways to the same weights
    s1, s2 = (
        json.loads((one_out / "stats.json").read_text()),
        json.loads((two_out / "stats.json").read_text()),
    )
    assert s1["steps"] == s2["steps"] == 6 and s2["world_size"] == 2 and s2["backend"] == "gloo"
    assert np.isfinite(s2["losses"]).all()  # rank 0's own share of each step's loss (its scaled half)


@pytest.mark.slow  # three launches (~20 s); the launcher's rendezvous arguments are unit-tested
def test_two_nodes_on_one_machine_match_two_ranks_in_one_launch(tmp_path, tiny):
    """The multi-machine path for real: two torchrun launches (--nnodes 2, one per node rank, c10d rendezvous
    on 127.0.0.1) finish with the weights of world size 2 in one launch."""
    spec, out = _spec(tmp_path, tiny, 2)
    launch(spec, 2, timeout=300)
    single = load_file(out / "weights.safetensors")
    port = lib.launch.free_port()
    procs = [
        subprocess.Popen(
            torchrun_command(
                spec, 1, nnodes=2, node_rank=r, rdzv_endpoint=f"127.0.0.1:{port}", rdzv_id="test2nodes"
            ),
            cwd=lib.runner.paths.ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in (0, 1)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [r[1][-2000:] for r in results]
    nodes = load_file(out / "weights.safetensors")  # node 0's rank 0 wrote it
    assert max(float((single[k] - nodes[k]).abs().max()) for k in single) < 1e-6


@pytest.mark.launch
def test_a_crashing_worker_fails_the_launch_with_its_own_error(tmp_path, tiny):
    spec, _ = _spec(tmp_path, tiny, 2)
    spec.write_text(json.dumps({**json.loads(spec.read_text()), "fail_on_rank": 1}))
    with pytest.raises(LaunchError, match=r"RuntimeError: worker 1 failed on purpose"):
        launch(spec, 2, timeout=300)


def test_worker_error_is_found_in_torchrun_output():
    stderr = (
        "W1126 warning\nTraceback (most recent call last):\n  File x\nValueError: bad shape (3, 4)\n"
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n"
    )
    assert lib.launch.worker_error(stderr) == "ValueError: bad shape (3, 4)"


def test_the_loss_scaling_matches_one_batch_and_a_per_slice_mean_does_not(tiny):
    """In one process, no DDP: the average of the simulated ranks' gradients is the global batch's gradient
    with scaled_loss; with each slice's plain mean (the usual mistake) it is not, once the slices differ in
    size."""
    make, tokenizer = tiny
    model = make()
    enc = lib.data.Encoded(toy_dataset(40), tokenizer, 16)
    good = lib.distributed.simulated_ranks_gap(
        model, enc, tokenizer, lib.distributed.scaled_loss, 7, 2, seed=1
    )
    assert good["max_abs_grad_diff"] <= 1e-6 * good["max_abs_grad"]

    def slice_mean(world):
        def loss(m, batch):
            batch = {k: v for k, v in batch.items() if k != lib.distributed.WEIGHT}
            return m(**batch).loss  # mean over this rank's slice only: 4 and 3 examples weigh the same

        return loss

    bad = lib.distributed.simulated_ranks_gap(model, enc, tokenizer, slice_mean, 7, 2, seed=1)
    assert bad["max_abs_grad_diff"] > 1e-3 * bad["max_abs_grad"]


def test_counting_allreduce_counts_payload_bytes_per_step():
    import torch
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{lib.launch.free_port()}", rank=0, world_size=1
    )
    try:
        counter = lib.distributed.CountingAllReduce()
        with counter:
            counter.next_step()
            dist.all_reduce(torch.ones(10))
            dist.all_reduce(torch.ones(3, dtype=torch.float16))
            counter.next_step()
            dist.all_reduce(torch.ones(5, dtype=torch.float64))
        dist.all_reduce(torch.ones(100))  # not counted: outside
        assert counter.calls == [2, 1] and counter.bytes == [46, 40]
        assert dist.all_reduce is not None and lib.distributed.CountingAllReduce().calls == []
    finally:
        dist.destroy_process_group()


def test_ring_allreduce_model():
    ring = lib.distributed.ring_allreduce_seconds
    assert ring(1e9, 1, 8.0, 1e-3) == 0.0  # one worker sends nothing
    assert ring(1e9, 2, 8.0, 0.0) == pytest.approx(1.0)  # 2 (W-1)/W = 1: the whole gigabyte once, at 1 GB/s
    assert ring(1e9, 64, 8.0, 0.0) == pytest.approx(
        2 * 63 / 64
    )  # bandwidth term bounded by 2x: the ring's point
    assert ring(0, 4, 8.0, 1e-3, messages=3) == pytest.approx(
        2 * 3 * 1e-3 * 3
    )  # 2 (W-1) latencies per message
    frame = lib.distributed.scaling_model(0.5, 0.3, 32, {"allreduce": 90e6, "fp16": 45e6})
    for _, part in frame.groupby(["network", "scheme", "overlap"]):
        eff = part.sort_values("workers")["efficiency"].to_numpy()
        assert eff[0] == 1.0 and (np.diff(eff) <= 1e-12).all() and (eff > 0).all()
    key = ["network", "scheme", "workers"]
    both = frame.pivot_table(index=key, columns="overlap", values="step_s")
    assert (both["backward"] <= both["none"]).all()  # hiding communication never makes a step longer
    slow = frame[(frame.workers == 64) & (frame.overlap == "none") & (frame.network == "1 Gb/s Ethernet")]
    assert (
        slow.set_index("scheme")["efficiency"]["fp16"] > slow.set_index("scheme")["efficiency"]["allreduce"]
    )


def test_step_table_reads_step_times_and_ddp_split():
    one = {
        "world_size": 1,
        "batch_size": 32,
        "threads_per_rank": 2,
        "steps": 5,
        "step_seconds": [9, 9, 1.0, 1.0, 1.0],
        "allreduce_bytes_per_step": 0.0,
    }
    two = {
        "world_size": 2,
        "batch_size": 32,
        "threads_per_rank": 1,
        "comm_hook": "fp16",
        "steps": 5,
        "step_seconds": [9, 9, 2.0, 2.0, 2.0],
        "allreduce_bytes_per_step": 45e6,
        "ddp_timing": {"forward": 0.5, "backward_compute": 1.0, "backward_comm": 0.8, "overlap": 0.6},
    }
    table = lib.distributed.step_table({"one": one, "two": two}, reference="one", warmup=2)
    assert table.loc["one", "samples_per_s"] == 32 and table.loc["two", "speedup_vs_reference"] == 0.5
    assert table.loc["two", "exposed_comm_s"] == pytest.approx(0.2) and table.loc[
        "two", "other_s"
    ] == pytest.approx(0.3)
    assert table.loc["two", "mb_per_step"] == 45


def test_step_table_bounds_each_speedup_by_its_steps():
    steady = {
        "world_size": 1,
        "batch_size": 32,
        "threads_per_rank": 2,
        "steps": 6,
        "allreduce_bytes_per_step": 0,
    }
    one = {**steady, "step_seconds": [9, 9, 1.0, 1.1, 0.9, 1.0]}
    two = {**steady, "world_size": 2, "step_seconds": [9, 9, 0.5, 0.55, 0.45, 0.5]}
    same = {**steady, "world_size": 2, "step_seconds": [9, 9, 1.05, 0.9, 1.1, 0.95]}
    table = lib.distributed.step_table({"one": one, "two": two, "same": same}, reference="one", warmup=2)
    assert (
        table.loc["two", "speedup_low"] > 1
        and verdict.faster(*table.loc["two", ["speedup_low", "speedup_high"]]) == "faster"
    )
    low, high = table.loc["same", ["speedup_low", "speedup_high"]]
    assert (
        low <= table.loc["same", "speedup_vs_reference"] <= high
        and verdict.faster(low, high) == "within noise"
    )


def test_workers_run_the_mechanisms_a_notebook_wrote(tmp_path):
    assert lib.distributed.mechanisms(None) == (
        lib.distributed.scaled_loss,
        lib.distributed.average_gradients,
    )

    def scaled_loss(world_size):  # a stand-in for a notebook's edited mechanism
        return lambda model, batch: torch.tensor(float(world_size))

    path = lib.distributed.write_mechanisms(tmp_path, scaled_loss)
    loss_of, average = lib.distributed.mechanisms(path)
    assert loss_of is not scaled_loss and float(loss_of(3)(None, {})) == 3.0  # the file's own copy
    assert average is lib.distributed.average_gradients  # not written: lib's

    def my_loss(world_size):  # a name no worker looks up
        return scaled_loss(world_size)

    with pytest.raises(lib.distributed.LaunchError, match="not \\['my_loss'\\]"):
        lib.distributed.write_mechanisms(tmp_path, my_loss)


def test_average_gradients_hooks_fire_after_each_gradient_is_complete(monkeypatch):
    sent = []
    monkeypatch.setattr(
        torch.distributed, "all_reduce", lambda t, op=None: sent.append(t.clone()) or t.mul_(2)
    )
    net = torch.nn.Linear(3, 2)
    handles = lib.distributed.average_gradients(net, world_size=2)
    net(torch.ones(4, 3)).sum().backward()
    assert len(sent) == 2  # weight and bias, one message each
    assert torch.allclose(net.bias.grad, sent[[t.shape for t in sent].index(net.bias.shape)])  # (2 g) / 2
    for h in handles:
        h.remove()


def test_unknown_spec_keys_are_refused_before_any_launch(tmp_path):
    with pytest.raises(LaunchError, match="unknown spec keys \\['bacth_size'\\]"):
        lib.distributed.run("x", {"model": "m", "bacth_size": 8}, 2, tmp_path)


def test_a_busy_rendezvous_port_is_a_clear_error(tmp_path):
    import socket
    import time

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        t0 = time.perf_counter()
        with pytest.raises(LaunchError, match=f"port {port} on 127.0.0.1 is already in use"):
            launch(tmp_path / "spec.json", 2, nnodes=2, node_rank=0, rdzv_endpoint=f"127.0.0.1:{port}")
        assert time.perf_counter() - t0 < 1  # refused before starting anything


@pytest.mark.slow  # 05_distributed's smoke run covers sharded evaluation and the PowerSGD hook
def test_sharded_evaluation_equals_one_process_and_hooks_send_what_they_say(tmp_path, tiny):
    """Distributed evaluation (every other batch per rank, gathered) gives one process's logits exactly; fp16
    sends exactly half of plain all-reduce's bytes, PowerSGD far fewer (after its plain first steps)."""
    _, tokenizer = tiny
    test = lib.data.Encoded(toy_dataset(50, seed=3), tokenizer, 16)
    (tmp_path / "test.json").write_text(json.dumps(test.features))
    stats = {}
    for hook in lib.distributed.COMM_HOOKS:
        spec, out = _spec(
            tmp_path,
            tiny,
            2,
            comm_hook=hook,
            eval_features=str(tmp_path / "test.json"),
            eval_batch_size=8,
            out=str(tmp_path / hook),
        )
        stats[hook] = launch(spec, 2, echo=None, timeout=300)
    trained = lib.distributed.load_weights(
        tmp_path / "allreduce", lib.models.fresh_classifier(lib.models.TINY, 2)
    )
    one, _ = lib.evaluate.predict_logits(trained, lib.data.make_loader(test, tokenizer, 8, shuffle=False))
    gathered = np.load(tmp_path / "allreduce" / "eval_logits.npy")
    assert gathered.shape == one.shape == (50, 2) and np.abs(one - gathered).max() < 1e-6
    plain = stats["allreduce"]["allreduce_bytes_per_step"]
    assert plain == stats["allreduce"]["grad_bytes_fp32"] == 4 * stats["allreduce"]["grad_numel"]
    assert stats["fp16"]["allreduce_bytes_per_step"] == plain / 2
    assert (
        stats["powersgd"]["allreduce_bytes_per_step"] < plain / 2
        and stats["powersgd"]["powersgd_compression_rate"] > 2
    )
    assert stats["powersgd"]["allreduce_bytes"][0] == plain  # its first steps are plain all-reduce
    assert set(stats["allreduce"]["ddp_timing"]) == {
        "forward",
        "backward_compute",
        "backward_comm",
        "overlap",
    }


@pytest.mark.launch
def test_a_launch_that_overruns_its_timeout_is_killed_whole(tmp_path, tiny):
    import time

    spec, _ = _spec(tmp_path, tiny, 2)
    t0 = time.perf_counter()
    with pytest.raises(LaunchError, match="did not finish within 0.5 s"):
        launch(spec, 2, echo=None, timeout=0.5)
    assert time.perf_counter() - t0 < 10
    leftover = subprocess.run(["pgrep", "-f", str(spec)], capture_output=True, text=True).stdout.split()
    assert not leftover  # torchrun and both ranks are gone


@pytest.mark.launch
@pytest.mark.slow  # two launches; 05_distributed's smoke run trains DDP and the hand-made average in one
def test_runs_sharing_a_launch_train_what_separate_launches_train(tmp_path, tiny):
    """Two trainings in one torchrun (run_all) give the weights each gives in a launch of its own."""
    path, _ = _spec(tmp_path, tiny, 2)
    spec = {k: v for k, v in json.loads(path.read_text()).items() if k != "out"}
    alone = lib.distributed.run("alone", spec, 2, tmp_path, echo=None, timeout=300)
    shared = lib.distributed.run_all(
        {"first": dict(spec, comm_hook="by_hand"), "second": spec}, 2, tmp_path, echo=None, timeout=300
    )
    assert lib.distributed.max_weight_diff(alone["out"], shared["second"]["out"])[0] == 0.0
    assert shared["first"]["comm_hook"] == "by_hand" and shared["second"]["comm_hook"] == "allreduce"


@pytest.mark.launch
def test_a_server_that_never_listens_fails_with_its_log_and_is_stopped(tmp_path):
    procs = []
    cmd = [sys.executable, "-c", "print('no port for me'); import time; time.sleep(30)"]
    with pytest.raises(LaunchError, match="did not start listening(.|\n)*no port for me"):
        try:
            lib.launch.start_server(
                procs, "deaf", cmd, lib.launch.free_port(), tmp_path, os.environ, timeout=1.5
            )
        finally:
            lib.launch.stop_all(procs)
    assert len(procs) == 1 and procs[0].poll() is not None  # started, then stopped with its family
