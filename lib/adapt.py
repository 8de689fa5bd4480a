"""Parameter-efficient adaptation with LoRA (``peft``): add adapters, count what trains, save/load, merge.

LoRA freezes the pretrained weights ``W`` and learns a low-rank update ``B·A`` (rank ``r``, scaled by
``alpha / r``) for the chosen Linear layers. Only the adapters — plus the new classification head, which
``peft`` keeps trainable for sequence classification — are trained and stored per task.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Any, Sequence

from .errors import ArtifactError
from .utils import atomic_dir

ADAPTER_FILE = "adapter_model.safetensors"


def add_lora(model: Any, r: int, alpha: float, dropout: float, target_modules: Sequence[str],
             modules_to_save: Sequence[str] = ()) -> Any:
    """Wrap ``model`` (a sequence classifier) with LoRA adapters; returns the ``peft`` model.

    ``target_modules`` are name suffixes of Linear layers (BERT: ``query``, ``key``, ``value``,
    ``attention.output.dense``, ``intermediate.dense``, ``output.dense``). The classifier head is always
    trained; ``modules_to_save`` adds more fully-trained modules (e.g. ``pooler.dense``).
    """
    from peft import LoraConfig, TaskType, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [t for t in target_modules if t.rsplit(".", 1)[-1] not in names]
    if missing:
        raise ValueError(f"LoRA target module(s) {missing} not found in {type(model).__name__}; "
                         "BERT's Linear layers are query, key, value, dense")
    cfg = LoraConfig(task_type=TaskType.SEQ_CLS, r=r, lora_alpha=alpha, lora_dropout=dropout,
                     target_modules=list(target_modules), modules_to_save=list(modules_to_save) or None)
    with warnings.catch_warnings():  # peft 0.21 calls a transformers-v5 method deprecated for v6: not ours
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return get_peft_model(model, cfg)


def lora_model(spec: str, num_labels: int, r: int, alpha_scale: float, dropout: float,
               target_modules: Sequence[str], seed: int, label_names: list[str] | None = None,
               pooling: str = "cls") -> Any:
    """A freshly loaded pretrained base (:func:`lib.models.load_model`) with rank-``r`` LoRA adapters,
    ``alpha = alpha_scale * r`` (the same update scale at every rank).

    Seeded first, so every call starts from the same classifier-head initialisation and the same adapter ``A``
    matrices for the same rank: runs that differ in rank or learning rate differ only in that.
    """
    from .models import load_model
    from .utils import seed_everything

    seed_everything(seed)
    base = load_model(spec, num_labels, label_names, pooling)[0]
    return add_lora(base, r=r, alpha=alpha_scale * r, dropout=dropout, target_modules=target_modules)


def trainable_summary(model: Any) -> dict[str, float]:
    """Trainable and total parameter counts (the frozen base included) and the trainable share in %."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable_params": trainable, "total_params": total, "trainable_pct": 100.0 * trainable / total}


def save_adapter(path: Path | str, peft_model: Any, metadata: dict[str, Any]) -> Path:
    """Save only the adapter (+ trained head) and ``metadata.json``, atomically."""
    from datetime import datetime, timezone

    path = Path(path)
    with atomic_dir(path) as tmp:
        peft_model.save_pretrained(tmp)
        meta = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **metadata}
        (tmp / "metadata.json").write_text(json.dumps(meta, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def adapter_mb(path: Path | str) -> float:
    """Size of the stored adapter weights (MB, 10^6 bytes): what one more task costs on disk."""
    return (Path(path) / ADAPTER_FILE).stat().st_size / 1e6


def load_adapter(base_model: Any, path: Path | str) -> Any:
    """Put a saved adapter back onto a freshly loaded base model (eval mode)."""
    from peft import PeftModel

    path = Path(path)
    if not (path / ADAPTER_FILE).exists() or not (path / "adapter_config.json").exists():
        raise ArtifactError(f"no LoRA adapter in {path} (needs {ADAPTER_FILE} and adapter_config.json); "
                            "run 01_lora_finetune first")
    return PeftModel.from_pretrained(base_model, str(path)).eval()


def merged_copy(peft_model: Any) -> Any:
    """A plain model with the adapters folded into the weights (``W + B·A``); the original stays as it is."""
    return copy.deepcopy(peft_model).merge_and_unload().eval()


def sweep_table(sweep: dict[int, dict[str, Any]], full_record: dict[str, Any]):
    """One row per rank (and one for full fine-tuning, from 00_baseline's record): accuracy vs what trains."""
    import pandas as pd

    ref = reference_variant(full_record)
    rows = [{"rank": "full", "trainable_params": ref["num_params"], "trainable_pct": 100.0,
             "val_accuracy": None, "test_accuracy": ref["accuracy"], "test_f1": ref["f1"],
             "train_samples_per_s": ref.get("train_samples_per_s")}]
    for rank, s in sweep.items():
        h = s["history"]
        rows.append({"rank": rank, "trainable_params": s["trainable_params"], "trainable_pct": s["trainable_pct"],
                     "val_accuracy": max(e["val_accuracy"] for e in h.epochs), "test_accuracy": s["test"]["accuracy"],
                     "test_f1": s["test"]["f1"], "train_samples_per_s": h.samples_per_s})
    df = pd.DataFrame(rows).set_index("rank")
    df["points_vs_full"] = 100 * (df["test_accuracy"] - ref["accuracy"])
    return df


def reference_variant(record: dict[str, Any]) -> dict[str, Any]:
    return next(v for v in record["variants"] if v["role"] == "reference")


def speed_table(speed: dict[str, dict[str, Any]], n_train: int):
    """Side-by-side training speed/memory (from ``lib.train.speed_probe`` runs); first row is the reference."""
    import pandas as pd

    df = pd.DataFrame(speed).T[["trainable_params", "trainable_pct", "samples_per_s", "peak_mem_mb",
                                "peak_mem_delta_mb"]].astype(float)
    df["minutes_per_epoch"] = n_train / df["samples_per_s"] / 60
    df["speedup_vs_full"] = df["samples_per_s"] / df["samples_per_s"].iloc[0]
    return df


def variants(sweep: dict[int, dict[str, Any]], full_record: dict[str, Any], bench: Any, speed_row_full: dict,
             best_rank: int, merged_test: dict[str, Any], adapter_sizes: dict[int, float]) -> list[dict[str, Any]]:
    """The ``variants`` of 01_lora_finetune's record: the full fine-tune (reference), every rank, the merged best.

    ``size_mb`` is what inference loads (the base plus adapters, or the merged model); ``adapter_mb`` is what
    each task adds on disk. Latency/throughput exist for the models benchmarked here (teacher, best rank
    merged and unmerged); other ranks have ``null`` there. ``train_samples_per_s`` comes from each model's own
    training run (the full fine-tune's from 00_baseline).
    """
    from .results import variant

    ref = reference_variant(full_record)
    teacher_bench = bench.iloc[0]
    full_size = {"size_mb": ref["size_mb"], "num_params": ref["num_params"]}
    out = [variant("full-finetune", "reference", ref, teacher_bench, full_size, method="full",
                   trainable_params=ref["num_params"], trainable_pct=100.0,
                   train_samples_per_s=ref.get("train_samples_per_s"),
                   train_samples_per_s_probe=speed_row_full["samples_per_s"], source="00_baseline record")]
    for rank, s in sweep.items():
        bench_row = bench.loc["LoRA unmerged"] if rank == best_rank else None
        out.append(variant(f"lora-r{rank}", "variant", s["test"], bench_row,
                           {"size_mb": full_size["size_mb"] + adapter_sizes[rank], "num_params": s["total_params"]},
                           method="lora", rank=rank, trainable_params=s["trainable_params"],
                           trainable_pct=s["trainable_pct"], train_samples_per_s=s["history"].samples_per_s,
                           adapter_mb=adapter_sizes[rank]))
    out.append(variant(f"lora-r{best_rank}-merged", "variant", merged_test, bench.loc["LoRA merged"], full_size,
                       method="lora-merged", rank=best_rank, trainable_params=sweep[best_rank]["trainable_params"],
                       trainable_pct=sweep[best_rank]["trainable_pct"], adapter_mb=adapter_sizes[best_rank]))
    return out


def adapter_size_mb(peft_model: Any) -> float:
    """Serialized size of a model's adapter (+ trained head), via a temporary save."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        peft_model.save_pretrained(tmp)
        return adapter_mb(tmp)
