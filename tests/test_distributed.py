"""Data-parallel training (lib.techniques.distributed): the sharded batches, and DDP on 2 processes = 1 process."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from safetensors.torch import load_file

import lib
from lib.techniques.distributed import LaunchError, ShardedBatches, launch, main, torchrun_command
from tests.conftest import toy_dataset


@pytest.mark.parametrize("n, batch, world", [(10, 4, 2), (9, 4, 2), (7, 3, 3), (5, 8, 2), (1, 2, 2)])
def test_every_example_of_every_global_batch_is_seen_exactly_once(n, batch, world):
    ranks = [ShardedBatches(n, batch, world, r, seed=3) for r in range(world)]
    for _ in range(2):  # two epochs: a new shuffle, the same on every rank
        per_rank = [list(iter(s)) for s in ranks]
        assert len({len(p) for p in per_rank}) == 1  # every rank takes the same number of steps
        for step, global_batch in enumerate(ranks[0].global_batches(ranks[0].epoch - 1)):
            real = [i for p in per_rank for i in p[step] if i >= 0]
            assert sorted(real) == sorted(global_batch)  # nothing dropped, nothing duplicated
        seen = [i for p in per_rank for b in p for i in b if i >= 0]
        assert sorted(seen) == list(range(n))


def _spec(tmp_path, tiny, world):
    _, tokenizer = tiny
    enc = lib.data.Encoded(toy_dataset(40), tokenizer, 16)
    features = tmp_path / "features.json"
    features.write_text(json.dumps(enc.features))
    spec = {"model": lib.models.TINY, "num_labels": 2, "features": str(features), "batch_size": 8, "steps": 6,
            "learning_rate": 1e-3, "seed": 0, "no_dropout": True, "out": str(tmp_path / f"world{world}")}
    path = tmp_path / f"spec{world}.json"
    path.write_text(json.dumps(spec))
    return path, tmp_path / f"world{world}"


@pytest.mark.notebook  # starts processes: in the notebook tier
def test_two_processes_reach_the_weights_of_one(tmp_path, tiny, monkeypatch):
    """torchrun, 2 ranks on gloo, per-rank batch B/2 == one process with batch B, after the same steps (dropout off)."""
    one_spec, one_out = _spec(tmp_path, tiny, 1)
    monkeypatch.delenv("RANK", raising=False)
    main(["--spec", str(one_spec)])
    two_spec, two_out = _spec(tmp_path, tiny, 2)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "lib.techniques.distributed", "--spec", str(two_spec)], cwd=lib.paths.ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = load_file(one_out / "weights.safetensors"), load_file(two_out / "weights.safetensors")
    start = lib.models.fresh_classifier(lib.models.TINY, 2, seed=0).state_dict()
    moved = max(float((one[k] - start[k]).abs().max()) for k in one)
    diff = max(float((one[k] - two[k]).abs().max()) for k in one)
    print(f"max |weight change| {moved:.3g}, max |1 process - 2 processes| {diff:.3g}")
    assert moved > 1e-3 and diff < 1e-5, (moved, diff)  # it trained, and both ways to the same weights
    s1, s2 = json.loads((one_out / "stats.json").read_text()), json.loads((two_out / "stats.json").read_text())
    assert s1["steps"] == s2["steps"] == 6 and s2["world_size"] == 2 and s2["backend"] == "gloo"
    assert np.isfinite(s2["losses"]).all()  # rank 0's own share of each step's loss (its scaled half)


@pytest.mark.notebook
def test_two_nodes_on_one_machine_match_two_ranks_in_one_launch(tmp_path, tiny):
    """The multi-machine path for real: two torchrun launches (--nnodes 2, one per node rank, c10d rendezvous on
    127.0.0.1) finish with the weights of world size 2 in one launch."""
    spec, out = _spec(tmp_path, tiny, 2)
    launch(spec, 2)
    single = load_file(out / "weights.safetensors")
    port = lib.distributed.free_port()
    procs = [subprocess.Popen(torchrun_command(spec, 1, nnodes=2, node_rank=r, rdzv_endpoint=f"127.0.0.1:{port}",
                                               rdzv_id="test2nodes"), cwd=lib.paths.ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [r[1][-2000:] for r in results]
    nodes = load_file(out / "weights.safetensors")  # node 0's rank 0 wrote it
    assert max(float((single[k] - nodes[k]).abs().max()) for k in single) < 1e-6


@pytest.mark.notebook
def test_a_crashing_worker_fails_the_launch_with_its_own_error(tmp_path, tiny):
    spec, _ = _spec(tmp_path, tiny, 2)
    spec.write_text(json.dumps({**json.loads(spec.read_text()), "fail_on_rank": 1}))
    with pytest.raises(LaunchError, match=r"RuntimeError: worker 1 failed on purpose"):
        launch(spec, 2)


def test_worker_error_is_found_in_torchrun_output():
    stderr = "W1126 warning\nTraceback (most recent call last):\n  File x\nValueError: bad shape (3, 4)\n" \
             "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n"
    assert lib.distributed.worker_error(stderr) == "ValueError: bad shape (3, 4)"
