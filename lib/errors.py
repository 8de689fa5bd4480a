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
