"""Errors that tell the user what is wrong and how to fix it, raised before any heavy work where possible;
they subclass ValueError (or FileNotFoundError, OSError) so generic callers still catch them."""

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


def show_in_notebook(shell: object, etype: type, value: BaseException, tb: object, tb_offset=None) -> list:
    """IPython's handler for a :class:`LabError` raised in a cell: its message, without the frames that would
    bury it; the cell still fails through IPython's own channel, so Jupyter and papermill see an error."""
    stb = [f"\x1b[0;31m{etype.__name__}\x1b[0m: {value}"]
    shell._showtraceback(etype, value, stb)  # type: ignore[attr-defined]
    return stb


def listing(problems: list[str] | tuple[str, ...], indent: str = "  ") -> str:
    """Problems as the lines of an error message: ``"\n  - first\n  - second"``."""
    return "".join(f"\n{indent}- {p}" for p in problems)
