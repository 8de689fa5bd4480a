"""Quantization: the fp32 teacher in lower precision, on the backends a CPU user actually has.

Every variant is a *predictor* (``batch of tensors -> logits``), so :func:`lib.evaluate.evaluate` and
:func:`lib.bench.compare` measure all of them with the same code as any torch model:

- ``torch`` ``int8``: ``torch.ao.quantization.quantize_dynamic`` on the Linear layers (int8 weights,
  activations quantized on the fly). Deprecated since PyTorch 2.10; its successor is torchao
  (``quantize_(model, Int8DynamicActivationInt8WeightConfig())``), which in eager mode on AVX2 CPUs is far
  slower than fp32 and, installed, makes transformers print load errors — so the deprecated path is what is
  measured.
- ``onnxruntime`` ``fp32``: the model exported with the ``torch.export``-based ONNX exporter (dynamic batch
  and sequence axes, one self-contained file), then ONNX Runtime's BERT graph fusions
  (``onnxruntime.transformers.optimizer``: attention, skip-LayerNorm and GELU kernels).
- ``onnxruntime`` ``int8``: ONNX Runtime dynamic quantization (``quant_pre_process``, then
  ``quantize_dynamic``) of the MatMuls and of the embedding tables (``Gather``); one weight scale per matrix
  or per output channel (``per_channel``); with or without ``reduce_range`` (7-bit weights: on CPUs without
  VNNI, u8×s8 products can saturate the 16-bit intermediate sums of the AVX2 kernels).
- ``torch`` ``bf16``: the model cast to bfloat16 — fast only where the CPU has bf16 instructions (AVX512-BF16,
  AMX).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

from ..bench import serialized_mb
from ..models import count_params
from ..predict import BackendError, OnnxPredictor, TorchPredictor, onnxruntime
from ..utils import progress as progress_bar

ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class QuantizeError(BackendError):
    """A quantization backend is missing or failed; the message says which and what to do."""


# @save
def int8_weights(
    w: torch.Tensor, per_channel: bool, reduce_range: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 weights, as dynamic quantization makes them: a scale maps the largest |w| of the whole
    matrix (or, ``per_channel``, of each output row) to 127 (63 with ``reduce_range``'s 7 bits), and every
    weight is rounded to the nearest multiple of it. One outlier stretches the scale for every weight that
    shares it."""
    qmax = 63 if reduce_range else 127
    amax = w.abs().amax(dim=1, keepdim=True) if per_channel else w.abs().amax()
    scale = amax.clamp(min=1e-12) / qmax
    q = torch.clamp(torch.round(w / scale), -qmax, qmax).to(torch.int8)
    return q, scale  # w is approximately q * scale


def weight_errors(
    model: Any, per_channel: Sequence[bool] = (False, True), reduce_range: bool = False, quantize: Any = None
) -> pd.DataFrame:
    """Relative error ``|W - q·s| / |W|`` of every Linear layer's int8 weights (``quantize``, default
    :func:`int8_weights`), one column per scale choice: where int8 hurts, layer by layer."""
    quantize = quantize or int8_weights
    rows = []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and ".encoder." in f".{name}":
            w = m.weight.detach()
            row = {"layer": name.split("encoder.")[-1]}
            for pc in per_channel:
                q, scale = quantize(w, per_channel=pc, reduce_range=reduce_range)
                row["per-channel" if pc else "per-matrix"] = float((w - q.float() * scale).norm() / w.norm())
            row["max_abs_over_std"] = float(w.abs().max() / w.std())
            rows.append(row)
    return pd.DataFrame(rows).set_index("layer")


# ------------------------------------------------------------------------ PyTorch


def torch_dynamic_int8(model: Any, per_channel: bool = False) -> Any:
    """A copy of ``model`` whose ``nn.Linear`` layers are dynamically quantized to int8 (the input is
    untouched): one weight scale per matrix, or one per output channel with ``per_channel``.

    ``torch.ao.quantization`` warns that it is deprecated: that warning is the message users should see.
    """
    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    return torch.ao.quantization.quantize_dynamic(
        copy.deepcopy(model).eval(), {torch.nn.Linear: qconfig}, dtype=torch.qint8
    )


def torch_state_mb(model: Any) -> float:
    """Serialized size (MB) of a model's ``state_dict`` with ``torch.save`` — the format that can hold packed
    int8 weights (safetensors cannot)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes / 1e6


# ------------------------------------------------------------------------ ONNX


class _LogitsOnly:
    """Wrap a classifier so the exported graph has plain tensor inputs and one ``logits`` output."""

    def __new__(cls, model: Any):
        class LogitsOnly(torch.nn.Module):
            def __init__(self, inner: Any):
                super().__init__()
                self.inner = inner

            def forward(self, input_ids, attention_mask, token_type_ids=None):
                extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
                return self.inner(input_ids=input_ids, attention_mask=attention_mask, **extra).logits

        return LogitsOnly(model).eval()


class _QuietExporter(logging.Filter):
    """The exporter logs one warning per torchvision op it cannot register; torchvision is not used here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "torchvision is not installed" not in record.getMessage()


def export_onnx(model: Any, path: Path | str, example: Mapping[str, Any]) -> Path:
    """Export a torch classifier to one self-contained ONNX file at ``path``; returns ``path``.

    Uses the ``torch.export``-based exporter (the default since PyTorch 2.9; needs ``onnxscript``), with the
    batch and sequence axes dynamic. ``example`` is one tokenized batch; its keys among ``ONNX_INPUTS`` become
    the graph inputs. The write is atomic. A failed export raises :class:`QuantizeError` with the exporter's
    reason.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [
        k for k in ONNX_INPUTS if k in example
    ]  # token_type_ids optional (not every tokenizer makes them)
    if names[:2] != ["input_ids", "attention_mask"]:
        raise QuantizeError(
            f"ONNX export needs a tokenized batch with input_ids and attention_mask, got {list(example)}"
        )
    args = tuple(torch.as_tensor(example[k]) for k in names)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    tmp = path.with_name(f".{path.name}.tmp")
    quiet = _QuietExporter()
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    logger.addFilter(quiet)
    try:
        with warnings.catch_warnings():
            # the exporter warns that our two dynamic-axis names are reused across inputs: that is the intent
            warnings.filterwarnings(
                "ignore", message=r".*axis name: .* will not be used", category=UserWarning
            )
            program = torch.onnx.export(
                _LogitsOnly(model),
                args,
                input_names=names,
                output_names=["logits"],
                dynamic_shapes={k: {0: batch, 1: seq} for k in names},
                dynamo=True,
                optimize=True,
                verbose=False,
            )
        program.save(str(tmp), external_data=False)
        os.replace(tmp, path)
    except ImportError as e:
        raise QuantizeError(f"ONNX export needs `onnx` and `onnxscript` ({e}): make install adds them") from e
    except Exception as e:  # the exporter raises many types; the user needs the reason and the fix
        reason = e.__cause__ or e  # the exporter wraps torch.export's error in a long generic message
        raise QuantizeError(
            f"ONNX export of {type(model).__name__} failed ({type(reason).__name__}: "
            f"{str(reason).splitlines()[0][:300] if str(reason) else ''}). "
            "Export the fp32 model (not a quantized or peft-wrapped one)."
        ) from e
    finally:
        logger.removeFilter(quiet)
        tmp.unlink(missing_ok=True)
    return path


@contextlib.contextmanager
def _scratch_cwd() -> Iterator[None]:
    """Run ONNX Runtime's tools in a throwaway working directory: when its symbolic shape inference gives up
    (it does on the exported mask arithmetic), it dumps ``sym_shape_infer_temp.onnx`` and external-data files
    into the *current* directory, which would litter the user's project."""
    with tempfile.TemporaryDirectory(prefix="lab-ort-") as scratch, contextlib.chdir(scratch):
        yield


def optimize_onnx(path: Path | str, out_path: Path | str, num_heads: int, hidden_size: int) -> Path:
    """ONNX Runtime's BERT fusions (attention, skip-LayerNorm, bias-GELU) for CPU; atomic, returns
    ``out_path``."""
    onnxruntime()  # a clear error if it is missing
    from onnxruntime.transformers.optimizer import optimize_model  # part of the optional backend

    path, out_path = Path(path).resolve(), Path(out_path).resolve()
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    try:
        with _scratch_cwd():
            optimized = optimize_model(
                str(path),
                model_type="bert",
                num_heads=num_heads,
                hidden_size=hidden_size,
                opt_level=1,
                use_gpu=False,
            )
        optimized.save_model_to_file(str(tmp), use_external_data_format=False)
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path


def fused_ops(path: Path | str) -> dict[str, int]:
    """Operator counts of an ONNX graph (e.g. how many ``Attention`` / ``MatMulInteger`` nodes it has)."""
    import onnx  # the ONNX file format library, needed only here and by the export

    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def onnx_int8(
    fp32_path: Path | str,
    out_path: Path | str,
    reduce_range: bool,
    quantize_embeddings: bool,
    per_channel: bool = False,
) -> Path:
    """Dynamic int8 quantization with ONNX Runtime: ``quant_pre_process`` (shape inference and graph clean-up,
    as ONNX Runtime recommends), then ``quantize_dynamic`` of the MatMuls (int8 weights, activations quantized
    per batch at run time) and, when ``quantize_embeddings``, of the embedding tables (``Gather``).
    ``per_channel``: one weight scale per output channel instead of one per matrix. Atomic; returns
    ``out_path``."""
    onnxruntime()  # a clear error if it is missing
    from onnxruntime.quantization import QuantType, quantize_dynamic  # part of the optional backend
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path, out_path = Path(fp32_path).resolve(), Path(out_path).resolve()
    pre = out_path.with_name(f".{out_path.stem}.pre.onnx")
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    ops = ["MatMul", "Attention", "Gather"] if quantize_embeddings else ["MatMul", "Attention"]
    try:
        # symbolic shape inference cannot follow the exporter's mask arithmetic; ONNX's own inference suffices
        with _scratch_cwd():
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
            quantize_dynamic(
                str(pre),
                str(tmp),
                weight_type=QuantType.QInt8,
                reduce_range=reduce_range,
                per_channel=per_channel,
                op_types_to_quantize=ops,
            )
        os.replace(tmp, out_path)
    except Exception as e:
        raise QuantizeError(
            f"ONNX Runtime quantization of {fp32_path.name} failed ({type(e).__name__}: {e})"
        ) from e
    finally:
        pre.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    return out_path


def onnx_int4_embeddings(path: Path | str, out_path: Path | str, block_size: int = 32) -> Path:
    """The embedding tables of an ONNX model (token, position, token type: every ``Gather`` from a constant
    float table) in 4 bits: ONNX Runtime's weight-only block quantization (``MatMulNBitsQuantizer``: one scale
    per ``block_size`` values of a row, symmetric), run by its ``GatherBlockQuantized`` kernel. A table of
    V rows × H values takes V·H/2 bytes plus V·H/``block_size`` scales, against V·H for int8 and 4·V·H for
    fp32. Atomic; returns ``out_path``."""
    onnxruntime()  # a clear error if it is missing
    import onnx  # the ONNX file format library
    from onnxruntime.quantization.matmul_nbits_quantizer import (  # part of the optional backend
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    path, out_path = Path(path).resolve(), Path(out_path).resolve()
    model = onnx.load(str(path))
    tables = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    if not any(n.op_type == "Gather" and n.input[0] in tables for n in model.graph.node):
        raise QuantizeError(f"{path.name} has no float embedding table to quantize (quantized already?)")
    config = DefaultWeightOnlyQuantConfig(
        block_size=block_size,
        is_symmetric=True,
        op_types_to_quantize=("Gather",),
        quant_axes=(("Gather", 1),),  # blocks along a row: each looked-up row dequantizes on its own
    )
    quantizer = MatMulNBitsQuantizer(model, op_types_to_quantize=("Gather",), algo_config=config)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    try:
        quantizer.process()
        quantizer.model.save_model_to_file(str(tmp), use_external_data_format=False)
        os.replace(tmp, out_path)
    except Exception as e:
        raise QuantizeError(
            f"4-bit quantization of the embedding tables of {path.name} failed ({type(e).__name__}: {e})"
        ) from e
    finally:
        tmp.unlink(missing_ok=True)
    return out_path


def int8_onnx(
    model: Any,
    example: Mapping[str, Any],
    workdir: Path | str,
    reduce_range: bool = True,
    per_channel: bool = True,
    name: str = "int8",
    embedding_bits: int = 8,
) -> Path:
    """``model`` as one ONNX Runtime int8 file (``workdir/<name>.onnx``): exported, fused (the BERT optimizer
    detects the head count itself, so layers of different widths, as pruning leaves them, are fine) and
    quantized dynamically, its embedding tables in int8 too, or with ``embedding_bits`` 4 in 4 bits
    (:func:`onnx_int4_embeddings`). For the CPU: a model on a GPU is exported from a CPU copy.
    The intermediate files are removed."""
    if embedding_bits not in (4, 8):
        raise QuantizeError(f"embedding_bits must be 4 or 8 (got {embedding_bits})")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    on_cpu = model if next(model.parameters()).device.type == "cpu" else copy.deepcopy(model).cpu()
    raw = export_onnx(on_cpu.eval(), workdir / f"{name}.exported.onnx", example)
    fp32 = optimize_onnx(raw, workdir / f"{name}.fp32.onnx", 0, 0)
    out, matmuls = workdir / f"{name}.onnx", workdir / f"{name}.matmuls.onnx"
    try:
        if embedding_bits == 8:
            return onnx_int8(fp32, out, reduce_range, True, per_channel=per_channel)
        onnx_int8(fp32, matmuls, reduce_range, False, per_channel=per_channel)
        return onnx_int4_embeddings(matmuls, out)
    finally:
        for scratch in (raw, fp32, matmuls):
            scratch.unlink(missing_ok=True)


# ------------------------------------------------------------------------ the variants


def int8_name(reduce_range: bool, per_channel: bool, embeddings: bool = True) -> str:
    """``"ort int8 7-bit per-channel"`` etc.; ``"(emb fp32)"`` marks a variant whose embedding table stays
    fp32."""
    return (
        f"ort int8{' 7-bit' if reduce_range else ''}{' per-channel' if per_channel else ''}"
        f"{'' if embeddings else ' (emb fp32)'}"
    )


def build_variants(
    model: Any,
    example: Mapping[str, Any],
    workdir: Path | str,
    reduce_range: Sequence[bool] = (True, False),
    per_channel: Sequence[bool] = (False, True),
    embeddings_fp32_variant: bool = True,
    bf16: bool = True,
    progress: bool = True,
) -> dict[str, tuple[Any, dict[str, Any]]]:
    """Every low-precision way to run ``model`` on a CPU: ``{name: (predictor, info)}``, fp32 PyTorch first.
    ``info`` holds ``backend``, ``dtype``, ``size`` (MB on disk, parameters), the switches and the ONNX
    ``path``.

    - PyTorch dynamic int8, one weight scale per matrix (and per channel if ``True in per_channel``);
    - the ONNX export in fp32 with ONNX Runtime's fusions;
    - ONNX Runtime dynamic int8 for every combination of ``reduce_range`` × ``per_channel``, embedding tables
      quantized too; with ``embeddings_fp32_variant``, the last combination again with the embeddings left in
      fp32;
    - with ``bf16``, the model cast to bfloat16.

    ONNX files go to ``workdir`` (overwritten on a re-run). ``example`` is a tokenized batch used for the
    export.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    params = count_params(model)
    grid = [(rr, pc, True) for rr in reduce_range for pc in per_channel]
    if embeddings_fp32_variant:
        grid.append((*grid[-1][:2], False))
    torch_pc = [False] + ([True] if True in per_channel else [])
    bar = progress_bar(total=2 + len(torch_pc) + len(grid) + int(bf16), desc="variants", disable=not progress)

    def info(backend: str, dtype: str, mb: float, **options: Any) -> dict[str, Any]:
        bar.update()
        return {"backend": backend, "dtype": dtype, "size": {"size_mb": mb, "num_params": params}, **options}

    out = {"fp32": (TorchPredictor(model), info("torch", "fp32", serialized_mb(model)))}
    for pc in torch_pc:  # fbgemm's int8 kernels use 7-bit activations (reduce_range) on x86
        q = torch_dynamic_int8(model, per_channel=pc)
        out[f"torch int8{' per-channel' if pc else ''}"] = (
            TorchPredictor(q),
            info(
                "torch",
                "int8",
                torch_state_mb(q),
                reduce_range=True,
                per_channel=pc,
                embeddings_quantized=False,
            ),
        )
    raw = export_onnx(model, workdir / "exported.onnx", example)
    fp32 = optimize_onnx(
        raw, workdir / "fp32.onnx", model.config.num_attention_heads, model.config.hidden_size
    )
    raw.unlink()
    out["ort fp32"] = (OnnxPredictor(fp32), info("onnxruntime", "fp32", fp32.stat().st_size / 1e6, path=fp32))
    for rr, pc, emb in grid:
        name = int8_name(rr, pc, emb)
        p = onnx_int8(
            fp32,
            workdir / (name.replace(" ", "_").replace("(", "").replace(")", "") + ".onnx"),
            rr,
            emb,
            per_channel=pc,
        )
        out[name] = (
            OnnxPredictor(p),
            info(
                "onnxruntime",
                "int8",
                p.stat().st_size / 1e6,
                path=p,
                reduce_range=rr,
                per_channel=pc,
                embeddings_quantized=emb,
            ),
        )
    if bf16:
        cast = TorchPredictor(model, dtype=torch.bfloat16)
        out["torch bf16"] = (cast, info("torch", "bf16", serialized_mb(cast.model)))
    bar.close()
    return out


def pick_int8(
    t: pd.DataFrame, max_points_lost: float = 1.0, min_agreement: float = 0.98, reference: str = "fp32"
) -> str:
    """The int8 variant to ship, chosen on the **validation** split: among those within ``max_points_lost`` of
    the fp32 validation accuracy and with at least ``min_agreement`` validation label agreement, the smallest
    (then the fastest). If none qualifies, the int8 variant with the highest validation agreement."""
    int8 = t[t["dtype"] == "int8"]
    if int8.empty:
        raise ValueError("no int8 variant in the table")
    ref_val = t.loc[reference, "val_accuracy"]
    ok = int8[
        (100 * (ref_val - int8["val_accuracy"]) <= max_points_lost) & (int8["val_agreement"] >= min_agreement)
    ]
    if ok.empty:
        return str(int8["val_agreement"].idxmax())
    return str(ok.sort_values(["size_mb", "throughput_b32"], ascending=[True, False]).index[0])


def knobs() -> list[tuple[str, str, str]]:
    """The pairs of variants that differ in one switch, ``(switch, without, with)``, for
    :func:`lib.experiment.pair_effects`: 7-bit vs 8-bit weights, per-channel scales, the embedding table, the
    backend."""
    pairs = [
        ("reduce_range off (8-bit weights)", int8_name(True, pc), int8_name(False, pc))
        for pc in (False, True)
    ]
    pairs += [
        ("per-channel weight scales", int8_name(rr, False), int8_name(rr, True)) for rr in (True, False)
    ]
    pairs += [
        ("embedding table quantized", int8_name(rr, pc, False), int8_name(rr, pc))
        for rr in (True, False)
        for pc in (True, False)
    ]
    return pairs + [
        ("per-channel weight scales", "torch int8", "torch int8 per-channel"),
        ("ONNX Runtime instead of PyTorch", "fp32", "ort fp32"),
        ("ONNX Runtime instead of PyTorch", "torch int8", int8_name(True, False)),
    ]


def embedding_share(model: Any) -> dict[str, float]:
    """How much of the model the token-embedding table is (parameters, share, fp32 MB)."""
    emb = model.get_input_embeddings().weight
    total = sum(p.numel() for p in model.parameters())
    return {
        "embedding_params": int(emb.numel()),
        "total_params": int(total),
        "embedding_share": emb.numel() / total,
        "embedding_mb_fp32": emb.numel() * 4 / 1e6,
    }
