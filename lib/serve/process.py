"""The server as a process of its own, for a notebook or a test: a free port on 127.0.0.1, ``python -m
lib.serve`` started in its own session, waited for until ``/readyz`` says ready, and always stopped (SIGTERM,
then SIGKILL of whatever is left) when the ``with`` block ends, also on an error or Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .. import launch
from .app import FIXED, Settings


@dataclass(frozen=True)
class Running:
    """A server that is up: its base ``url`` (``http://127.0.0.1:PORT``), process, log and settings."""

    url: str
    proc: subprocess.Popen
    log: Path
    settings: Settings

    @property
    def predict_url(self) -> str:
        return f"{self.url}/predict"

    @property
    def metrics_url(self) -> str:
        return f"{self.url}/metrics"


def command(model_dir: Path, port: int, settings: Settings, reconfigurable: bool = False) -> list[str]:
    """The ``python -m lib.serve`` command serving ``model_dir`` with ``settings`` on 127.0.0.1:``port``."""
    flags = [x for k, v in asdict(settings).items() for x in (f"--{k.replace('_', '-')}", str(v))]
    extra = ["--allow-reconfigure"] if reconfigurable else []
    return [
        sys.executable,
        "-m",
        "lib.serve",
        "--model-dir",
        str(model_dir),
        "--port",
        str(port),
        *flags,
        *extra,
    ]


def reconfigure(server: Running, **changes: Any) -> Running:
    """Change a running server's batching, queue or cache settings (it was started ``reconfigurable``; the
    settings it cannot change may be given at their present values); the server as it now is. Settings it
    refuses are a :class:`lib.launch.LaunchError` with its reason."""
    changes = {k: v for k, v in changes.items() if k not in FIXED or v != getattr(server.settings, k)}
    request = urllib.request.Request(
        f"{server.url}/admin/settings",
        data=json.dumps(changes).encode(),
        method="PUT",
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            new = json.loads(r.read())["settings"]
    except urllib.error.HTTPError as e:
        raise launch.LaunchError(
            f"the server refused {changes}: {e.read().decode(errors='replace')}"
        ) from None
    return replace(server, settings=Settings(**new))


def get_json(url: str, timeout: float = 2.0) -> tuple[int, dict[str, Any]]:
    """``(status, body)`` of a GET; status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, {}


@contextlib.contextmanager
def running(
    model_dir: Path | str,
    settings: Settings,
    logs: Path | str,
    reconfigurable: bool = False,
    timeout: float = 180.0,
) -> Iterator[Running]:
    """Serve ``model_dir`` with ``settings`` for the duration of the ``with`` block (see the module's doc);
    ``reconfigurable``: :func:`reconfigure` may change its settings. A :class:`lib.launch.LaunchError` with
    the log's tail if it never gets ready."""
    logs = Path(logs)
    logs.mkdir(parents=True, exist_ok=True)
    port = launch.free_port()
    name = f"serve-{port}"
    procs: list[subprocess.Popen] = []
    env = {**os.environ, "OMP_NUM_THREADS": str(settings.threads), "MUXL_THREADS": str(settings.threads)}
    try:
        proc = launch.start_server(
            procs, name, command(Path(model_dir), port, settings, reconfigurable), port, logs, env, timeout
        )
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + timeout
        while (ready := get_json(f"{url}/readyz"))[0] != 200:
            if (
                proc.poll() is not None
                or time.monotonic() > deadline
                or "failed" in ready[1].get("status", "")
            ):
                raise launch.LaunchError(
                    f"the server never got ready ({ready[1].get('status', 'no answer')}):\n"
                    f"{launch.tail(logs / f'{name}.log')}"
                )
            time.sleep(0.1)
        yield Running(url, proc, logs / f"{name}.log", settings)
    finally:
        launch.stop_all(procs, grace=30)
