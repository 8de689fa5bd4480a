"""Quantization: the fp32 teacher in lower precision, on the backends a CPU user actually has.

Every variant is a *predictor* (``batch of tensors -> logits``), so :func:`lib.evaluate.evaluate` and
:func:`lib.bench.compare` measure all of them with the same code as any torch model:

- ``torch`` ``int8``: ``torch.ao.quantization.quantize_dynamic`` on the Linear layers (int8 weights, activations
  quantized on the fly). Deprecated since PyTorch 2.10; its successor is torchao
  (``quantize_(model, Int8DynamicActivationInt8WeightConfig())``), which in eager mode on AVX2 CPUs is far slower
  than fp32 and, installed, makes transformers print load errors — so the deprecated path is what is measured.
- ``onnxruntime`` ``fp32``: the model exported with the ``torch.export``-based ONNX exporter (dynamic batch and
  sequence axes, one self-contained file), then ONNX Runtime's BERT graph fusions
  (``onnxruntime.transformers.optimizer``: attention, skip-LayerNorm and GELU kernels).
- ``onnxruntime`` ``int8``: ONNX Runtime dynamic quantization (``quant_pre_process``, then ``quantize_dynamic``) of
  the MatMuls and of the embedding tables (``Gather``); one weight scale per matrix or per output channel
  (``per_channel``); with or without ``reduce_range`` (7-bit weights: on CPUs without VNNI, u8×s8 products can
  saturate the 16-bit intermediate sums of the AVX2 kernels).
- ``torch`` ``bf16``: the model cast to bfloat16 — fast only where the CPU has bf16 instructions (AVX512-BF16, AMX).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .errors import ArtifactError, LabError

ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
ONNX_FILE = "model.onnx"
METADATA = "metadata.json"


class QuantizeError(LabError, RuntimeError):
    """A quantization backend is missing or failed; the message says which and what to do."""


@dataclass
class Variant:
    """One way to run the model: how (backend, dtype), the callable, and what it costs on disk."""

    name: str
    backend: str  # "torch" or "onnxruntime"
    dtype: str  # "fp32", "int8", "bf16"
    predictor: Callable[[dict], Any]
    size_mb: float
    path: Path | None = None  # the ONNX file, for ONNX variants
    options: dict[str, Any] = field(default_factory=dict)  # e.g. reduce_range, embeddings quantized


# ---------------------------------------------------------------------------------------------- PyTorch

def torch_dynamic_int8(model: Any, per_channel: bool = False) -> Any:
    """A copy of ``model`` whose ``nn.Linear`` layers are dynamically quantized to int8 (the input is untouched):
    one weight scale per matrix, or one per output channel with ``per_channel``.

    ``torch.ao.quantization`` warns that it is deprecated: that warning is the message users should see.
    """
    import torch
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).eval(), {torch.nn.Linear: qconfig},
                                                  dtype=torch.qint8)


def torch_state_mb(model: Any) -> float:
    """Serialized size (MB) of a model's ``state_dict`` with ``torch.save`` — the format that can hold packed int8
    weights (safetensors cannot)."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes / 1e6


class CastPredictor:
    """Run a copy of a torch model in another dtype (e.g. ``torch.bfloat16``); logits come back as float32."""

    def __init__(self, model: Any, dtype: Any):
        self.model = copy.deepcopy(model).to(dtype).eval()

    def __call__(self, batch: dict) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(**batch).logits.float().numpy()


def cpu_flags() -> set[str]:
    """The CPU feature flags of this machine (Linux), empty where unknown."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_support(flags: Iterable[str] | None = None) -> dict[str, bool]:
    """Which low-precision instructions this CPU has: int8 dot products (VNNI) and native bf16."""
    flags = set(cpu_flags() if flags is None else flags)
    return {"avx2": "avx2" in flags, "avx512": "avx512f" in flags,
            "int8_vnni": bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"}),
            "bf16": bool(flags & {"avx512_bf16", "amx_bf16"})}


# ---------------------------------------------------------------------------------------------- ONNX

def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as e:
        raise QuantizeError("ONNX Runtime is not installed: `pip install onnxruntime` (make install does it)") from e
    return onnxruntime


class _LogitsOnly:
    """Wrap a classifier so the exported graph has plain tensor inputs and one ``logits`` output."""

    def __new__(cls, model: Any):
        import torch

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

    Uses the ``torch.export``-based exporter (the default since PyTorch 2.9; needs ``onnxscript``), with the batch and
    sequence axes dynamic. ``example`` is one tokenized batch; its keys among ``ONNX_INPUTS`` become the graph
    inputs. The write is atomic. A failed export raises :class:`QuantizeError` with the exporter's reason.
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [k for k in ONNX_INPUTS if k in example]  # token_type_ids optional (not every tokenizer makes them)
    if names[:2] != ["input_ids", "attention_mask"]:
        raise QuantizeError(f"ONNX export needs a tokenized batch with input_ids and attention_mask, got {list(example)}")
    args = tuple(torch.as_tensor(example[k]) for k in names)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    tmp = path.with_name(f".{path.name}.tmp")
    quiet = _QuietExporter()
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    logger.addFilter(quiet)
    try:
        with warnings.catch_warnings():
            # the exporter warns that our two dynamic-axis names are reused across inputs: that is the intent
            warnings.filterwarnings("ignore", message=r".*axis name: .* will not be used", category=UserWarning)
            program = torch.onnx.export(_LogitsOnly(model), args, input_names=names, output_names=["logits"],
                                        dynamic_shapes={k: {0: batch, 1: seq} for k in names}, dynamo=True,
                                        optimize=True, verbose=False)
        program.save(str(tmp), external_data=False)
        os.replace(tmp, path)
    except ImportError as e:
        raise QuantizeError(f"ONNX export needs `onnx` and `onnxscript` ({e}): make install adds them") from e
    except Exception as e:  # the exporter raises many types; the user needs the reason and the fix
        reason = e.__cause__ or e  # the exporter wraps torch.export's error in a long generic message
        raise QuantizeError(f"ONNX export of {type(model).__name__} failed ({type(reason).__name__}: "
                            f"{str(reason).splitlines()[0][:300] if str(reason) else ''}). "
                            "Export the fp32 model (not a quantized or peft-wrapped one).") from e
    finally:
        logger.removeFilter(quiet)
        tmp.unlink(missing_ok=True)
    return path


@contextlib.contextmanager
def _scratch_cwd():
    """Run ONNX Runtime's tools in a throwaway working directory: when its symbolic shape inference gives up
    (it does on the exported mask arithmetic), it dumps ``sym_shape_infer_temp.onnx`` and external-data files
    into the *current* directory, which would litter the user's project."""
    with tempfile.TemporaryDirectory(prefix="lab-ort-") as scratch, contextlib.chdir(scratch):
        yield


def optimize_onnx(path: Path | str, out_path: Path | str, num_heads: int, hidden_size: int) -> Path:
    """ONNX Runtime's BERT fusions (attention, skip-LayerNorm, bias-GELU) for CPU; atomic, returns ``out_path``."""
    _ort()
    from onnxruntime.transformers.optimizer import optimize_model

    path, out_path = Path(path).resolve(), Path(out_path).resolve()
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    try:
        with _scratch_cwd():
            optimized = optimize_model(str(path), model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
                                       opt_level=1, use_gpu=False)
        optimized.save_model_to_file(str(tmp), use_external_data_format=False)
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path


def fused_ops(path: Path | str) -> dict[str, int]:
    """Operator counts of an ONNX graph (e.g. how many ``Attention`` / ``MatMulInteger`` nodes it has)."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def onnx_int8(fp32_path: Path | str, out_path: Path | str, reduce_range: bool, quantize_embeddings: bool,
              per_channel: bool = False) -> Path:
    """Dynamic int8 quantization with ONNX Runtime: ``quant_pre_process`` (shape inference and graph clean-up, as
    ONNX Runtime recommends), then ``quantize_dynamic`` of the MatMuls (int8 weights, activations quantized per
    batch at run time) and, when ``quantize_embeddings``, of the embedding tables (``Gather``). ``per_channel``:
    one weight scale per output channel instead of one per matrix. Atomic; returns ``out_path``."""
    _ort()
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path, out_path = Path(fp32_path).resolve(), Path(out_path).resolve()
    pre = out_path.with_name(f".{out_path.stem}.pre.onnx")
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    ops = ["MatMul", "Attention", "Gather"] if quantize_embeddings else ["MatMul", "Attention"]
    try:
        # symbolic shape inference cannot follow the exporter's mask arithmetic; ONNX's own inference suffices
        with _scratch_cwd():
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
            quantize_dynamic(str(pre), str(tmp), weight_type=QuantType.QInt8, reduce_range=reduce_range,
                             per_channel=per_channel, op_types_to_quantize=ops)
        os.replace(tmp, out_path)
    except Exception as e:
        raise QuantizeError(f"ONNX Runtime quantization of {fp32_path.name} failed ({type(e).__name__}: {e})") from e
    finally:
        pre.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    return out_path


class OnnxPredictor:
    """Run an ONNX model with ONNX Runtime on the CPU as a ``batch -> logits`` predictor (float32 numpy)."""

    def __init__(self, path: Path | str, threads: int | None = None):
        ort = _ort()
        self.path = Path(path)
        if not self.path.is_file():
            raise ArtifactError(f"no ONNX model at {self.path}: export it first (lib.quantize.export_onnx)")
        import torch

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()  # the same threads as the torch variants
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ArtifactError(f"ONNX Runtime cannot load {self.path} ({type(e).__name__}: {e}); "
                                "re-run the notebook that writes it") from None
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, batch: Mapping[str, Any]) -> np.ndarray:
        feed = {}
        for k in self.inputs:
            v = batch[k]
            feed[k] = np.asarray(v.numpy() if hasattr(v, "numpy") else v, dtype=np.int64)
        return self.session.run(["logits"], feed)[0].astype(np.float32)

    @property
    def size_mb(self) -> float:
        return self.path.stat().st_size / 1e6


# ---------------------------------------------------------------------------------------------- the variants

def int8_name(reduce_range: bool, per_channel: bool, embeddings: bool = True) -> str:
    """``"ort int8 7-bit per-channel"`` etc.; ``"(emb fp32)"`` marks a variant whose embedding table stays fp32."""
    return (f"ort int8{' 7-bit' if reduce_range else ''}{' per-channel' if per_channel else ''}"
            f"{'' if embeddings else ' (emb fp32)'}")


def build_variants(model: Any, example: Mapping[str, Any], workdir: Path | str,
                   reduce_range: Sequence[bool] = (True, False), per_channel: Sequence[bool] = (False, True),
                   embeddings_fp32_variant: bool = True, bf16: bool = True,
                   progress: bool = True) -> dict[str, Variant]:
    """Every variant of ``model`` measured in 03_quantize, the reference (``fp32``, PyTorch) first.

    - PyTorch dynamic int8, per-tensor (and per-channel if ``True in per_channel``);
    - the ONNX export in fp32 with ONNX Runtime's fusions;
    - ONNX Runtime dynamic int8 for every combination of ``reduce_range`` × ``per_channel``, embedding tables
      quantized too; with ``embeddings_fp32_variant``, the last combination again with the embeddings left in fp32;
    - with ``bf16``, the model cast to bfloat16.

    ONNX files go to ``workdir`` (overwritten on a re-run). ``example`` is a tokenized batch used for the export.
    """
    from tqdm.auto import tqdm

    from .bench import TorchPredictor, serialized_mb

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    grid = [(rr, pc, True) for rr in reduce_range for pc in per_channel]
    if embeddings_fp32_variant:
        grid.append((*grid[-1][:2], False))
    torch_pc = [False] + ([True] if True in per_channel else [])
    bar = tqdm(total=2 + len(torch_pc) + len(grid) + int(bf16), desc="variants", disable=not progress)
    out = {"fp32": Variant("fp32", "torch", "fp32", TorchPredictor(model), serialized_mb(model))}
    bar.update()
    for pc in torch_pc:  # fbgemm's int8 kernels use 7-bit activations (reduce_range) on x86
        q = torch_dynamic_int8(model, per_channel=pc)
        name = f"torch int8{' per-channel' if pc else ''}"
        out[name] = Variant(name, "torch", "int8", TorchPredictor(q), torch_state_mb(q),
                            options={"reduce_range": True, "per_channel": pc, "embeddings_quantized": False})
        bar.update()
    raw = export_onnx(model, workdir / "exported.onnx", example)
    fp32 = optimize_onnx(raw, workdir / "fp32.onnx", cfg.num_attention_heads, cfg.hidden_size)
    raw.unlink()
    out["ort fp32"] = Variant("ort fp32", "onnxruntime", "fp32", OnnxPredictor(fp32), fp32.stat().st_size / 1e6,
                              path=fp32, options={"fused_ops": fused_ops(fp32)})
    bar.update()
    for rr, pc, emb in grid:
        name = int8_name(rr, pc, emb)
        file = workdir / (name.replace(" ", "_").replace("(", "").replace(")", "") + ".onnx")
        p = onnx_int8(fp32, file, rr, emb, per_channel=pc)
        out[name] = Variant(name, "onnxruntime", "int8", OnnxPredictor(p), p.stat().st_size / 1e6, path=p,
                            options={"reduce_range": rr, "per_channel": pc, "embeddings_quantized": emb})
        bar.update()
    if bf16:
        import torch

        bmodel = CastPredictor(model, torch.bfloat16)
        out["torch bf16"] = Variant("torch bf16", "torch", "bf16", bmodel, serialized_mb(bmodel.model))
        bar.update()
    bar.close()
    return out


def score(variants: Mapping[str, Variant], loader: Iterable[dict], reference: str = "fp32",
          progress: bool = True) -> pd.DataFrame:
    """Accuracy, macro-F1 and agreement with ``reference`` of every variant on ``loader``; one row per variant."""
    from tqdm.auto import tqdm

    from .evaluate import agreement, classification_metrics, predict_logits

    logits = {}
    for name in tqdm(list(variants), desc="scoring", disable=not progress):
        logits[name], labels = predict_logits(variants[name].predictor, loader)
    rows = []
    for name, v in variants.items():
        m = classification_metrics(labels, logits[name].argmax(-1), logits[name].shape[-1])
        rows.append({"name": name, "backend": v.backend, "dtype": v.dtype, "accuracy": m["accuracy"], "f1": m["f1"],
                     **agreement(logits[reference], logits[name]), "size_mb": v.size_mb})
    return pd.DataFrame(rows).set_index("name")


def table(test: pd.DataFrame, val: pd.DataFrame, bench: pd.DataFrame, reference: str = "fp32") -> pd.DataFrame:
    """One row per variant: test metrics, validation accuracy/agreement, speed (side by side) and size ratios."""
    t = test.join(val[["accuracy", "agreement"]].add_prefix("val_")).join(bench)
    t["points_vs_fp32"] = 100 * (t["accuracy"] - t.loc[reference, "accuracy"])
    t["smaller_x"] = t.loc[reference, "size_mb"] / t["size_mb"]
    return t


def pick_int8(t: pd.DataFrame, max_points_lost: float = 1.0, min_agreement: float = 0.98,
              reference: str = "fp32") -> str:
    """The int8 variant to ship, chosen on the **validation** split: among those within ``max_points_lost`` of the
    fp32 validation accuracy and with at least ``min_agreement`` validation label agreement, the smallest (then the
    fastest). If none qualifies, the int8 variant with the highest validation agreement."""
    int8 = t[t["dtype"] == "int8"]
    if int8.empty:
        raise ValueError("no int8 variant in the table")
    ref_val = t.loc[reference, "val_accuracy"]
    ok = int8[(100 * (ref_val - int8["val_accuracy"]) <= max_points_lost) & (int8["val_agreement"] >= min_agreement)]
    if ok.empty:
        return str(int8["val_agreement"].idxmax())
    return str(ok.sort_values(["size_mb", "throughput_b32"], ascending=[True, False]).index[0])


def knob_effects(t: pd.DataFrame) -> pd.DataFrame:
    """What each switch changed, read off a :func:`table`: one row per pair of variants that differ in one thing
    (``reduce_range``, per-channel scales, embeddings quantized, backend). Changes are of the second variant relative to the first."""
    rows = []

    def pair(knob: str, a: str, b: str) -> None:
        if a in t.index and b in t.index:
            rows.append({"change": f"{a} → {b}", "knob": knob,
                         "accuracy_points": 100 * (t.loc[b, "accuracy"] - t.loc[a, "accuracy"]),
                         "agreement_points": 100 * (t.loc[b, "agreement"] - t.loc[a, "agreement"]),
                         "size_ratio": t.loc[b, "size_mb"] / t.loc[a, "size_mb"],
                         "speed_ratio_b32": t.loc[b, "throughput_b32"] / t.loc[a, "throughput_b32"]})

    for pc in (False, True):
        pair("reduce_range off (8-bit weights)", int8_name(True, pc), int8_name(False, pc))
    for rr in (True, False):
        pair("per-channel weight scales", int8_name(rr, False), int8_name(rr, True))
    for rr in (True, False):
        for pc in (True, False):
            pair("embedding table quantized", int8_name(rr, pc, False), int8_name(rr, pc))
    pair("per-channel weight scales", "torch int8", "torch int8 per-channel")
    pair("ONNX Runtime instead of PyTorch", "fp32", "ort fp32")
    pair("ONNX Runtime instead of PyTorch", "torch int8", int8_name(True, False))
    return pd.DataFrame(rows).set_index("change")


def embedding_share(model: Any) -> dict[str, float]:
    """How much of the model the token-embedding table is (parameters, share, fp32 MB)."""
    emb = model.get_input_embeddings().weight
    total = sum(p.numel() for p in model.parameters())
    return {"embedding_params": int(emb.numel()), "total_params": int(total), "embedding_share": emb.numel() / total,
            "embedding_mb_fp32": emb.numel() * 4 / 1e6}


def variants_record(t: pd.DataFrame, variants: Mapping[str, Variant], num_params: int,
                    reference: str = "fp32") -> list[dict[str, Any]]:
    """The ``variants`` list of 03_quantize's metrics record (see :mod:`lib.results`)."""
    from .results import variant

    out = []
    for name, row in t.iterrows():
        v = variants[name]
        extra = {"backend": v.backend, "dtype": v.dtype, "agreement": row["agreement"],
                 "max_abs_logit_diff": row["max_abs_logit_diff"], "latency_ms_b1_p90": row["latency_ms_b1_p90"],
                 "val_accuracy": row["val_accuracy"], "smaller_x": row["smaller_x"],
                 **{k: val for k, val in v.options.items() if k != "fused_ops"}}
        out.append(variant(name, "reference" if name == reference else "variant", row.to_dict(), row.to_dict(),
                           {"size_mb": row["size_mb"], "num_params": num_params}, **extra))
    return out


# ---------------------------------------------------------------------------------------------- artifacts

def save_onnx_artifact(path: Path | str, onnx_file: Path | str, tokenizer: Any, metadata: dict[str, Any]) -> Path:
    """An ONNX artifact folder — ``model.onnx``, the tokenizer, ``metadata.json`` — written atomically."""
    from .utils import atomic_dir

    path = Path(path)
    meta = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "format": "onnx", **metadata}
    with atomic_dir(path) as tmp:
        shutil.copyfile(onnx_file, tmp / ONNX_FILE)
        tokenizer.save_pretrained(tmp)
        (tmp / METADATA).write_text(json.dumps(meta, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def load_onnx_artifact(path: Path | str) -> tuple[OnnxPredictor, Any, dict[str, Any]]:
    """``(predictor, tokenizer, metadata)`` from a folder written by :func:`save_onnx_artifact`."""
    from transformers import AutoTokenizer

    from .models import check_artifact

    path = Path(path)
    problem = check_artifact(path)
    if problem:
        raise ArtifactError(f"ONNX artifact {problem}")
    predictor = OnnxPredictor(path / ONNX_FILE)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return predictor, tokenizer, json.loads((path / METADATA).read_text(encoding="utf-8"))
