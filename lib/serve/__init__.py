"""Serving a saved variant over HTTP: the FastAPI app (:mod:`lib.serve.app`) around the batcher, classifier
and cache of :mod:`lib.techniques.serving`, and its command line (:mod:`lib.serve.cli`:
``python -m lib.serve``, ``make serve``). An application on top of the three tiers: it may import any of
them, and none imports it.
"""

from . import app, cli, process

__all__ = ["app", "cli", "process"]
