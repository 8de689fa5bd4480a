"""An open-loop load generator that tells the truth about tails.

A closed-loop tester (N users, each sending its next request when the last one returns) slows down when the
server does: the requests that would have waited are never sent, and the tail it reports hides the queueing
("coordinated omission", Gil Tene). Here requests leave on a schedule fixed in advance — Poisson arrivals at
the offered rate (exponential gaps, seeded) — whether or not earlier ones have returned, and each latency is
measured from the request's **scheduled** send time: a generator that falls behind shows up as latency, not as
a gentler load. Percentiles are taken over every sample of a run (never averages of per-second percentiles).

It runs in a process of its own (:func:`spawn` starts ``python -m lib.techniques.loadgen SPEC OUT``), so
that its event loop and the server's never share a GIL, with an asyncio HTTP client and no connection limit (a
pool that makes requests wait for a connection would be a closed loop again): ``aiohttp`` by default, or
``httpx`` (``client=``). Where the generator and the server share the cores, the client's own CPU per
request is taken from the server, and past its own limit the generator falls behind its schedule: against a
server whose model does nothing, httpx's client fell behind at a lower rate than aiohttp's (DEVELOPERS.md has
the measurement; ``send_lag_p99_ms`` shows it in every run). Loopback only, and bounded: at most
``max_requests`` requests and ``seconds`` of sending. It can also scrape the server's ``/metrics`` during the
run (the queue depth over time).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx
import numpy as np
import pandas as pd
from prometheus_client.parser import text_string_to_metric_families

from ..errors import LabError
from ..utils import cpu_ticks, steal_share

try:  # a faster event loop (uvicorn[standard] installs it; not on Windows)
    import uvloop
except ImportError:
    uvloop = None
try:  # the open-files limit (POSIX)
    import resource
except ImportError:
    resource = None

LOOPBACK = ("127.0.0.1", "localhost", "::1")
CLIENTS = ("aiohttp", "httpx")


class LoadError(LabError, RuntimeError):
    """A load run could not be done (a non-loopback URL, a bad spec, the generator failed)."""


def poisson_schedule(rate: float, seconds: float, max_requests: int, seed: int) -> np.ndarray:
    """Send times (seconds from the start) of a Poisson stream at ``rate`` requests/s over ``seconds``, given
    its count: exactly ``rate * seconds`` requests (at most ``max_requests``) at independent uniform times,
    which is how a Poisson process places a given number of arrivals (the gaps stay exponential). A free
    count would vary by ±√n (±3.6 % at 770 requests) and with it the rate a run offers; the first request
    leaves at once."""
    if rate <= 0 or seconds <= 0 or max_requests < 1:
        raise LoadError(f"rate, seconds and max_requests must be > 0 (got {rate}, {seconds}, {max_requests})")
    n = max(1, min(max_requests, round(rate * seconds)))
    times = np.sort(np.random.default_rng(seed).uniform(0.0, seconds, size=n))
    return times - times[0]


def zipf_draws(n: int, pool: int, exponent: float, seed: int) -> np.ndarray:
    """``n`` indices into a pool of ``pool`` texts, text ``k`` (0-based) drawn with probability
    ∝ 1 / (k + 1)^exponent: a few texts very often, most rarely (what a cache meets in practice)."""
    p = 1.0 / np.arange(1, pool + 1) ** exponent
    return np.random.default_rng(seed).choice(pool, size=n, p=p / p.sum())


def repeat_share(indices: Sequence[int]) -> float:
    """The share of requests whose text was already sent earlier in the stream (an unbounded cache's hit
    ratio)."""
    return 1.0 - len(set(indices)) / len(indices) if len(indices) else 0.0


def check_loopback(url: str) -> None:
    host = urlsplit(url).hostname
    if host not in LOOPBACK:
        raise LoadError(f"load runs stay on this machine: {url} is not a loopback address (use 127.0.0.1)")


def queue_depth(metrics_text: str) -> float | None:
    for family in text_string_to_metric_families(metrics_text):
        if family.name == "muxl_queue_depth":
            return float(family.samples[0].value)
    return None


def histogram(metrics_text: str, name: str) -> pd.Series:
    """A Prometheus histogram of ``/metrics`` text as counts per bucket (not cumulative), indexed by each
    bucket's upper bound (``le``)."""
    for family in text_string_to_metric_families(metrics_text):
        if family.name == name:
            buckets = [(float(s.labels["le"]), s.value) for s in family.samples if s.name.endswith("_bucket")]
            le, cumulative = zip(*sorted(buckets), strict=True)
            return pd.Series(np.diff([0.0, *cumulative]), index=list(le))
    raise LoadError(f"no histogram {name} in the metrics")


@contextlib.asynccontextmanager
async def http_client(kind: str, timeout: float):
    """``get(url) -> text`` and ``post(url, body, headers) -> (status, headers, json or None)`` of one asyncio
    client (``kind``: one of :data:`CLIENTS`), with no connection limit; a failed request (timeout, refused
    connection) raises :class:`ConnectionError`."""
    if kind == "httpx":
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:

            async def get(url: str) -> str:
                try:
                    return (await client.get(url)).text
                except httpx.HTTPError as e:
                    raise ConnectionError(str(e)) from e

            async def post(url: str, body: Any, headers: dict[str, str]):
                try:
                    r = await client.post(url, json=body, headers=headers)
                except httpx.HTTPError as e:
                    raise ConnectionError(str(e)) from e
                return r.status_code, r.headers, r.json() if r.status_code == 200 else None

            yield get, post
        return
    if kind != "aiohttp":
        raise LoadError(f"client must be one of {', '.join(CLIENTS)} (got {kind!r})")
    connector = aiohttp.TCPConnector(limit=0)  # no pool limit: an open loop never waits for a connection
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)
    ) as client:

        async def get(url: str) -> str:
            try:
                async with client.get(url) as r:
                    return await r.text()
            except (aiohttp.ClientError, TimeoutError) as e:
                raise ConnectionError(str(e)) from e

        async def post(url: str, body: Any, headers: dict[str, str]):
            try:
                async with client.post(url, json=body, headers=headers) as r:
                    return r.status, r.headers, await r.json() if r.status == 200 else None
            except (aiohttp.ClientError, TimeoutError) as e:
                raise ConnectionError(str(e)) from e

        yield get, post


async def open_loop(spec: dict[str, Any]) -> dict[str, Any]:
    """One open-loop run: ``spec`` holds ``url``, ``texts`` (one per request, in order), ``offsets`` (their
    send times), ``timeout`` and optionally ``metrics_url`` / ``scrape_every``."""
    texts, offsets, n = spec["texts"], spec["offsets"], len(spec["offsets"])
    scheduled, lag, latency = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    status, server_ms, cached = np.zeros(n, dtype=int), np.full(n, np.nan), np.zeros(n, dtype=bool)
    depth: list[tuple[float, float]] = []
    async with http_client(spec.get("client", CLIENTS[0]), spec["timeout"]) as (get, post):
        await get(spec["url"].rsplit("/", 1)[0] + "/healthz")  # one connection up before the clock starts
        with no_collector_pauses():  # a collection would stop the send schedule for milliseconds
            t0, ticks = time.perf_counter() + 0.05, cpu_ticks()

            async def one(i: int) -> None:
                scheduled[i] = t0 + offsets[i]
                lag[i] = time.perf_counter() - scheduled[i]
                try:
                    status[i], headers, body = await post(
                        spec["url"], {"text": texts[i]}, spec.get("headers") or {}
                    )
                    timing = headers.get("server-timing", "")  # answers and refusals both carry it
                    server_ms[i] = float(timing.split("dur=")[1]) if "dur=" in timing else np.nan
                    if body is not None:
                        cached[i] = bool(body["predictions"][0].get("cached"))
                except ConnectionError:
                    status[i] = -1  # no answer (timeout, connection refused)
                latency[i] = 1000 * (time.perf_counter() - scheduled[i])

            async def scrape() -> None:
                while True:
                    try:
                        depth.append(
                            (time.perf_counter() - t0, queue_depth(await get(spec["metrics_url"])) or 0.0)
                        )
                    except ConnectionError:
                        pass
                    await asyncio.sleep(spec.get("scrape_every", 0.1))

            scraper = asyncio.create_task(scrape()) if spec.get("metrics_url") else None
            tasks = []
            for i in range(n):  # the schedule never waits for an answer
                delay = t0 + offsets[i] - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(i)))
            send_seconds = time.perf_counter() - t0
            await asyncio.gather(*tasks)
            finish_seconds = time.perf_counter() - t0  # until the last answer
        stolen = steal_share(ticks, cpu_ticks())  # the hypervisor's share of this machine's CPU meanwhile
        if scraper is not None:
            scraper.cancel()
    return {
        "latency_ms": latency.tolist(),
        "send_lag_ms": (1000 * lag).tolist(),
        "status": status.tolist(),
        "server_ms": server_ms.tolist(),
        "cached": cached.tolist(),
        "send_seconds": send_seconds,
        "finish_seconds": finish_seconds,
        "queue_depth": depth,
        "steal_share": stolen,
    }


@contextlib.contextmanager
def no_collector_pauses():
    """Python's cycle collector off for the ``with`` block, after one collection with what survives it frozen
    (left out of later scans), as ``timeit`` does around its timings; on again afterwards, also on an error.
    A full collection walks every tracked object: 15 ms for this process's ~80k at its start, more as a run
    adds tasks and answers, and the send schedule stands still meanwhile. On the Intel AMX machine at 1,224
    requests/s such pauses put the generator's send lag p99 at 3–32 ms and the slowest refusal at 22–61 ms
    from its scheduled send (three runs); without them 1.5–2.3 and 6–21 ms (six; DEVELOPERS.md). Reference
    counting still frees what a run drops; only reference cycles wait for the block's end."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()
        if was_enabled:
            gc.enable()


def pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def summary(result: dict[str, Any], offered_rps: float) -> dict[str, Any]:
    """Percentiles (ms, over every answered request), throughput and refusals of one run."""
    status = np.asarray(result["status"])
    latency = np.asarray(result["latency_ms"], dtype=float)
    ok = status == 200
    refused = np.isin(status, (429, 503))
    server = np.asarray(result["server_ms"], dtype=float)
    return {
        "offered_rps": offered_rps,
        "requests": int(len(status)),
        "achieved_rps": float(
            ok.sum() / max(result["finish_seconds"], 1e-9)
        ),  # answered/s, to the last answer
        "p50_ms": pct(latency[ok], 50),
        "p95_ms": pct(latency[ok], 95),
        "p99_ms": pct(latency[ok], 99),
        "max_ms": float(latency[ok].max()) if ok.any() else float("nan"),
        "server_p99_ms": pct(server[ok & ~np.isnan(server)], 99),  # the answered ones' time in the handler
        "refused_share": float(refused.mean()) if len(status) else 0.0,
        "refused_p99_ms": pct(latency[refused], 99),
        "refused_max_ms": float(latency[refused].max()) if refused.any() else float("nan"),
        "refused_server_p99_ms": pct(
            server[refused & ~np.isnan(server)], 99
        ),  # the server's own time to refuse
        "refused_server_max_ms": float(np.nanmax(server[refused]))
        if (refused & ~np.isnan(server)).any()
        else float("nan"),
        "errors": int((~ok & ~refused).sum()),
        "send_lag_p99_ms": pct(np.asarray(result["send_lag_ms"], dtype=float), 99),
        "steal_share": float("nan") if result.get("steal_share") is None else result["steal_share"],
    }


def run_spec(
    url: str,
    texts: Sequence[str],
    rate: float,
    seconds: float,
    max_requests: int,
    seed: int,
    draws: Sequence[int] | None = None,
    timeout: float = 10.0,
    metrics_url: str = "",
    headers: dict[str, str] | None = None,
    client: str = CLIENTS[0],
    min_requests: int = 1,
) -> dict[str, Any]:
    """One open-loop run, planned: its schedule (seeded) and the text of each request — ``texts[draws[i]]``
    if ``draws`` is given (e.g. :func:`zipf_draws`), else ``texts`` in turn; ``client``: one of
    :data:`CLIENTS`. A low rate sends for longer than ``seconds`` to make ``min_requests`` requests (the p99
    of a dozen requests is their maximum)."""
    check_loopback(url)
    if client not in CLIENTS:
        raise LoadError(f"client must be one of {', '.join(CLIENTS)} (got {client!r})")
    most = min(max_requests, len(draws)) if draws is not None else max_requests
    offsets = poisson_schedule(rate, max(seconds, min_requests / rate), most, seed)
    picks = [int(d) for d in draws[: len(offsets)]] if draws is not None else list(range(len(offsets)))
    picks = [i % len(texts) for i in picks]
    return {
        "url": url, "rate": rate, "texts": [texts[i] for i in picks], "draws": picks,
        "offsets": offsets.tolist(), "timeout": timeout, "metrics_url": metrics_url, "headers": headers or {},
        "client": client,
    }  # fmt: skip


def spawn(
    runs: Sequence[dict[str, Any]], stop_p99_ms: float = float("inf"), refine: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Do ``runs`` (:func:`run_spec`) one after the other in a fresh process (``python -m
    lib.techniques.loadgen``), stopping after the first whose p99 is over ``stop_p99_ms``, then the bisection
    runs of ``refine`` (:func:`run_all`) in the same process; their raw results, each with its ``rate``."""
    with tempfile.TemporaryDirectory(prefix="muxl-load-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec = {"runs": list(runs), "stop_p99_ms": stop_p99_ms, "refine": refine}
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
        seconds = sum(r["offsets"][-1] + r["timeout"] for r in runs if r["offsets"])
        if refine and runs:  # a bisection rate is at least the lowest rate / 2^steps (bisecting towards 0)
            plan, slowest = refine["plan"], min(r["rate"] for r in runs) / 2 ** refine["steps"]
            longest = max(plan["seconds"], plan["min_requests"] / slowest)  # how long such a run sends
            seconds += refine["steps"] * (longest + runs[0]["timeout"])
        proc = subprocess.run(
            [sys.executable, "-m", "lib.techniques.loadgen", str(spec_path), str(out_path)],
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            timeout=seconds + 60,
        )
        if proc.returncode != 0 or not out_path.exists():
            raise LoadError(
                f"the load generator failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}"
            )
        return json.loads(out_path.read_text(encoding="utf-8"))


def measure(url: str, texts: Sequence[str], rate: float, seconds: float, max_requests: int, seed: int,
            **options: Any) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """Offer ``rate`` requests/s (Poisson) of one text each to ``url`` for ``seconds`` (at most
    ``max_requests``), from a process of its own (``options``: those of :func:`run_spec`, e.g. ``draws``,
    ``headers``, ``metrics_url``). Returns ``(summary, raw result)``."""
    spec = run_spec(url, texts, rate, seconds, max_requests, seed, **options)
    result = {**spawn([spec])[0], "draws": spec["draws"]}
    return summary(result, rate), result


def sweep(
    url: str,
    texts: Sequence[str],
    rates: Sequence[float],
    seconds: float,
    max_requests: int,
    seed: int,
    slo_ms: float,
    stop_past: float = 4.0,
    refine: int = 0,
    client: str = CLIENTS[0],
    min_requests: int = 1,
) -> pd.DataFrame:
    """Open-loop runs at each offered rate, lowest first, in one generator process, one row each; it stops
    after the first rate whose p99 is over ``stop_past`` times the SLO (past saturation a higher rate only
    makes the queue longer). Then ``refine`` bisection steps between the knee and the next rate up, in the
    same process: each halves the interval the true knee lies in. ``client``, ``min_requests``: as for
    :func:`run_spec`."""
    rates = sorted(rates)
    plan = {"url": url, "texts": list(texts), "seconds": seconds, "max_requests": max_requests,
            "client": client, "min_requests": min_requests}  # fmt: skip
    runs = [run_spec(rate=r, seed=seed + k, **plan) for k, r in enumerate(rates)]
    refining = (
        {"steps": refine, "slo_ms": slo_ms, "seed": seed + len(rates), "plan": plan} if refine else None
    )
    results = spawn(runs, stop_past * slo_ms, refining)
    table = pd.DataFrame([summary(res, res["rate"]) for res in results])
    return table.sort_values("offered_rps").set_index("offered_rps")


def within_slo(table: pd.DataFrame, slo_ms: float) -> pd.Series:
    """The rows of a :func:`sweep` whose p99 is within ``slo_ms`` with nothing refused or failed."""
    return (table["p99_ms"] <= slo_ms) & (table["refused_share"] == 0) & (table["errors"] == 0)


def knee(table: pd.DataFrame, slo_ms: float) -> dict[str, float]:
    """The highest offered rate of a :func:`sweep` within the SLO (:func:`within_slo`), what was achieved
    there (``max_rps_at_slo``: requests answered per second), and ``next_rps``, the lowest rate tried above it
    (the true knee lies between; NaN if none was tried). Zeros and NaNs if no rate met the SLO."""
    ok = table[within_slo(table, slo_ms)]
    nan = float("nan")
    above = table.index[table.index > (ok.index.max() if len(ok) else 0.0)]
    next_rps = float(above.min()) if len(above) else nan
    if ok.empty:
        return {"offered_rps": 0.0, "max_rps_at_slo": 0.0, "p50_ms": nan, "p95_ms": nan, "p99_ms": nan,
                "next_rps": next_rps}  # fmt: skip
    best = ok.index.max()
    row = ok.loc[best]
    return {
        "offered_rps": float(best),
        "max_rps_at_slo": float(row["achieved_rps"]),
        **{k: float(row[k]) for k in ("p50_ms", "p95_ms", "p99_ms")},
        "next_rps": next_rps,
    }


def bisect_rate(results: Sequence[dict[str, Any]], slo_ms: float) -> float | None:
    """The next rate to try: halfway between the knee of ``results`` so far and the lowest rate tried above
    it; ``None`` if the highest rate tried met the SLO (nothing above to bisect to)."""
    table = pd.DataFrame([summary(res, res["rate"]) for res in results]).set_index("offered_rps")
    bracket = knee(table, slo_ms)
    return None if np.isnan(bracket["next_rps"]) else (bracket["offered_rps"] + bracket["next_rps"]) / 2


async def run_all(spec: dict[str, Any], run: Any = None) -> list[dict[str, Any]]:
    """The runs of a :func:`spawn` spec in turn, up to the first whose p99 is over ``stop_p99_ms``; then, if
    the spec has ``refine`` (``steps``, ``slo_ms``, ``seed`` and the ``plan`` of :func:`run_spec`), that many
    bisection runs (:func:`bisect_rate`). ``run``: the coroutine doing one run (:func:`open_loop`)."""
    run = run or open_loop
    results = []
    for one in spec["runs"]:
        check_loopback(one["url"])
        results.append({**await run(one), "rate": one["rate"]})
        if (
            not summary(results[-1], one["rate"])["p99_ms"] <= spec["stop_p99_ms"]
        ):  # NaN (no answer) stops too
            break
    refine = spec.get("refine") or {"steps": 0}
    for step in range(refine["steps"] if results else 0):
        rate = bisect_rate(results, refine["slo_ms"])
        if rate is None:
            break
        one = run_spec(rate=rate, seed=refine["seed"] + step, **refine["plan"])
        results.append({**await run(one), "rate": rate})
    return results


def main(argv: Sequence[str]) -> int:
    # a socket per request in flight: past saturation that can pass 1024 (a usual limit of open files)
    if resource is not None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = 65536 if hard == resource.RLIM_INFINITY else hard
        if soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    results = uvloop.run(run_all(spec)) if uvloop is not None else asyncio.run(run_all(spec))
    Path(argv[1]).write_text(json.dumps(results), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
