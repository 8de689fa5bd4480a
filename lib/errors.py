"""Errors that tell the user what is wrong and how to fix it.

Each is raised *before* any heavy work starts where possible. They subclass ValueError (or
FileNotFoundError) so generic callers still catch them, and their message is meant to be read by a person.
"""

from __future__ import annotations


class LabError(Exception):
    """Base class: a problem the user can fix; the message names the problem and the fix."""


class ParamError(LabError, ValueError):
    """A parameter, profile or notebook name is unknown, has the wrong type, or an impossible value."""


class DataError(LabError, ValueError):
    """The data cannot be used: missing file, bad encoding, missing columns, empty, one class..."""


class ArtifactError(LabError, FileNotFoundError):
    """A prerequisite artifact (e.g. the teacher model) is missing or corrupt."""


class OfflineError(LabError, OSError):
    """Something had to come from a hub, and the hub cannot be reached (or offline mode is on)."""


def show_in_notebook(
    shell: object, etype: type, value: BaseException, tb: object, tb_offset: int | None = None
) -> list:
    """IPython's handler for a :class:`LabError` raised in a cell: the message, without a traceback through
    ``lib`` (the message names the problem and the fix; the frames would only bury it). The cell still fails:
    the error is shown through IPython's own channel (``_showtraceback``), so Jupyter and papermill see a
    normal error output."""
    stb = [f"\x1b[0;31m{etype.__name__}\x1b[0m: {value}"]
    shell._showtraceback(etype, value, stb)  # type: ignore[attr-defined]
    return stb
