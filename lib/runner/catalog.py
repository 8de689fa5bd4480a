"""The notebooks, in order, what each needs from earlier ones, and what a complete artifact folder holds.

The runner uses this to order a run and to refuse a notebook whose prerequisite artifact is missing or broken
(naming the notebook that makes it) before anything runs. Add a notebook here when you add it to
``notebooks/``. Only the standard library is used here, so those checks are instant; saving and loading
artifacts is :mod:`lib.artifacts`.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ArtifactError
from . import folders


@dataclass(frozen=True)
class Notebook:
    name: str
    title: str
    needs: tuple[str, ...] = ()  # artifact names (under <run>/models/) it loads
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
        "Pruning: unstructured (zeros) and structured (heads and FFN neurons removed), with real speed "
        "measured",
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
    Notebook(
        "05_distributed",
        "Distributed: data-parallel training with torch.distributed (torchrun, DDP), proven equal and "
        "measured",
        needs=(),  # fine-tunes the pretrained model itself: nothing from earlier notebooks
        produces=(),
    ),
    Notebook(
        "06_explain",
        "Explanations: LIME and Integrated Gradients, their faithfulness measured, and whether they survive "
        "compression",
        needs=(
            "teacher",
        ),  # the student (04) and the int8 model (03) too, when asked: checked in the notebook
        produces=(),
    ),
    Notebook(
        "07_privacy",
        "Privacy: DP-SGD fine-tuning with Opacus at several ε, and a membership-inference audit of every "
        "model",
        # starts from the public pretrained model: a teacher fine-tuned without DP would carry its leak along
        needs=(),
        produces=(),
    ),
    Notebook(
        "10_report",
        "Report: every variant of the run side by side, a stacked deployment variant, Pareto fronts, a "
        "weighted choice",
        needs=("teacher",),  # and the student (04) when the stack starts from it: checked in the notebook
        produces=("stacked",),
    ),
)

BY_NAME = {nb.name: nb for nb in NOTEBOOKS}


def producer_of(artifact: str) -> str | None:
    """The notebook that saves ``artifact``, if any."""
    for nb in NOTEBOOKS:
        if artifact in nb.produces:
            return nb.name
    return None


# ------------------------------------------------------------------------ artifact folders

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
    """``None`` if ``path`` looks like a complete artifact, else what is wrong with it.

    Reads the JSON files and every ``.safetensors`` header (a truncated or corrupt weights file fails here, in
    milliseconds, not 15 s into a notebook)."""
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
        problem = safetensors_problem(weights)
        if problem:
            return f"is corrupt: {weights.name} {problem} ({path})"
    return None


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a ``.safetensors`` file's header and length, or ``None`` (the format: an 8-byte
    little-endian header length, a JSON header naming each tensor's byte range, then the data)."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return f"is {size} bytes long: too short to be a safetensors file"
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            return f"announces a {n}-byte header but the file is {size} bytes: truncated or not safetensors"
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "has an unreadable header: corrupt"
    ends = [
        v["data_offsets"][1]
        for k, v in header.items()
        if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v
    ]
    if ends and 8 + n + max(ends) > size:
        return f"is truncated: its tensors need {8 + n + max(ends)} bytes, the file has {size}"
    return None


def run_hint(notebook: str, profile: str) -> str:
    """How to get what ``notebook`` makes: run it by hand (profile ``lab``) or with the runner."""
    if profile == folders.HAND_PROFILE:
        return (
            f"Open notebooks/{notebook}.ipynb in JupyterLab and run it to the end (Run > Run All Cells), "
            f"then "
            "re-run this notebook; or name a run that has it in the input_run parameter."
        )
    return f"Run {notebook} first: python -m lib.runner --profile {profile} --only {notebook}"


def artifact_hint(name: str, profile: str) -> str:
    """How to make artifact ``name``: run the notebook that produces it (by hand, or with the runner)."""
    producer = producer_of(name)
    return "" if producer is None else run_hint(producer, profile)


def require_artifact(profile: str, name: str, run: str = "") -> Path:
    """The folder of artifact ``name``: from ``run`` if named, else this run, else the newest complete run of
    ``profile`` that has it (:func:`lib.runner.folders.source`); a clear error naming the fix if it is missing
    or broken."""
    try:
        path = folders.source(profile, f"models/{name}", run) / "models" / name
    except ArtifactError as e:
        raise ArtifactError(
            f"the '{name}' artifact for profile '{profile}' is missing ({e}). {artifact_hint(name, profile)}"
        ) from None
    problem = check_artifact(path)
    if problem:
        raise ArtifactError(
            f"the '{name}' artifact for profile '{profile}' {problem}. {artifact_hint(name, profile)}"
        )
    return path
