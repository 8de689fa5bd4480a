"""The notebooks, in order, what each needs from earlier ones, and what a complete artifact folder holds.

The runner uses this to order a run and to refuse a notebook whose prerequisite artifact is missing or broken
(naming the notebook that makes it) before anything runs. Add a notebook here when you add it to ``notebooks/``.
Only the standard library is used here, so those checks are instant; saving and loading artifacts is
:mod:`lib.artifacts`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from . import paths
from .errors import ArtifactError


@dataclass(frozen=True)
class Notebook:
    name: str
    title: str
    needs: tuple[str, ...] = ()  # artifact names (under outputs/<profile>/models/) it loads
    produces: tuple[str, ...] = ()  # artifact names it saves
    extra: dict = field(default_factory=dict)


NOTEBOOKS: tuple[Notebook, ...] = (
    Notebook(
        "00_baseline",
        "Baseline: data, TF-IDF reference, full fine-tuning of the MiniLM teacher, benchmark",
        needs=(),
        produces=("teacher",),
    ),
    Notebook(
        "01_lora_finetune",
        "LoRA: parameter-efficient fine-tuning with peft, measured against full fine-tuning",
        needs=("teacher",),
        produces=("lora",),
    ),
    Notebook(
        "02_prune",
        "Pruning: unstructured (zeros) and structured (heads and FFN neurons removed), with real speed measured",
        needs=("teacher",),
        produces=("pruned",),
    ),
    Notebook(
        "03_quantize",
        "Quantization: int8 and bf16 on PyTorch and ONNX Runtime, measured side by side against fp32",
        needs=("teacher",),
        produces=("quantized",),
    ),
    Notebook(
        "04_distill",
        "Distillation: a 3-layer student taught by the teacher, against the same student trained on labels",
        needs=("teacher",),
        produces=("student",),
    ),
)

BY_NAME = {nb.name: nb for nb in NOTEBOOKS}


def producer_of(artifact: str) -> str | None:
    """The notebook that saves ``artifact``, if any."""
    for nb in NOTEBOOKS:
        if artifact in nb.produces:
            return nb.name
    return None


# ---------------------------------------------------------------------------------------------- artifact folders

METADATA = "metadata.json"
# What each kind of artifact folder holds besides the tokenizer and metadata.json; the first file is JSON.
KINDS: dict[str, tuple[str, ...]] = {
    "model": ("config.json", "model.safetensors"),  # a transformers classifier (teacher, student, pruned)
    "adapter": ("adapter_config.json", "adapter_model.safetensors"),  # LoRA adapter + head, on a base model
    "onnx": ("tokenizer_config.json", "model.onnx"),  # an ONNX graph for ONNX Runtime
}


def artifact_kind(path: Path) -> str:
    """``"adapter"``, ``"onnx"`` or ``"model"``, from the files in the folder."""
    if (path / "adapter_config.json").exists():
        return "adapter"
    if (path / "model.onnx").exists():
        return "onnx"
    return "model"


def check_artifact(path: Path) -> str | None:
    """``None`` if ``path`` looks like a complete artifact, else what is wrong with it."""
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
    return None


def artifact_hint(name: str, profile: str) -> str:
    """How to make artifact ``name``: run the notebook that produces it."""
    producer = producer_of(name)
    if producer is None:
        return ""
    return f"Run {producer} first: python -m lib.run --profile {profile} --only {producer}"


def require_artifact(profile: str, name: str) -> Path:
    """The folder of artifact ``name`` for ``profile``; a clear error naming the fix if it is missing or broken."""
    path = paths.artifact_dir(profile, name)
    problem = check_artifact(path)
    if problem:
        raise ArtifactError(f"the '{name}' artifact for profile '{profile}' {problem}. {artifact_hint(name, profile)}")
    return path
