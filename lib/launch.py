"""Starting a module's workers under ``torchrun`` and watching them: a free rendezvous port, the exact command
for one machine or several, the output streamed line by line, a watchdog that kills the whole launch, and the
failing worker's own error in the exception; servers started and waited for until they listen, and whole
process families stopped (:func:`start_server`, :func:`stop_all`: the Flower Deployment Engine). Process
management only: what the workers do is their module's (e.g. :mod:`lib.techniques.distributed`).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from .errors import LabError
from .utils import num_threads


class LaunchError(LabError, RuntimeError):
    """A torchrun launch failed; the message carries the failing worker's own error."""


def free_port() -> int:
    """A TCP port nobody listens on now (the OS picks it), for a rendezvous on this machine."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    """Whether something on this machine already listens on ``host:port``."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _local(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "0.0.0.0", "::1", socket.gethostname(), socket.getfqdn())


def torchrun_command(
    module: str,
    args: Sequence[str],
    nproc: int,
    nnodes: int = 1,
    node_rank: int = 0,
    rdzv_endpoint: str | None = None,
    rdzv_id: str = "muxl",
) -> list[str]:
    """The torchrun command running ``python -m module *args`` in ``nproc`` processes. One machine:
    ``--standalone`` (a free port is chosen). Several: every machine runs the same command with its own
    ``node_rank`` and the same ``rdzv_endpoint`` (``host:port`` of one of them; c10d rendezvous). With gloo
    across machines, set ``GLOO_SOCKET_IFNAME`` to the network interface: the hostname often resolves to
    127.0.1.1."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
    if nnodes == 1 and rdzv_endpoint is None:
        cmd.append("--standalone")
    else:
        cmd += [
            "--nnodes",
            str(nnodes),
            "--node-rank",
            str(node_rank),
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            rdzv_endpoint or f"127.0.0.1:{free_port()}",
            "--rdzv-id",
            rdzv_id,
        ]
    return [*cmd, "-m", module, *args]


def launch(
    module: str,
    args: Sequence[str],
    nproc: int,
    echo: Callable[[str], None] | None = print,
    threads: int | None = None,
    timeout: float | None = None,
    **rendezvous: Any,
) -> None:
    """Run ``module`` under torchrun and stream its output line by line to ``echo`` (rank 0's progress bar,
    torchrun's messages). Any failing rank makes a :class:`LaunchError` carrying that worker's own error
    (torchrun then stops the others). ``threads``: torch threads per rank (``OMP_NUM_THREADS``; default: this
    machine's cores shared evenly). ``timeout``: seconds after which every process of the launch is killed and
    a :class:`LaunchError` says so (default: none)."""
    endpoint = rendezvous.get("rdzv_endpoint")
    if endpoint and rendezvous.get("node_rank", 0) == 0:
        host, _, port = endpoint.rpartition(":")
        if not port.isdigit():
            raise LaunchError(f"rendezvous endpoint {endpoint!r} must be host:port, e.g. 10.0.0.1:29500")
        if _local(host) and port_in_use(host, int(port)):
            raise LaunchError(
                f"port {port} on {host} is already in use (another run, or another program): give "
                f"--rdzv-endpoint {host}:<another port>, or leave it out on one machine (a free port is "
                "chosen)"
            )
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads or max(1, num_threads() // nproc)),
        "PYTHONUNBUFFERED": "1",
        "MUXL_PROGRESS": "text",
    }
    proc = subprocess.Popen(
        torchrun_command(module, args, nproc, **rendezvous),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )  # its own group: killable whole
    watchdog = threading.Timer(timeout, os.killpg, (proc.pid, signal.SIGKILL)) if timeout else None
    if watchdog is not None:
        watchdog.start()
    tail: list[str] = []
    assert proc.stdout is not None
    pending = b""
    try:
        for chunk in iter(lambda: proc.stdout.read1(4096), b""):  # type: ignore[union-attr]
            pending += chunk
            *lines, pending = re.split(
                rb"[\r\n]", pending
            )  # tqdm redraws with \r: each redraw is a line here
            for raw in lines:
                line = raw.decode(errors="replace").rstrip()
                if line:
                    tail = [*tail, line][-400:]
                    if echo is not None:
                        echo(line)
    except BaseException:  # Ctrl-C in the notebook: stop the workers too
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    finally:
        if watchdog is not None:
            watchdog.cancel()
    code = proc.wait()
    if pending.strip():
        tail.append(pending.decode(errors="replace"))
    if code == -signal.SIGKILL and timeout:
        raise LaunchError(
            f"torchrun did not finish within {timeout:g} s and was stopped; its last lines: "
            + " | ".join(tail[-3:])
        )
    if code != 0:
        raise LaunchError(f"torchrun failed (exit {code}): {worker_error(chr(10).join(tail))}")


def worker_error(stderr: str) -> str:
    """The failing worker's exception line from torchrun's output (its last ``SomethingError: ...`` line)."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [
        ln
        for ln in lines
        if ": " in ln
        and ln.split(": ", 1)[0].split(".")[-1].endswith(("Error", "Exception"))
        and "ChildFailedError" not in ln
    ]
    return errors[-1] if errors else (lines[-1] if lines else "no output")


def start_server(
    procs: list[subprocess.Popen],
    name: str,
    cmd: Sequence[str],
    port: int,
    logs: Path,
    env: Mapping[str, str],
    timeout: float = 120.0,
) -> subprocess.Popen:
    """Start ``cmd`` in a session of its own, its output in ``logs/<name>.log``, add it to ``procs`` (so the
    caller's ``finally: stop_all(procs)`` stops it, also when it never comes up) and wait until it listens on
    127.0.0.1:``port``; a :class:`LaunchError` with the log's tail if it exits or ``timeout`` passes first."""
    log = open(logs / f"{name}.log", "w")  # noqa: SIM115 (the process writes it until stopped)
    proc = subprocess.Popen(
        list(cmd), env=dict(env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    procs.append(proc)
    deadline = time.monotonic() + timeout
    while not port_in_use("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise LaunchError(
                f"{name} did not start listening on 127.0.0.1:{port}:\n{tail(logs / f'{name}.log')}"
            )
        time.sleep(0.2)
    return proc


def stop_all(procs: Sequence[subprocess.Popen], grace: float = 5.0) -> None:
    """Stop processes and everything they started: SIGTERM, then SIGKILL whatever is left after ``grace``."""
    family = []
    for p in procs:
        try:
            family += [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for proc in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(family, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=grace)
    for p in procs:
        p.wait(timeout=grace)


def tail(path: Path, lines: int = 25) -> str:
    """The last ``lines`` lines of a log, for an error message."""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"
