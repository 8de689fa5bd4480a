"""Artifacts: every trained thing a notebook hands on to later ones, saved and loaded by this one module.

An artifact is a folder: the weights, the tokenizer and a ``metadata.json`` saying which notebook, data,
parameters and seed made it and what it scored. Three kinds (:data:`lib.runner.catalog.KINDS`):

- ``model``: a transformers classifier — the teacher, a student, a pruned model (whose per-layer shapes are
  stored in ``config.pruned_layout`` and rebuilt on load), the mean-pooling head rebuilt from
  ``config.classifier_pooling``, a head with a hidden layer from ``config.classifier_hidden``;
- ``adapter``: a LoRA adapter and its trained head (peft); loaded onto a fresh copy of the base model named in
  its metadata;
- ``onnx``: one self-contained ``model.onnx`` for ONNX Runtime; loaded as an
  :class:`lib.predict.OnnxPredictor`.

:func:`save` is atomic (temp folder + rename): an interrupted save leaves the previous artifact or nothing.
:func:`load` returns ``(model, tokenizer, metadata)``, where ``model`` is a torch module or a predictor; both
go into :mod:`lib.evaluate` and :mod:`lib.bench` alike.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from .errors import ArtifactError
from .heads import MeanPoolingBertForSequenceClassification, set_hidden_head
from .models import build_to_layout, load_model
from .predict import OnnxPredictor
from .runner.catalog import METADATA, artifact_kind, check_artifact, require_artifact
from .utils import atomic_dir

__all__ = ["save", "load", "check_artifact", "require_artifact", "artifact_kind", "file_mb"]
ONNX_FILE = "model.onnx"


def save(path: Path | str, what: Any, tokenizer: Any, metadata: dict[str, Any]) -> Path:
    """Save ``what`` — a torch classifier, a peft model (its adapter is saved) or the path of an ``.onnx``
    file — with ``tokenizer`` and ``metadata`` into the folder ``path``, atomically. Returns ``path``."""
    path = Path(path)
    meta = {"created": datetime.now(UTC).isoformat(timespec="seconds"), **metadata}
    with atomic_dir(path) as tmp:
        if isinstance(what, (str, Path)):
            if not Path(what).is_file() or Path(what).suffix != ".onnx":
                raise ArtifactError(f"expected an .onnx file to save, got {what}")
            shutil.copyfile(what, tmp / ONNX_FILE)
            meta.setdefault("format", "onnx")
        else:  # transformers and peft models both save themselves; peft writes only the adapter and the head
            what.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / METADATA).write_text(json.dumps(meta, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def load(path: Path | str) -> tuple[Any, Any, dict[str, Any]]:
    """``(model, tokenizer, metadata)`` from an artifact folder: a torch model in fp32 eval mode (``model``
    and ``adapter`` kinds) or an ONNX Runtime predictor (``onnx``). A missing or damaged artifact is a clear
    error."""
    path = Path(path)
    problem = check_artifact(path)
    if problem:
        raise ArtifactError(f"artifact {problem}")
    metadata = json.loads((path / METADATA).read_text(encoding="utf-8"))
    kind = artifact_kind(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if kind == "onnx":
            return OnnxPredictor(path / ONNX_FILE), tokenizer, metadata
        model = _load_adapter(path, metadata) if kind == "adapter" else _load_model(path)
    except ArtifactError:
        raise
    except Exception as e:  # safetensors / config errors on a damaged file
        raise ArtifactError(
            f"artifact in {path} is corrupt and cannot be loaded ({type(e).__name__}: {e}); "
            "re-run the notebook that saves it"
        ) from None
    return model.eval(), tokenizer, metadata


def _load_model(path: Path) -> Any:
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    mean = getattr(config, "classifier_pooling", None) == "mean"
    cls = MeanPoolingBertForSequenceClassification if mean else AutoModelForSequenceClassification
    layout, hidden = getattr(config, "pruned_layout", None), getattr(config, "classifier_hidden", 0)
    if not layout and not hidden:
        return cls.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    # shapes differ from the config's (pruned layers, a head with a hidden layer): build the architecture,
    # give it those shapes, load strictly
    model = cls(config) if mean else cls.from_config(config)
    if layout:
        build_to_layout(model, layout)
    if hidden:
        set_hidden_head(model, hidden)
    model.load_state_dict(load_file(str(path / "model.safetensors")), strict=True)
    return model.float()


def _load_adapter(path: Path, metadata: dict[str, Any]) -> Any:
    params = metadata.get("params", {})
    if "model" not in params or "label_names" not in metadata:
        raise ArtifactError(
            f"adapter in {path} does not name its base model (metadata params.model, label_names); "
            "re-run the notebook that saves it"
        )
    from peft import PeftModel  # only adapters need it: importing peft costs seconds (every server start)

    names = metadata["label_names"]
    base = load_model(params["model"], len(names), names, params.get("pooling", "cls"))[0]
    return PeftModel.from_pretrained(base, str(path))


def file_mb(path: Path | str) -> float:
    """What an artifact's weights cost on disk (MB, 10^6 bytes): the adapter, model or ONNX file."""
    path = Path(path)
    name = {"adapter": "adapter_model.safetensors", "onnx": ONNX_FILE, "model": "model.safetensors"}
    return (path / name[artifact_kind(path)]).stat().st_size / 1e6
