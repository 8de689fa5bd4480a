"""The notebooks, in order, and what each needs from earlier ones.

The runner uses this to order a run and to refuse a notebook whose prerequisite artifact is missing
(naming the notebook that makes it). Add a notebook here when you add it to ``notebooks/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
