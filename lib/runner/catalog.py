"""The notebooks in order, the artifacts each needs and makes, and what a complete artifact folder holds: the
runner orders a run by it and refuses a missing or broken prerequisite (naming the notebook that makes it)
in milliseconds, before anything runs. Add a notebook here when you add it to ``notebooks/``; its title is
its first heading. Saving and loading artifacts is :mod:`lib.artifacts`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import safetensors

from ..errors import ArtifactError
from . import contract, folders, paths


@dataclass(frozen=True)
class Notebook:
    name: str
    needs: tuple[str, ...] = ()  # artifact names (under <run>/models/) it loads
    produces: tuple[str, ...] = ()  # artifact names it saves

    @property
    def title(self) -> str:
        """The notebook's first heading, without its number: ``"Baseline: the teacher every later ..."``."""
        first = json.loads(paths.notebook_path(self.name).read_text(encoding="utf-8"))["cells"][0]["source"]
        return "".join(first).splitlines()[0].lstrip("# ").split("· ", 1)[-1]


# 05, 07 and 08 start from the public pretrained model (a teacher fine-tuned on all the data without DP
# would carry its leak into 07 and undo 08's point; 07 loads the teacher only to time its model beside it,
# and so works under its data contract);
# 06 also loads the student (04) and the int8 model (03) when asked, 09 every variant of the run it finds
# (LoRA, pruned, int8), 10 the student, 11 the variant 10 chose: checked there.
NOTEBOOKS: tuple[Notebook, ...] = (
    Notebook("00_baseline", produces=("teacher",)),
    Notebook("01_lora_finetune", needs=("teacher",), produces=("lora",)),
    Notebook("02_prune", needs=("teacher",), produces=("pruned",)),
    Notebook("03_quantize", needs=("teacher",), produces=("quantized",)),
    Notebook("04_distill", needs=("teacher",), produces=("student",)),
    Notebook("05_distributed"),
    Notebook("06_explain", needs=("teacher",)),
    Notebook("07_privacy", needs=("teacher",), produces=("private",)),
    Notebook("08_federated"),
    Notebook("09_robustness", needs=("teacher", "student")),
    Notebook("10_report", needs=("teacher",), produces=("stacked",)),
    Notebook("11_serve", needs=("teacher",)),
)
BY_NAME = {nb.name: nb for nb in NOTEBOOKS}


def producer_of(artifact: str) -> str | None:
    """The notebook that saves ``artifact``, if any."""
    return next((nb.name for nb in NOTEBOOKS if artifact in nb.produces), None)


METADATA = "metadata.json"
# What each kind of artifact folder holds besides the tokenizer and metadata.json; the first file is JSON.
KINDS: dict[str, tuple[str, ...]] = {
    "model": ("config.json", "model.safetensors"),  # a transformers classifier (teacher, student, pruned)
    "adapter": ("adapter_config.json", "adapter_model.safetensors"),  # LoRA adapter + head, on a base model
    "onnx": ("tokenizer_config.json", "model.onnx"),  # an ONNX graph for ONNX Runtime
}


def made_under(path: Path) -> dict:
    """The data contract an artifact was made under (the params in its metadata; ``{}`` if it names none)."""
    return contract.of(json.loads((path / METADATA).read_text(encoding="utf-8")).get("params", {}))


def artifact_kind(path: Path) -> str:
    """``"adapter"``, ``"onnx"`` or ``"model"``, from the files in the folder."""
    kinds = {"adapter": path / "adapter_config.json", "onnx": path / "model.onnx"}
    return next((kind for kind, marker in kinds.items() if marker.exists()), "model")


def check_artifact(path: Path) -> str | None:
    """``None`` if ``path`` is a complete artifact (its files there, JSON and safetensors readable), else what
    is wrong with it: a truncated weights file fails here, not 15 s into a notebook."""
    if not path.is_dir():
        return f"is missing ({path})"
    files = KINDS[artifact_kind(path)]
    for needed in (*files, METADATA):
        if not (path / needed).exists():
            return f"is incomplete: {needed} missing in {path}"
    try:
        json.loads((path / METADATA).read_text(encoding="utf-8"))
        json.loads((path / files[0]).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return f"is corrupt ({e}) in {path}"
    for weights in sorted(path.glob("*.safetensors")):
        try:  # reads the header; refuses a file that does not hold every tensor it announces
            with safetensors.safe_open(weights, "numpy"):
                pass
        except (safetensors.SafetensorError, OSError) as e:
            return f"is corrupt: {weights.name} is truncated or not safetensors ({e}) in {path}"
    return None


def run_hint(notebook: str | None, profile: str) -> str:
    """How to get what ``notebook`` makes: run it by hand (profile ``lab``) or with the runner."""
    if notebook is None:
        return ""
    if profile != folders.HAND_PROFILE:
        return f"Run {notebook} first: python -m lib.runner --profile {profile} --only {notebook}"
    return (
        f"Open notebooks/{notebook}.ipynb in JupyterLab and run it to the end (Run > Run All Cells), then "
        "re-run this notebook; or name a run that has it in the input_run parameter."
    )


def require_artifact(profile: str, name: str, run: str = "") -> Path:
    """The folder of artifact ``name`` (from ``run`` if named, else this run, else the newest complete run of
    ``profile`` that has it: :func:`.folders.source`); a clear error naming the fix if missing or broken."""
    fix, what = run_hint(producer_of(name), profile), f"the '{name}' artifact for profile '{profile}'"
    try:
        path = folders.source(profile, f"models/{name}", run) / "models" / name
    except ArtifactError as e:
        raise ArtifactError(f"{what} is missing ({e}). {fix}") from None
    if problem := check_artifact(path):
        raise ArtifactError(f"{what} {problem}. {fix}")
    return path


def available_artifacts(
    profile: str, names: list[str], run: str = ""
) -> tuple[dict[str, Path], dict[str, str]]:
    """For a notebook that compares whatever a run has: ``(found, absent)`` — the folder of each artifact in
    ``names`` that :func:`require_artifact` finds, and for each other one why not and how to get it."""
    found, absent = {}, {}
    for name in names:
        try:
            found[name] = require_artifact(profile, name, run)
        except ArtifactError as e:
            absent[name] = str(e)
    return found, absent
