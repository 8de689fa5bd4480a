"""Weights stored in few bits and computed in bf16: a model file as small as an int8 ONNX one, run by torch
at bf16 speed where the CPU has native bf16 (AMX, AVX512-BF16).

int8 *compute* (ONNX Runtime's dynamic quantization) is fast on CPUs with VNNI; on a CPU with AMX tiles bf16
matrix products are faster still, but a bf16 file is twice an int8 one. Storage and compute need not share a
format: :func:`save` writes every ``Linear`` weight as int8 with one scale per output row and every embedding
table in 4-bit (or 8-bit) blocks along its rows, the small rest (biases, LayerNorm, the vocabulary remap) as
it is, into one safetensors file; :func:`load` reads that file back into a copy of the architecture, every
weight dequantized, and casts it to the compute dtype. The file is what a deployment stores and ships; in
memory the model is bf16-sized (:func:`memory_mb`), which the report states beside the file size.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import ArtifactError

FORMAT = "muxl-compact-1"  # written into the file's metadata; load refuses any other


def _int8_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8, one scale per output row: ``w ≈ q * scale[:, None]``."""
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8), scale.float()


def _blocks(w: torch.Tensor, bits: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric ``bits``-bit values in blocks of ``block`` along each row (the row padded to whole blocks),
    as unsigned codes (4-bit: two to a byte) and one scale per block."""
    rows, cols = w.shape
    pad = (-cols) % block
    x = nn.functional.pad(w.float(), (0, pad)).reshape(rows, -1, block)
    top = 2 ** (bits - 1) - 1  # 7 for 4 bits, 127 for 8
    scale = x.abs().amax(dim=2).clamp(min=1e-12) / top
    codes = (torch.round(x / scale[..., None]).clamp(-top, top) + top).to(torch.uint8).reshape(rows, -1)
    if bits == 4:
        codes = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return codes, scale


def _unblocks(codes: torch.Tensor, scale: torch.Tensor, bits: int, shape: list[int]) -> torch.Tensor:
    rows, cols = shape
    if bits == 4:
        codes = torch.stack([codes & 0x0F, codes >> 4], dim=2).reshape(rows, -1)
    top = 2 ** (bits - 1) - 1
    values = (codes.float() - top).reshape(rows, scale.shape[1], -1) * scale[..., None]
    return values.reshape(rows, -1)[:, :cols]


def _quantized(model: nn.Module) -> dict[str, str]:
    """``state-dict key -> "linear" | "embedding"`` for the weights stored in few bits: every ``Linear``,
    every ``Embedding`` and the model's input embedding whatever its class (a trimmed vocabulary's table)."""
    tokens = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    kinds = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, nn.Linear):
            kinds[f"{prefix}weight"] = "linear"
        elif isinstance(module, nn.Embedding) or (module is tokens and module.weight.dim() == 2):
            kinds[f"{prefix}weight"] = "embedding"
    return kinds


def save(model: nn.Module, path: Path | str, embedding_bits: int = 4, block: int = 32) -> Path:
    """Write ``model``'s weights to one safetensors file at ``path`` (atomically): each ``Linear`` weight int8
    with a scale per output row, each embedding table in ``embedding_bits``-bit blocks of ``block`` values
    (4 or 8 bits), everything else as it is. Returns ``path``; :func:`load` reads it back."""
    if embedding_bits not in (4, 8):
        raise ValueError(f"embedding_bits must be 4 or 8, got {embedding_bits}")
    if block < 2 or block % 2:
        raise ValueError(f"block must be an even number >= 2, got {block}")
    kinds, tensors, layout = _quantized(model), {}, {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu()
        if kinds.get(key) == "linear":
            tensors[f"{key}.q"], tensors[f"{key}.scale"] = _int8_rows(value.float())
            layout[key] = {"kind": "int8_rows"}
        elif kinds.get(key) == "embedding":
            tensors[f"{key}.q"], tensors[f"{key}.scale"] = _blocks(value, embedding_bits, block)
            layout[key] = {"kind": "blocks", "bits": embedding_bits, "shape": list(value.shape)}
        else:
            tensors[key] = value.contiguous()
            layout[key] = {"kind": "plain"}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "layout": json.dumps(layout)})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load(like: nn.Module, path: Path | str, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """A copy of ``like`` (the architecture: its weights are all replaced) with the weights read from the
    file :func:`save` wrote, dequantized and cast to ``dtype``, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"no compact weights file at {path}: write it with lib.compact.save first")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:
        raise ArtifactError(f"{path} is not a readable safetensors file ({e}): write it again") from e
    if meta.get("format") != FORMAT:
        raise ArtifactError(
            f"{path} is not a compact weights file ({FORMAT}): write it with lib.compact.save"
        )
    state = {}
    for key, spec in json.loads(meta["layout"]).items():
        if spec["kind"] == "int8_rows":
            state[key] = tensors[f"{key}.q"].float() * tensors[f"{key}.scale"][:, None]
        elif spec["kind"] == "blocks":
            state[key] = _unblocks(tensors[f"{key}.q"], tensors[f"{key}.scale"], spec["bits"], spec["shape"])
        else:
            state[key] = tensors[key]
    model = copy.deepcopy(like).cpu()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ArtifactError(f"{path} holds weights of another architecture: {str(e).splitlines()[0]}") from e
    return model.to(dtype).eval()


def file_mb(path: Path | str) -> float:
    """The compact file's size on disk (MB, 10^6 bytes)."""
    return Path(path).stat().st_size / 1e6


def memory_mb(model: nn.Module) -> float:
    """What ``model``'s parameters and buffers hold in memory (MB, 10^6 bytes), in their current dtypes."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors) / 1e6


def describe(model: Any) -> dict[str, int]:
    """How many weights :func:`save` stores in few bits: ``{"linear": n, "embedding": n}`` (matrices)."""
    kinds = list(_quantized(model).values())
    return {"linear": kinds.count("linear"), "embedding": kinds.count("embedding")}
