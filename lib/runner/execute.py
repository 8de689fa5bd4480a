"""Executing one notebook: papermill into the run folder, its output streamed to the terminal, and the
signals (Ctrl-C, SIGTERM) that end a run cleanly. A notebook that fails or is interrupted is kept as
``<name>.failed.ipynb`` / ``<name>.interrupted.ipynb`` beside the completed ones."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import paths
from .catalog import Notebook

# The notebooks name the "python3" kernel, which Jupyter resolves to the Python it runs in: the runner's own
# (the project's .venv under make); in `make lab`, the .venv's JupyterLab. Nothing user-level to re-point.
KERNEL = "python3"


class Terminated(BaseException):
    """SIGTERM, turned into an exception so the run ends cleanly (like Ctrl-C)."""


def execute(
    nb: Notebook, values: dict[str, Any], run_dir: Path, timeout: int | None, stream: bool = True
) -> Path:
    """Run one notebook with papermill into ``run_dir/notebooks/``, its cells' output streamed to the
    terminal. jupyter_client writes the kernel's connection file with ``tempfile``: into ``.runtime/``
    (removed when the run ends); what the kernel process prints to stderr (Jupyter's warnings, a ZMQ complaint
    when Ctrl-C stops it mid-reply) goes to ``jupyter.log``, not the terminal."""
    import papermill as pm  # heavy (jupyter, nbclient): imported only when a notebook really runs

    out = run_dir / "notebooks" / f"{nb.name}.ipynb"
    running = out.with_name(f"{nb.name}.running.ipynb")
    out.parent.mkdir(parents=True, exist_ok=True)
    (run_dir / ".runtime").mkdir(exist_ok=True)
    old_tmp, tempfile.tempdir = tempfile.tempdir, str(run_dir / ".runtime")
    with _stderr_to(run_dir / "jupyter.log") as terminal:
        _gates[:] = [_Gate(sys.stdout), _Gate(terminal)] if stream else [None, None]
        try:
            options = {"kernel_name": KERNEL, "cwd": str(paths.NOTEBOOKS), "execution_timeout": timeout,
                       "stdout_file": _gates[0], "stderr_file": _gates[1], "progress_bar": False}  # fmt: skip
            pm.execute_notebook(str(paths.notebook_path(nb.name)), str(running), values, **options)
        except BaseException as e:
            if running.exists():
                why = "interrupted" if isinstance(e, (KeyboardInterrupt, Terminated)) else "failed"
                os.replace(running, out.with_name(f"{nb.name}.{why}.ipynb"))
            raise
        finally:
            tempfile.tempdir = old_tmp
            _gates.clear()
    os.replace(running, out)
    return out


@contextlib.contextmanager
def _stderr_to(log: Path) -> Iterator[Any]:
    """Point file descriptor 2 at ``log`` (the kernel process inherits it); yield the real terminal."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        direct = sys.stderr.fileno() == 2  # a real terminal/pipe (not a test's capture object)
    except (AttributeError, OSError, ValueError):
        direct = False
    terminal = os.fdopen(os.dup(saved), "w", buffering=1, encoding="utf-8") if direct else None
    with open(log, "ab") as file:
        os.dup2(file.fileno(), 2)
        try:
            yield terminal or sys.stderr
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if terminal is not None:
                terminal.close()


def failure_message(nb: Notebook, run_dir: Path, err: BaseException, timeout: int | None) -> str:
    from papermill.exceptions import PapermillExecutionError  # heavy: only once a run has failed

    if isinstance(err, PapermillExecutionError):
        what = f"cell {err.cell_index} raised {err.ename}: {err.evalue}"
    elif type(err).__name__ in ("CellTimeoutError", "TimeoutError") or "timed out" in str(err).lower():
        what = f"a cell ran longer than --execution-timeout={timeout}s ({type(err).__name__})"
    else:
        what = f"{type(err).__name__}: {err}"
    where = run_dir / "notebooks" / f"{nb.name}.failed.ipynb"
    return f"FAILED: {nb.name}: {what}\n  executed notebook (open it to see the traceback): {where}"


class _Gate:
    """A stream the notebooks' output passes through to the terminal; closed the moment the user interrupts,
    so the dying kernel's last words (a KeyboardInterrupt inside some ``__del__``) do not follow the runner's
    own message."""

    def __init__(self, stream: Any):
        self.stream, self.open = stream, True

    def write(self, text: str) -> int:
        if self.open:
            self.stream.write(text)
        return len(text)

    def flush(self) -> None:
        if self.open:
            self.stream.flush()


_gates: list[_Gate | None] = []


def on_signal(signum: int, frame: Any) -> None:
    """SIGINT and SIGTERM during a run: silence the notebooks' output, then unwind the run cleanly."""
    for gate in filter(None, _gates):
        gate.open = False
    raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated()


def redeliver_interrupts(unraisable: Any) -> None:
    """A Ctrl-C (or SIGTERM) that lands inside a finalizer (``__del__``) is "ignored" by Python, with a
    traceback: send the signal again, so it interrupts the run where it can, silently."""
    if isinstance(unraisable.exc_value, (KeyboardInterrupt, Terminated)):
        stop = signal.SIGINT if isinstance(unraisable.exc_value, KeyboardInterrupt) else signal.SIGTERM
        os.kill(os.getpid(), stop)
        return
    sys.__unraisablehook__(unraisable)
