"""11_serve's mechanisms: the micro-batcher, length groups, the cache, the HTTP app (validation, admission
control, readiness, metrics, graceful shutdown), the open-loop load generator; and, as a launch, the real
``python -m lib.serve`` on the tiny model, stopped by SIGTERM with nothing left running."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import psutil
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

import lib
from lib.serve.app import Settings, make_app
from lib.techniques import loadgen
from lib.techniques.serving import (
    Classifier,
    MicroBatcher,
    Overloaded,
    ResponseCache,
    length_groups,
    pad_rows,
)

ANSWER = {"label": "pos", "probabilities": {"neg": 0.25, "pos": 0.75}}


def echo_batches(calls: list[list[str]], seconds: float = 0.0, fail_on: str = ""):
    """A fake model: records each batch, answers each text with itself; a batch holding ``fail_on`` raises."""

    def run(texts):
        calls.append(list(texts))
        time.sleep(seconds)
        if fail_on and fail_on in texts:
            raise ValueError(f"cannot score {fail_on!r}")
        return [{"label": t, "probabilities": {"x": 1.0}} for t in texts]

    return run


def test_batcher_answers_each_caller_in_order_in_few_batches():
    calls: list[list[str]] = []

    async def main():
        b = MicroBatcher(echo_batches(calls, 0.02), max_batch_size=8, max_wait_ms=5, max_queue=100)
        task = asyncio.create_task(b.run())
        answers = await asyncio.gather(*(b.submit(f"t{i}") for i in range(20)))
        task.cancel()
        return answers

    answers = asyncio.run(main())
    assert [a["label"] for a in answers] == [f"t{i}" for i in range(20)]
    assert [len(c) for c in calls] == [8, 8, 4]  # never more than max_batch_size
    assert [t for c in calls for t in c] == [f"t{i}" for i in range(20)]  # first come, first served


def test_a_failing_batch_fails_only_its_own_requests():
    calls: list[list[str]] = []

    async def main():
        b = MicroBatcher(echo_batches(calls, fail_on="bad"), max_batch_size=2, max_wait_ms=5, max_queue=100)
        task = asyncio.create_task(b.run())
        out = await asyncio.gather(*(b.submit(t) for t in ["a", "bad", "c", "d"]), return_exceptions=True)
        after = await b.submit("e")  # the loop goes on
        task.cancel()
        return out, after

    out, after = asyncio.run(main())
    assert isinstance(out[0], ValueError) and isinstance(out[1], ValueError)  # the batch [a, bad]
    assert out[2]["label"] == "c" and out[3]["label"] == "d" and after["label"] == "e"


@pytest.mark.parametrize("wait_ms", [0.0, 30.0])
def test_the_batcher_waits_max_wait_for_company_and_no_longer(wait_ms):
    calls: list[list[str]] = []

    async def main():
        b = MicroBatcher(echo_batches(calls), max_batch_size=8, max_wait_ms=wait_ms, max_queue=100)
        task = asyncio.create_task(b.run())
        start = time.perf_counter()
        first = asyncio.create_task(b.submit("first"))
        done_at: list[float] = []
        first.add_done_callback(lambda _: done_at.append(time.perf_counter()))
        await asyncio.sleep(0.015)  # a second text arrives 15 ms later
        second = asyncio.create_task(b.submit("second"))
        await asyncio.gather(first, second)
        task.cancel()
        return done_at[0] - start

    took = asyncio.run(main())
    if wait_ms == 0:  # the first text went alone, at once
        assert calls == [["first"], ["second"]] and took < 0.015
    else:  # it waited for the second, and not much past max_wait
        assert calls == [["first", "second"]] and 0.028 <= took < 0.2


def test_a_full_queue_refuses_at_once():
    async def main():
        b = MicroBatcher(echo_batches([]), max_batch_size=1, max_wait_ms=0, max_queue=3)
        waiting = [asyncio.create_task(b.submit(str(i))) for i in range(3)]  # no loop runs: they stay queued
        await asyncio.sleep(0)
        start = time.perf_counter()
        with pytest.raises(Overloaded) as refused:
            await b.submit("one too many")
        for w in waiting:
            w.cancel()
        return time.perf_counter() - start, refused.value

    took, error = asyncio.run(main())
    assert took < 0.01 and error.waiting == 3 and error.retry_after_s >= 1


def test_length_groups_cap_the_padding():
    lengths = [5, 60, 6, 58, 7, 64]
    groups = length_groups(lengths, 0.25)
    assert sorted(i for g in groups for i in g) == list(range(6))  # every text once
    for g in groups:  # within each group, padding stays within 25 % of the real tokens
        assert max(lengths[i] for i in g) * len(g) <= 1.25 * sum(lengths[i] for i in g)
    assert len(groups) == 2  # the short ones and the long ones
    assert length_groups(lengths, -1) == [list(range(6))] and length_groups([], 0.25) == []


def test_classifier_answers_like_the_model_whatever_the_grouping(tiny):
    make, tok = tiny
    model = make().eval()
    texts = ["good", "a long and winding review of a film that goes on " * 3, "bad", "fine film"]
    grouped = Classifier(model, tok, ["neg", "pos"], 64, max_padding=0.25)(texts)
    whole = Classifier(model, tok, ["neg", "pos"], 64, max_padding=-1)(texts)
    direct = lib.predict.TextProba(model, tok, 64)(texts)
    for g, w, p in zip(grouped, whole, direct, strict=True):
        assert g["label"] == w["label"] and np.allclose(list(g["probabilities"].values()), p, atol=1e-5)
        assert np.allclose(list(w["probabilities"].values()), p, atol=1e-5)


@pytest.mark.parametrize("side", ["right", "left"])
def test_pad_rows_pads_like_the_tokenizer(tiny, side):
    _, tok = tiny
    texts = ["good", "a long and winding review", "bad film", "fine"]
    encoded = tok(texts, truncation=True, max_length=16)
    rows = [3, 1, 0]
    tok.padding_side = side
    try:
        want = tok.pad({k: [encoded[k][i] for i in rows] for k in encoded.keys()}, return_tensors="pt")
    finally:
        tok.padding_side = "right"
    got = pad_rows(encoded, rows, tok.pad_token_id, side)
    assert set(got) == set(want.keys())
    for key in got:
        assert got[key].dtype == want[key].dtype and got[key].equal(want[key]), key


def test_the_cache_is_lru_keyed_by_normalised_text():
    cache = ResponseCache(2, lowercase=True)
    cache.put("A  good film ", ANSWER)
    assert cache.get("a good film") == ANSWER  # whitespace and case do not matter to an uncased model
    cache.put("b", ANSWER)
    cache.get("a good film")  # a is now the most recent
    cache.put("c", ANSWER)  # evicts b, the least recently used
    assert cache.get("b") is None and cache.get("c") == ANSWER
    assert (cache.hits, cache.misses) == (3, 1)
    assert ResponseCache(0, False).get("x") is None  # size 0: no cache


# ------------------------------------------------------------------------ the HTTP app


def counting_model(calls: list[list[str]], seconds: float = 0.0):
    def run(texts):
        calls.append(list(texts))
        time.sleep(seconds)
        return [ANSWER for _ in texts]

    return run


@pytest.fixture
def client():
    calls: list[list[str]] = []
    app = make_app(counting_model(calls), Settings(max_texts=3, max_chars=20), "toy", "run-1")
    with TestClient(app) as c:
        wait_ready(c)
        yield c, calls


def wait_ready(c, timeout=5.0):
    deadline = time.monotonic() + timeout
    while c.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "never ready"
        time.sleep(0.01)


def test_predict_answers_one_text_or_a_list_and_caches(client):
    c, calls = client
    one = c.post("/predict", json={"text": "a fine film"})
    assert one.status_code == 200 and one.json()["model"] == "toy" and one.json()["run"] == "run-1"
    assert one.json()["predictions"] == [{**ANSWER, "cached": False}]
    assert "app;dur=" in one.headers["server-timing"]
    many = c.post("/predict", json={"text": ["A  fine film", "dull"]}).json()["predictions"]
    assert [p["cached"] for p in many] == [False, False]  # "A  fine film" differs in case: a cased key
    assert calls[-1] == ["dull"] or calls[-1] == ["A  fine film", "dull"] or ["dull"] in calls
    again = c.post("/predict", json={"text": "a fine film"}).json()["predictions"][0]
    assert again["cached"] is True and sum(len(b) for b in calls) == 3  # the hit never reached the model


@pytest.mark.parametrize(
    "body, field",
    [
        (b"not json", "body"),
        (b'{"txt": "x"}', "text"),  # missing (and an unknown field)
        (b'{"text": "   "}', "text"),  # empty after stripping
        (b'{"text": "' + b"x" * 21 + b'"}', "text"),  # over max_chars
        (b'{"text": ["a", "b", "c", "d"]}', "text"),  # over max_texts
        (b'{"text": 5}', "text"),  # wrong type
        (b'{"text": ["a", 5]}', "text"),  # wrong type inside the list
        (b'{"text": []}', "text"),  # no text
    ],
)
def test_bad_requests_get_422_naming_the_field_and_never_reach_the_model(client, body, field):
    c, calls = client
    r = c.post("/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert any(f.startswith(field) for f in r.json()["fields"]) and r.json()["message"]
    assert calls == []
    assert 'muxl_rejected_total{reason="invalid"} 1.0' in c.get("/metrics").text


@pytest.mark.parametrize(
    "body", [b'{"text": ["a fine film", "dull"]}', b"not json", b'{"text": ["a", 5]}', b'{"text": "x" }']
)
def test_the_short_way_in_answers_as_the_fastapi_route_does(body):
    """POST /predict skips FastAPI's layers (lib.serve.app.make_app); its FastAPI route, still declared for
    /docs, gives the same status, answer (a refusal: the same fields; the messages may word a JSON error
    differently) and metrics."""
    answers = {}
    for door in ("short way", "fastapi route"):
        app = make_app(counting_model([]), Settings(max_texts=3, max_chars=20), "toy", "run-1")
        with TestClient(app if door == "short way" else app.fastapi) as c:
            wait_ready(c)
            r = c.post("/predict", content=body, headers={"content-type": "application/json"})
            out = r.json() if r.status_code == 200 else (r.json()["fields"], bool(r.json()["message"]))
            rejected = 'muxl_rejected_total{reason="invalid"} 1.0' in c.get("/metrics").text
            answers[door] = (r.status_code, out, r.headers["content-type"], rejected)
    assert answers["short way"] == answers["fastapi route"], answers
    assert "predict" in TestClient(app.fastapi).get("/openapi.json").text  # documented at /docs


def test_not_ready_until_warmed_up_then_ready_with_start_up_frozen():
    """Ready once warmed up, and what start-up made is then frozen (out of the cycle collector's scans)."""
    release = threading.Event()
    gc.unfreeze()
    app = make_app(counting_model([]), Settings(), "toy", "r", warm_up=lambda max_batch_size: release.wait(5))
    try:
        with TestClient(app) as c:
            assert c.get("/healthz").status_code == 200
            assert c.get("/readyz").status_code == 503
            r = c.post("/predict", json={"text": "x"})
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert gc.get_freeze_count() == 0
            release.set()
            wait_ready(c)
            assert gc.get_freeze_count() > 0
            assert c.post("/predict", json={"text": "x"}).status_code == 200
    finally:
        gc.unfreeze()


def serve_in_thread(app: FastAPI, port: int, ready: bool = True) -> tuple[uvicorn.Server, threading.Thread]:
    """``app`` served by uvicorn in a thread on ``port``, started (and, with ``ready``, warmed up)."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws="none"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started or (ready and httpx.get(f"http://127.0.0.1:{port}/readyz").status_code != 200):
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    return server, thread


def test_a_full_queue_answers_429_at_once_with_retry_after():
    """One batch held in the model, the queue (2 texts) full behind it: the next request is refused within
    milliseconds, with Retry-After, and counted; the held ones are answered once the model goes on."""
    release, in_model = threading.Event(), threading.Event()

    def held(texts):
        in_model.set()
        release.wait(10)
        return [ANSWER for _ in texts]

    settings = Settings(max_batch_size=1, max_wait_ms=0, max_queue=2, max_texts=1, cache_size=0)
    app = make_app(held, settings, "toy", "r")
    port = lib.launch.free_port()
    server, thread = serve_in_thread(app, port)
    url = f"http://127.0.0.1:{port}"

    async def main():
        async with httpx.AsyncClient(timeout=10) as c:
            busy = [asyncio.create_task(c.post(f"{url}/predict", json={"text": "0"}))]
            await asyncio.to_thread(in_model.wait, 10)  # the first is in the model ...
            busy += [asyncio.create_task(c.post(f"{url}/predict", json={"text": str(i)})) for i in (1, 2)]
            deadline = time.monotonic() + 10
            while "muxl_queue_depth 2.0" not in (await c.get(f"{url}/metrics")).text:  # one held, two queued
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            start = time.perf_counter()
            refused = await c.post(f"{url}/predict", json={"text": "late"})
            took = time.perf_counter() - start
            release.set()
            done = await asyncio.gather(*busy)
            metrics = (await c.get(f"{url}/metrics")).text
            return refused, took, [r.status_code for r in done], metrics

    try:
        refused, took, done, metrics = asyncio.run(main())
    finally:
        release.set()
        server.should_exit = True
        thread.join(10)
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1 and took < 0.1
    assert 0 <= float(refused.headers["server-timing"].split("dur=")[1]) < 1000 * took  # its own time, told
    assert done == [200, 200, 200]
    assert 'muxl_rejected_total{reason="overloaded"} 1.0' in metrics
    assert "muxl_batch_size_bucket" in metrics


def test_a_reconfigurable_server_changes_its_settings_between_loads():
    calls: list[list[str]] = []
    warmed: list[int] = []
    app = make_app(counting_model(calls), Settings(max_batch_size=8, cache_size=0), "toy", "r",
                   warm_up=warmed.append, allow_reconfigure=True)  # fmt: skip
    port = lib.launch.free_port()
    server, thread = serve_in_thread(app, port)
    url = f"http://127.0.0.1:{port}"
    try:
        ok = httpx.put(f"{url}/admin/settings", json={"max_batch_size": 2, "max_wait_ms": 20.0})
        assert ok.status_code == 200 and ok.json()["settings"]["max_batch_size"] == 2
        assert httpx.get(f"{url}/readyz").json()["settings"]["max_wait_ms"] == 20.0
        with httpx.Client() as c:  # 5 texts in one request: batches of at most 2 now
            assert c.post(f"{url}/predict", json={"text": list("abcde")}).status_code == 200
        assert max(len(b) for b in calls) == 2 and sum(len(b) for b in calls) == 5
        assert warmed == [8]  # smaller batches were warmed up already ...
        assert httpx.put(f"{url}/admin/settings", json={"max_batch_size": 16}).status_code == 200
        assert warmed == [8, 16]  # ... larger ones are run before any client meets them
        for bad in ({"threads": 2}, {"max_queue": 1}, {"no_such_setting": 1}, {"max_wait_ms": "soon"}):
            assert httpx.put(f"{url}/admin/settings", json=bad).status_code == 422, bad
    finally:
        server.should_exit = True
        thread.join(10)
    closed = make_app(counting_model([]), Settings(), "toy", "r")  # the default: no changes while serving
    port = lib.launch.free_port()
    server, thread = serve_in_thread(closed, port)
    try:
        assert (
            httpx.put(f"http://127.0.0.1:{port}/admin/settings", json={"max_wait_ms": 0}).status_code == 403
        )
    finally:
        server.should_exit = True
        thread.join(10)


def test_graceful_shutdown_lets_in_flight_requests_finish():
    """What SIGTERM does to uvicorn (``should_exit``) while a request is in the model: the request is
    answered, then the server stops."""
    app = make_app(counting_model([], seconds=0.6), Settings(cache_size=0), "toy", "r")
    port = lib.launch.free_port()
    server, thread = serve_in_thread(app, port)
    result = {}

    def call():
        result["r"] = httpx.post(f"http://127.0.0.1:{port}/predict", json={"text": "x"}, timeout=10)

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.3)  # in the model now
    server.should_exit = True
    caller.join(10)
    thread.join(10)
    assert result["r"].status_code == 200 and not thread.is_alive()


# ------------------------------------------------------------------------ the load generator


def test_poisson_schedule_has_the_offered_rate_and_bounds():
    t = loadgen.poisson_schedule(200, 5, 10_000, seed=0)
    assert t[0] == 0 and np.all(np.diff(t) >= 0) and t[-1] < 5
    assert len(t) == 1000  # exactly the offered rate: 200/s for 5 s
    assert abs(np.histogram(t, bins=5, range=(0, 5))[0] - 200).max() < 200 * 0.2  # spread over the run
    gaps = np.diff(t)
    assert abs(gaps.std() / gaps.mean() - 1) < 0.15  # exponential gaps: coefficient of variation ≈ 1
    assert len(loadgen.poisson_schedule(200, 5, 50, seed=0)) == 50
    with pytest.raises(loadgen.LoadError):
        loadgen.poisson_schedule(0, 5, 10, 0)


def test_a_low_rate_sends_longer_to_make_its_least_requests():
    url = "http://127.0.0.1:8000/predict"
    short = loadgen.run_spec(url, ["x"], 8, 2.5, 4000, 0)  # 20 requests in 2.5 s ...
    long = loadgen.run_spec(url, ["x"], 8, 2.5, 4000, 0, min_requests=100)  # ... or 100 in 12.5 s
    assert len(short["offsets"]) == 20 and len(long["offsets"]) == 100 and 10 < long["offsets"][-1] < 12.5
    fast = loadgen.run_spec(url, ["x"], 400, 2.5, 4000, 0, min_requests=100)  # a high rate: no change
    assert len(fast["offsets"]) == 1000
    capped = loadgen.run_spec(url, ["x"], 8, 2.5, 50, 0, min_requests=100)  # load_max_requests still holds
    assert len(capped["offsets"]) == 50


def test_zipf_draws_repeat_the_popular_texts():
    draws = loadgen.zipf_draws(2000, 500, 1.1, seed=0)
    assert np.bincount(draws, minlength=500)[0] > np.bincount(draws, minlength=500)[100] * 10
    assert 0.5 < loadgen.repeat_share(draws) < 1 and loadgen.repeat_share([1, 2, 3]) == 0


def test_only_loopback_is_loaded():
    with pytest.raises(loadgen.LoadError, match="loopback"):
        loadgen.check_loopback("http://example.com/predict")
    loadgen.check_loopback("http://127.0.0.1:8000/predict")


@pytest.mark.parametrize("client", loadgen.CLIENTS)
def test_open_loop_a_slow_server_does_not_slow_the_schedule(client):
    """A server that answers one request at a time, 50 ms each (20/s), offered 100/s for 0.4 s: every
    request still leaves on schedule (a closed loop would have taken 2 s to send them), and the latency
    from the scheduled time shows the queue that builds up; with either client."""
    app = FastAPI()
    lock = asyncio.Lock()
    collector_on: list[bool] = []  # the server shares this process: the generator's collector state, seen

    @app.post("/predict")
    async def slow():
        collector_on.append(gc.isenabled())
        async with lock:
            await asyncio.sleep(0.05)
        return {"predictions": [{"cached": False}]}

    @app.get("/healthz")
    async def healthz():
        return {}

    port = lib.launch.free_port()
    server, thread = serve_in_thread(app, port, ready=False)
    offsets = loadgen.poisson_schedule(100, 0.4, 1000, seed=1)
    spec = {
        "url": f"http://127.0.0.1:{port}/predict",
        "texts": ["x"] * len(offsets),
        "offsets": offsets.tolist(),
    }
    try:
        result = asyncio.run(loadgen.open_loop({**spec, "timeout": 10, "client": client}))
    finally:
        server.should_exit = True
        thread.join(10)
    s = loadgen.summary(result, 100)
    assert result["send_seconds"] < 0.6 and s["send_lag_p99_ms"] < 50  # sent on schedule
    assert s["requests"] == len(offsets) and s["errors"] == 0
    assert s["max_ms"] > 0.5 * 50 * len(offsets)  # the last one waited for (almost) all the others
    assert np.isnan(s["steal_share"]) or 0 <= s["steal_share"] < 1  # the hypervisor's share, where known
    assert collector_on and not any(collector_on)  # no collector pause while sending ...
    assert gc.isenabled() and gc.get_freeze_count() == 0  # ... and the collector as it was afterwards


def test_no_collector_pauses_restores_the_collector_also_on_error():
    with pytest.raises(RuntimeError), loadgen.no_collector_pauses():
        assert not gc.isenabled() and gc.get_freeze_count() > 0
        raise RuntimeError("a failed run")
    assert gc.isenabled() and gc.get_freeze_count() == 0
    gc.disable()
    try:
        with loadgen.no_collector_pauses():
            pass
        assert not gc.isenabled()  # it was off before: it stays off
    finally:
        gc.enable()


def test_an_unknown_client_is_refused_before_any_load():
    with pytest.raises(loadgen.LoadError, match="aiohttp, httpx"):
        loadgen.run_spec("http://127.0.0.1:8000/predict", ["x"], 10, 1, 10, 0, client="requests")


def test_the_sweep_bisects_towards_the_knee(monkeypatch):
    """A fake server whose p99 crosses the SLO at 130 req/s: a sweep of 50, 100, 150, 200 brackets the knee
    between 100 and 150 and each refining step halves the bracket (125 met, 137.5 missed), one run each, all
    in the one generator process."""
    spawns, rates = [], []

    async def fake_run(spec):
        rates.append(spec["rate"])
        return {"status": [200] * 10, "latency_ms": [20.0 if spec["rate"] <= 130 else 90.0] * 10,
                "server_ms": [1.0] * 10, "send_lag_ms": [0.0] * 10, "finish_seconds": 1.0}  # fmt: skip

    def fake_spawn(runs, stop_p99_ms=float("inf"), refine=None):
        spawns.append(len(runs))
        spec = {"runs": runs, "stop_p99_ms": stop_p99_ms, "refine": refine}
        return asyncio.run(loadgen.run_all(json.loads(json.dumps(spec)), run=fake_run))  # as the file has it

    monkeypatch.setattr(loadgen, "spawn", fake_spawn)
    url = "http://127.0.0.1:1/predict"
    table = loadgen.sweep(url, ["x"], [200, 50, 150, 100], 1.0, 50, 0, slo_ms=50.0, refine=2)
    assert rates == [50, 100, 150, 200, 125.0, 137.5] and spawns == [4]
    assert list(table.index) == [50, 100, 125, 137.5, 150, 200]
    k = loadgen.knee(table, 50.0)
    assert k["offered_rps"] == 125 and k["next_rps"] == 137.5 and k["max_rps_at_slo"] == 10.0
    rates.clear()
    top = loadgen.sweep(url, ["x"], [50, 100], 1.0, 50, 0, slo_ms=50.0, refine=2)
    assert list(top.index) == [50, 100] and np.isnan(loadgen.knee(top, 50.0)["next_rps"])  # none above
    rates.clear()
    stopped = loadgen.sweep(url, ["x"], [100, 200, 300], 1.0, 50, 0, slo_ms=50.0, stop_past=1.0, refine=1)
    assert rates == [100, 200, 150.0] and list(stopped.index) == [100, 150, 200]  # 300 never offered


# ------------------------------------------------------------------------ the real server, as a process


@pytest.mark.launch
def test_python_m_lib_serve_serves_a_saved_model_and_stops_on_sigterm(tiny, tmp_path):
    make, tok = tiny
    folder = lib.artifacts.save(
        tmp_path / "models" / "tiny",
        make(),
        tok,
        {"label_names": ["neg", "pos"], "params": {"max_length": 32}},
    )
    port = lib.launch.free_port()
    cmd = [
        sys.executable,
        "-m",
        "lib.serve",
        "--model-dir",
        str(folder),
        "--port",
        str(port),
        "--max-wait-ms",
        "1",
    ]
    procs: list[subprocess.Popen] = []
    try:
        proc = lib.launch.start_server(procs, "serve", cmd, port, tmp_path, dict(os.environ))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        r = httpx.post(f"{url}/predict", json={"text": ["a good film", "bad"]})
        assert r.status_code == 200 and [p["label"] for p in r.json()["predictions"]][0] in ("neg", "pos")
        assert (
            httpx.get(f"{url}/docs").status_code == 200
            and "muxl_batch_size" in httpx.get(f"{url}/metrics").text
        )
        s, _ = loadgen.measure(f"{url}/predict", ["a good film", "bad", "fine"], 50, 1.0, 100, seed=0)
        assert s["requests"] > 20 and s["errors"] == 0 and s["p99_ms"] > 0
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught (exit status -SIGTERM)
        assert proc.wait(30) in (0, -signal.SIGTERM)
        assert "Finished server process" in (tmp_path / "serve.log").read_text()
    finally:
        lib.launch.stop_all(procs)
    assert not lib.launch.port_in_use("127.0.0.1", port)
    with contextlib.suppress(psutil.NoSuchProcess):
        assert not psutil.Process(proc.pid).is_running()


# ------------------------------------------------------------------------ what `python -m lib.serve` serves


def test_serve_takes_the_reports_choice_and_the_settings_11_measured_best(tiny, outputs, monkeypatch):
    make, tok = tiny
    run_dir = lib.runner.folders.start("default", by="test", notebooks=[])
    lib.artifacts.save(run_dir / "models" / "student", make(), tok, {"label_names": ["neg", "pos"]})
    report = {"findings": {"best_artifact": {"yours": "student"}}}
    best = {"max_batch_size": 8, "max_wait_ms": 3.0, "max_queue": 100_000, "cache_size": 0, "max_texts": 1}
    served = {"findings": {"best_settings": {"student": best}}}  # the load runs' queue, cache: not kept
    for name, rec in (("10_report", report), ("11_serve", served)):
        lib.utils.atomic_write_json(run_dir / "metrics" / f"{name}.json", rec)
    lib.runner.folders.finish(run_dir, "complete")
    monkeypatch.delenv("MUXL_RUN_DIR", raising=False)
    path, name, run_id = lib.serve.cli.resolve("default", "", "", "")
    assert (path, name, run_id) == (run_dir / "models" / "student", "student", run_dir.name)
    assert lib.serve.cli.measured_settings(run_dir, "student") == {"max_batch_size": 8, "max_wait_ms": 3.0}
    assert lib.serve.cli.measured_settings(run_dir, "teacher") == {}  # not served there: the defaults
    with pytest.raises(lib.errors.ArtifactError, match="Run 00_baseline first"):
        lib.serve.cli.resolve("default", "", "teacher", "")  # a variant the run does not have: how to get it


def test_serve_without_a_report_says_how_to_get_one(outputs, capsys):
    assert lib.serve.cli.main(["--profile", "quick"]) == 2
    assert "run 10_report" in capsys.readouterr().err


def test_bad_server_settings_are_refused_before_anything_loads():
    with pytest.raises(ValueError, match="max_queue must be >= max_texts"):
        Settings(max_queue=4, max_texts=8)
    with pytest.raises(ValueError, match="model_nice must be 0 to 19"):
        Settings(model_nice=20)
    assert lib.serve.cli.main(["--model-dir", "/nonexistent", "--port", "1"]) == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a thread's own nice value is Linux's")
@pytest.mark.parametrize("nice", [0, 7])
def test_the_model_runs_at_its_nice_value_and_the_event_loop_does_not(nice):
    """The threads calling the model run ``model_nice`` above the process (the event loop's thread stays)."""
    seen: list[int] = []
    base = os.getpriority(os.PRIO_PROCESS, 0)

    def model(texts):
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return [ANSWER for _ in texts]

    app = make_app(model, Settings(model_nice=nice, cache_size=0), "toy", "r")
    with TestClient(app) as c:
        wait_ready(c)
        assert all(c.post("/predict", json={"text": t}).status_code == 200 for t in ("a", "b", "c"))
    assert seen and set(seen) == {min(base + nice, 19)}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base  # this thread: untouched
