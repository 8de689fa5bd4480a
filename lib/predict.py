"""Predictors: one interface for every way a model can run.

A predictor is a callable ``batch -> logits``: it takes one tokenized batch (``input_ids``,
``attention_mask``, ..., as torch tensors) and returns the logits as a float32 numpy array.
:mod:`lib.evaluate` and :mod:`lib.bench` accept any predictor, so a PyTorch model, the same model cast to
bfloat16, and an ONNX Runtime session are scored and timed by the very same code.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.special import softmax

from .errors import ArtifactError, LabError
from .utils import device, to_device

Predictor = Callable[[Mapping[str, Any]], np.ndarray]


class BackendError(LabError, RuntimeError):
    """An inference backend is missing or failed; the message says which and what to do."""


class TorchPredictor:
    """A torch model in eval mode without autograd, on the chosen device (:func:`lib.utils.device`); with
    ``dtype`` (e.g. ``torch.bfloat16``) a cast *copy* runs."""

    def __init__(self, model: Any, dtype: Any = None):
        self.device = device()
        self.model = (copy.deepcopy(model).to(dtype) if dtype is not None else model).to(self.device).eval()
        self.dtype = dtype

    def __call__(self, batch: Mapping[str, Any]) -> np.ndarray:
        with torch.inference_mode():
            out = self.model(**to_device(batch, self.device)).logits
            return (
                out.float().cpu().numpy()
            )  # .cpu() waits for the GPU: a timing around this call is complete


def onnxruntime() -> Any:
    """The ``onnxruntime`` module, or a clear error. Imported on first use: only ONNX predictors need it."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise BackendError(
            "ONNX Runtime is not installed: `pip install onnxruntime` (make install does it)"
        ) from e
    return ort


class OnnxPredictor:
    """An ONNX model run by ONNX Runtime with as many threads as torch uses (a fair comparison); on the GPU
    when the chosen device is ``cuda`` and this ONNX Runtime build has the CUDA provider
    (``onnxruntime-gpu``), else the CPU."""

    def __init__(self, path: Path | str, threads: int | None = None):
        ort = onnxruntime()
        self.path = Path(path)
        if not self.path.is_file():
            raise ArtifactError(f"no ONNX model at {self.path}: export it first (lib.quantize.export_onnx)")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.providers = providers(ort)
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=self.providers)
        except Exception as e:
            raise ArtifactError(
                f"ONNX Runtime cannot load {self.path} ({type(e).__name__}: {e}); "
                "re-run the notebook that writes it"
            ) from None
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, batch: Mapping[str, Any]) -> np.ndarray:
        feed = {
            k: np.asarray(batch[k].cpu().numpy() if hasattr(batch[k], "cpu") else batch[k], dtype=np.int64)
            for k in self.inputs
        }
        return self.session.run(["logits"], feed)[0].astype(np.float32)

    @property
    def size_mb(self) -> float:
        return self.path.stat().st_size / 1e6


def providers(ort: Any = None) -> list[str]:
    """ONNX Runtime execution providers for the chosen device: CUDA first when asked for and available."""
    ort = ort or onnxruntime()
    if device().type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def as_predictor(obj: Any) -> Predictor:
    """A torch module becomes a :class:`TorchPredictor`; any other callable is taken as a predictor
    already."""
    if isinstance(obj, torch.nn.Module):
        return TorchPredictor(obj)
    if not callable(obj):
        raise TypeError(f"expected a torch model or a batch -> logits callable, got {type(obj).__name__}")
    return obj


def encode(tokenizer: Any, texts: list[str], max_length: int) -> Any:
    """One batch of ``texts``, truncated to ``max_length`` tokens and padded to its longest, as torch tensors:
    in one call of the tokenizer (its Rust code for a fast tokenizer)."""
    return tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")


class TextProba:
    """``texts -> class probabilities`` for any model or predictor: tokenizes and predicts in length-sorted
    batches of ``batch_size`` (LIME passes all its ``num_samples`` perturbed texts in one call; one batch of
    thousands would be slow and memory-hungry, one text at a time slower still). Returns float64 probabilities
    in the texts' order."""

    def __init__(self, model: Any, tokenizer: Any, max_length: int, batch_size: int = 64):
        self.call, self.tokenizer = as_predictor(model), tokenizer
        self.max_length, self.batch_size = max_length, batch_size
        self.texts_seen = 0  # how many texts went through: the cost of an explanation, in forward passes

    def __call__(self, texts: Any) -> np.ndarray:
        texts = [str(t) for t in texts]
        order = np.argsort([len(t) for t in texts], kind="stable")
        out: np.ndarray | None = None
        for start in range(0, len(texts), self.batch_size):
            idx = order[start : start + self.batch_size]
            batch = encode(self.tokenizer, [texts[i] for i in idx], self.max_length)
            logits = np.asarray(self.call(dict(batch)), dtype=np.float64)
            if out is None:
                out = np.empty((len(texts), logits.shape[-1]))
            out[idx] = softmax(logits, axis=-1)
        self.texts_seen += len(texts)
        return out if out is not None else np.empty((0, 0))
