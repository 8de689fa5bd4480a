"""The HTTP app (FastAPI) around :mod:`lib.techniques.serving`'s batcher, classifier and cache.

``POST /predict`` takes ``{"text": "..."}`` or ``{"text": ["...", ...]}`` and answers every text's label and
probabilities, the model's name and the run it came from. A request is checked before anything else happens
(422 naming the field: not JSON, a missing or empty text, a text over ``max_chars``, more than ``max_texts``
texts, a wrong type, an unknown field); cached answers are returned at once (unless the request says
``Cache-Control: no-cache``); the rest go to the batcher, or, if its queue cannot take them all, the request
is refused at once with 429 and a ``Retry-After``. Until the model is warmed up, and while the server shuts
down, ``/predict`` answers 503 (also with ``Retry-After``). ``/healthz``: the process is alive; ``/readyz``:
the model is loaded and warmed up; ``/metrics``: Prometheus' text format; ``/docs``: the OpenAPI page. Each
answer carries a ``Server-Timing`` header (``app;dur=``: ms from the handler's start, the body parsed and
checked, to its answer) so that a client can tell the server's time from the network's and its own.
"""

# no `from __future__ import annotations`: FastAPI reads /predict's body type, built in make_app, at run time
import asyncio
import contextlib
import gc
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import asdict, dataclass, replace
from typing import Annotated, Any, Union

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, create_model
from starlette.datastructures import Headers

from ..techniques.serving import MicroBatcher, Overloaded, ResponseCache

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass(frozen=True)
class Settings:
    """How the server batches, caches and refuses (``python -m lib.serve --help`` says each)."""

    max_batch_size: int = 32
    max_wait_ms: float = 2.0
    max_queue: int = 256
    cache_size: int = 4096
    max_texts: int = 32
    max_chars: int = 2000
    max_padding: float = 0.25
    threads: int = 1
    model_nice: int = 10

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be {rule}"
            for name, ok, rule in (
                ("max_batch_size", self.max_batch_size >= 1, ">= 1"),
                ("max_wait_ms", self.max_wait_ms >= 0, ">= 0"),
                ("max_queue", self.max_queue >= self.max_texts, f">= max_texts ({self.max_texts})"),
                ("cache_size", self.cache_size >= 0, ">= 0 (0: no cache)"),
                ("max_texts", self.max_texts >= 1, ">= 1"),
                ("max_chars", self.max_chars >= 1, ">= 1"),
                ("threads", self.threads >= 1, ">= 1"),
                ("model_nice", 0 <= self.model_nice <= 19, "0 to 19 (0: as the event loop)"),
            )
            if not ok
        ]
        if problems:
            raise ValueError("bad server settings: " + "; ".join(problems))


class Metrics:
    """The server's Prometheus metrics, in a registry of its own (several apps in one process stay apart)."""

    def __init__(self, queue_depth: Callable[[], int], hit_ratio: Callable[[], float]):
        self.registry = r = CollectorRegistry()
        self.latency = Histogram(
            "muxl_request_seconds",
            "Time of a /predict request in its handler (body parsed) to its answer, by outcome",
            ["outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "muxl_batch_size", "Texts per model call", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "muxl_batch_seconds", "Time of one batch in the model", buckets=LATENCY_BUCKETS, registry=r
        )
        self.rejected = Counter("muxl_rejected", "Requests refused, by reason", ["reason"], registry=r)
        self.texts = Counter("muxl_texts", "Texts answered, by source", ["source"], registry=r)
        Gauge("muxl_queue_depth", "Texts waiting for the model now", registry=r).set_function(queue_depth)
        Gauge("muxl_cache_hit_ratio", "Share of texts answered from the cache", registry=r).set_function(
            hit_ratio
        )

    def on_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)


def request_model(max_texts: int, max_chars: int) -> type[BaseModel]:
    """The body of ``POST /predict``: one text or a list of texts, each non-empty after stripping and at most
    ``max_chars`` characters, at most ``max_texts`` texts; strict types, no other field."""
    one = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=max_chars)]
    many = Annotated[list[one], Field(min_length=1, max_length=max_texts)]
    return create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid", strict=True),
        text=(
            Union[one, many],  # noqa: UP007 (the types are built here, at run time)
            Field(
                description=f"a text, or a list of at most {max_texts} texts, of 1 to {max_chars} characters",
                examples=["a gripping, funny and humane film", ["dull.", "a small gem"]],
            ),
        ),
    )


def refuse(status: int, reason: str, message: str, retry_after_s: float, start: float) -> JSONResponse:
    """A refusal at once: ``Retry-After`` (whole seconds, at least 1) and, like every answer, the server's
    own time since the handler started (``Server-Timing``)."""
    return JSONResponse(
        {"detail": message, "reason": reason},
        status_code=status,
        headers={
            "Retry-After": str(max(1, round(retry_after_s))),
            "Server-Timing": f"app;dur={1000 * (time.perf_counter() - start):.3f}",
        },
    )


Scope = MutableMapping[str, Any]
ASGI = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]
LOOPBACK = ("127.0.0.1", "::1", "localhost")  # who may change a running server's settings
FIXED = (
    "max_texts",
    "max_chars",
    "threads",
    "model_nice",
)  # settings a running server cannot change (its request schema, pools, a thread's niceness only rises)


def niced(classify: Callable[[list[str]], Any], nice: int) -> Callable[[list[str]], Any]:
    """``classify``, run at ``nice`` on each thread that calls it (Linux: a thread is a task with a nice value
    of its own; elsewhere as it is). The model's threads then yield the CPU to the event loop, which answers,
    refuses and forms batches: on two cores shared with a load generator, the loop otherwise waits behind
    the model for a time slice. Intel AMX machine, 2× overload, six runs each: the slowest refusal 4.3–17 ms
    from its scheduled send at nice 10 (five runs of six within 10 ms), 6.5–13.7 at 0 (three of six); the
    requests answered per second 701–758 against 662–727 (DEVELOPERS.md)."""
    if nice == 0 or not sys.platform.startswith("linux"):
        return classify
    done: set[int] = set()

    def run(texts: list[str]) -> Any:
        tid = threading.get_native_id()
        if tid not in done:
            os.setpriority(os.PRIO_PROCESS, tid, nice)  # raising one's own nice needs no privilege
            done.add(tid)
        return classify(texts)

    return run


def make_app(
    classify: Callable[[list[str]], list[dict[str, Any]]],
    settings: Settings,
    model: str,
    run: str,
    warm_up: Callable[[int], Any] = lambda max_batch_size: None,
    lowercase: bool = False,
    allow_reconfigure: bool = False,
) -> ASGI:
    """The app serving ``classify`` (texts → ``[{"label", "probabilities"}]``, e.g. a
    :class:`lib.techniques.serving.Classifier`). ``warm_up(max_batch_size)`` runs in a thread once the server
    listens; ``/readyz`` says ready when it has finished. ``lowercase``: the model ignores case (cache keys
    too). ``allow_reconfigure``: ``PUT /admin/settings`` from this machine changes the batching, queue and
    cache settings of the running server (what 11_serve does between load runs instead of a restart).

    ``POST /predict`` takes a short way in: FastAPI's layers (middleware, dependency solving) cost the event
    loop several times the request's own work, on the CPU the model and the load generator share (a GIL
    profile under load: 70 % of the held time). The same body model checks the request, the same code
    answers it, and the FastAPI route stays declared (``/docs``, the schema) and answers the same way."""
    state: dict[str, Any] = {"ready": False, "stopping": False, "warm_up_error": None, "warmed": 0}
    live: dict[str, Any] = {"settings": settings, "cache": ResponseCache(settings.cache_size, lowercase)}
    tasks: list[asyncio.Task] = []
    model_call = niced(classify, settings.model_nice)

    def start_batcher(s: Settings) -> None:
        """A batcher for ``s`` takes every new request; the one before, if any, finishes what it holds and
        idles (cancelling it mid-batch would leave its callers without an answer)."""
        batcher = MicroBatcher(
            model_call, s.max_batch_size, s.max_wait_ms, s.max_queue, app.state.metrics.on_batch
        )
        live["batcher"] = batcher
        tasks.append(asyncio.create_task(batcher.run()))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.metrics = Metrics(lambda: live["batcher"].queue.qsize(), lambda: live["cache"].hit_ratio)
        start_batcher(settings)

        async def warm() -> None:
            try:
                await asyncio.to_thread(warm_up, settings.max_batch_size)
                # what start-up made (torch, transformers, the model: ~420k objects) lives as long as the
                # server: frozen, the cycle collector no longer walks it, where a full collection took 156 ms
                # with every request waiting (measured on the Intel AMX machine; DEVELOPERS.md)
                gc.collect()
                gc.freeze()
                state["ready"], state["warmed"] = True, settings.max_batch_size
            except Exception as e:  # /readyz says why; /predict keeps refusing
                state["warm_up_error"] = f"{type(e).__name__}: {e}"

        tasks.append(asyncio.create_task(warm()))
        try:
            yield
        finally:  # uvicorn has let in-flight requests finish before it gets here
            state["stopping"], state["ready"] = True, False
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    app = FastAPI(
        title="Model UX Lab classifier",
        summary=f"{model} from run {run}",
        description="Sentiment of review snippets; see notebooks/11_serve.ipynb.",
        lifespan=lifespan,
    )
    body = request_model(settings.max_texts, settings.max_chars)

    def invalid_response(errors: list[dict[str, Any]]) -> JSONResponse:
        """422 naming each field at fault; ``errors``: pydantic's, each ``loc`` starting with "body"."""
        errors = jsonable_encoder(errors)

        def where(e: dict) -> str:  # "text", "text.1" (the second text), or "body" (not JSON, not an object)
            path = [str(p) for p in e["loc"][1:]] if e["type"] != "json_invalid" else []
            return ".".join(p for p in path if not p.startswith(("str", "list[", "constrained-"))) or "body"

        names = sorted({where(e).split(".")[0] for e in errors})
        message = "; ".join(f"{where(e)}: {e['msg']}" for e in errors)
        return JSONResponse({"detail": errors, "fields": names, "message": message}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        if request.url.path == "/predict":
            app.state.metrics.rejected.labels("invalid").inc()
        return invalid_response(list(exc.errors()))

    @app.get("/healthz", summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "live"}

    @app.get("/readyz", summary="The model is loaded and warmed up")
    async def readyz() -> JSONResponse:
        ready = state["ready"] and not state["stopping"]
        status = "ready" if ready else ("stopping" if state["stopping"] else "warming up")
        if state["warm_up_error"]:
            status = f"failed to warm up: {state['warm_up_error']}"
        payload = {"status": status, "model": model, "run": run, "settings": asdict(live["settings"])}
        return JSONResponse(payload, status_code=200 if ready else 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.put("/admin/settings", summary="Change batching, queue and cache settings (--allow-reconfigure)")
    async def reconfigure(changes: dict[str, Any], http: Request) -> JSONResponse:
        if not allow_reconfigure or (http.client and http.client.host) not in LOOPBACK:
            return JSONResponse(
                {"detail": "start the server with --allow-reconfigure; from this machine"}, 403
            )
        if fixed := sorted(set(changes) & set(FIXED)):
            return JSONResponse({"detail": f"{', '.join(fixed)} cannot change while serving: restart"}, 422)
        try:
            new = replace(live["settings"], **changes)
        except (TypeError, ValueError) as e:  # an unknown name, or a value Settings refuses
            return JSONResponse({"detail": str(e)}, 422)
        if new.max_batch_size > state["warmed"]:  # new batch shapes: run them before any client does
            await asyncio.to_thread(warm_up, new.max_batch_size)
            state["warmed"] = new.max_batch_size
        if hasattr(classify, "max_padding"):
            classify.max_padding = new.max_padding
        if new.cache_size != live["settings"].cache_size:
            live["cache"] = ResponseCache(new.cache_size, lowercase)
        live["settings"] = new
        start_batcher(new)
        return JSONResponse({"settings": asdict(new)})

    @app.post("/predict", summary="Label one text or a list of texts")
    async def predict(req: body, http: Request) -> JSONResponse:  # type: ignore[valid-type]
        return await answer(req, "no-cache" in http.headers.get("cache-control", ""))

    async def answer(req: BaseModel, fresh_only: bool) -> JSONResponse:
        """The answer to a checked request; ``fresh_only``: the client wants the model's answer, not the
        cache's (``Cache-Control: no-cache``)."""
        start = time.perf_counter()
        m, batcher, cache, s = app.state.metrics, live["batcher"], live["cache"], live["settings"]
        if not state["ready"] or state["stopping"]:
            m.rejected.labels("not_ready").inc()
            why = "shutting down" if state["stopping"] else "warming up"
            return refuse(503, "not_ready", f"the server is {why}: retry shortly", 1.0, start)
        texts = [req.text] if isinstance(req.text, str) else list(req.text)  # type: ignore[attr-defined]
        answers: list[Any] = [None if fresh_only else cache.get(t) for t in texts]
        missing = [i for i, a in enumerate(answers) if a is None]
        if len(missing) > s.max_queue - batcher.queue.qsize():
            m.rejected.labels("overloaded").inc()
            m.latency.labels("rejected").observe(time.perf_counter() - start)
            return refuse(
                429, "overloaded", "too many texts waiting: retry later", batcher.retry_after_s(), start
            )
        try:
            fresh = await asyncio.gather(*(batcher.submit(texts[i]) for i in missing))
        except Overloaded as e:  # another request took the last places between the check and the submit
            m.rejected.labels("overloaded").inc()
            return refuse(429, "overloaded", str(e), e.retry_after_s, start)
        except Exception as e:  # the model failed on this batch: this request fails, the server goes on
            m.latency.labels("error").observe(time.perf_counter() - start)
            return JSONResponse({"detail": f"the model failed: {type(e).__name__}: {e}"}, status_code=500)
        for i, answer in zip(missing, fresh, strict=True):
            cache.put(texts[i], answer)
            answers[i] = answer
        m.texts.labels("cache").inc(len(texts) - len(missing))
        m.texts.labels("model").inc(len(missing))
        seconds = time.perf_counter() - start
        m.latency.labels("cached" if not missing else "model").observe(seconds)
        out = [{**a, "cached": i not in missing} for i, a in enumerate(answers)]
        return JSONResponse(
            {"model": model, "run": run, "predictions": out},
            headers={"Server-Timing": f"app;dur={1000 * seconds:.3f}"},
        )

    async def fast_predict(scope: Scope, receive: Callable, send: Callable) -> None:
        raw, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":  # the client went away before its body arrived
                return
            raw += message.get("body", b"")
            more = message.get("more_body", False)
        try:
            req = body.model_validate_json(bytes(raw))
        except ValidationError as e:  # as FastAPI reports it: each error's place starts with "body"
            app.state.metrics.rejected.labels("invalid").inc()
            response = invalid_response([{**err, "loc": ("body", *err["loc"])} for err in e.errors()])
        else:
            response = await answer(req, "no-cache" in Headers(scope=scope).get("cache-control", ""))
        await response(scope, receive, send)

    async def serve(scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/predict":
            await fast_predict(scope, receive, send)
        else:  # everything else, and the lifespan (start-up, warm-up, shutdown), is FastAPI's
            await app(scope, receive, send)

    serve.fastapi = app  # type: ignore[attr-defined]  (its routes, its OpenAPI schema)
    return serve
