"""Quantization on the tiny random BERT: every variant through one predictor interface, agreement, artifacts,
and the clear errors (no ONNX Runtime, a failed export, a missing or corrupt ONNX file)."""

from __future__ import annotations

import builtins
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import lib
from lib.predict import BackendError
from lib.techniques.quantize import QuantizeError


def texts_batch(tokenizer, texts=("a film that moved me", "dull", "far too long for its own good, and loud")):
    return dict(tokenizer(list(texts), padding=True, return_tensors="pt"))


@pytest.fixture(scope="module")
def built(tiny, tmp_path_factory):
    make, tok = tiny
    model = make(seed=1)
    work = tmp_path_factory.mktemp("quant")
    built = lib.quantize.build_variants(model, texts_batch(tok), work, progress=False)
    variants = {name: SimpleNamespace(predictor=p, **info) for name, (p, info) in built.items()}
    for v in variants.values():
        v.size_mb = v.size["size_mb"]
    return model, tok, variants


def test_every_variant_runs_through_one_interface(built):
    model, tok, variants = built
    assert list(variants)[0] == "fp32"
    assert {(v.backend, v.dtype) for v in variants.values()} == {
        ("torch", "fp32"),
        ("torch", "int8"),
        ("onnxruntime", "fp32"),
        ("onnxruntime", "int8"),
        ("torch", "bf16"),
    }
    assert len([v for v in variants.values() if v.backend == "onnxruntime" and v.dtype == "int8"]) == 5
    assert "torch int8 per-channel" in variants and "ort int8 per-channel (emb fp32)" in variants
    # other batch size and sequence length than the export example: the ONNX axes are dynamic
    x = texts_batch(
        tok, ["one", "two words", "three words here", "and a fourth, much longer, sentence to pad to"]
    )
    ref = variants["fp32"].predictor(x)
    for name, v in variants.items():
        out = v.predictor(x)
        assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (4, 2), name
        tol = 1e-4 if v.dtype == "fp32" else 0.05
        assert np.max(np.abs(out - ref)) < tol, name


def test_sizes_follow_what_was_quantized(built):
    _, _, v = built
    fp32 = v["fp32"].size_mb
    assert abs(v["ort fp32"].size_mb - fp32) / fp32 < 0.05
    # the tiny model is mostly embedding table: only quantizing it makes the file much smaller
    assert v["ort int8 7-bit"].size_mb < fp32 / 3.5 and v["ort int8 per-channel"].size_mb < fp32 / 3.5
    assert v["ort int8 per-channel (emb fp32)"].size_mb > fp32 * 0.8
    assert abs(v["torch bf16"].size_mb - fp32 / 2) / fp32 < 0.05
    ops = lib.quantize.fused_ops(v["ort int8 7-bit"].path)
    assert ops.get("MatMulInteger", 0) >= 8 and "DynamicQuantizeLinear" in ops


def test_comparison_scores_every_variant_against_independent_logits(built, toy):
    model, tok, variants = built
    loader = lib.data.make_loader(lib.data.Encoded(toy, tok, 32), tok, 16, shuffle=False)
    board = lib.experiment.Comparison("fp32")
    for name, v in variants.items():
        board.add(name, v.predictor, size=v.size, dtype=v.dtype)
    scores = board.evaluate(loader, progress=False)
    logits, labels = lib.evaluate.predict_logits(variants["ort int8 per-channel"].predictor, loader)
    ref, _ = lib.evaluate.predict_logits(model, loader)  # the torch model itself, not the fp32 predictor
    expected = np.mean(ref.argmax(-1) == logits.argmax(-1))
    assert scores.loc["ort int8 per-channel", "agreement"] == pytest.approx(expected)
    assert scores.loc["ort int8 per-channel", "max_abs_logit_diff"] == pytest.approx(
        np.max(np.abs(ref - logits))
    )
    assert scores.loc["ort int8 per-channel", "accuracy"] == pytest.approx(
        np.mean(logits.argmax(-1) == labels)
    )
    assert scores.loc["ort int8 per-channel", "smaller_x"] == pytest.approx(
        variants["fp32"].size_mb / variants["ort int8 per-channel"].size_mb
    )


def test_agreement_counts_labels_and_largest_change():
    ref = np.array([[1.0, 0.0], [0.0, 1.0], [0.2, 0.1], [0.0, 3.0]])
    other = np.array([[0.9, 0.0], [1.0, 0.5], [0.1, 0.2], [0.0, 3.5]])
    a = lib.evaluate.agreement(ref, other)
    assert a["agreement"] == 0.5 and a["max_abs_logit_diff"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shapes differ"):
        lib.evaluate.agreement(ref, other[:2])


def _table(val_acc, val_agree, sizes, speeds):
    import pandas as pd

    names = ["fp32", "ort int8 (emb fp32)", "ort int8 7-bit", "ort int8"]
    return pd.DataFrame(
        {
            "dtype": ["fp32", "int8", "int8", "int8"],
            "val_accuracy": val_acc,
            "val_agreement": val_agree,
            "size_mb": sizes,
            "throughput_b32": speeds,
        },
        index=names,
    )


def test_pick_int8_chooses_on_validation():
    t = _table([0.80, 0.795, 0.796, 0.70], [1, 0.99, 0.985, 0.9], [90, 50, 23, 50], [100, 180, 175, 200])
    assert lib.quantize.pick_int8(t) == "ort int8 7-bit"  # smallest that qualifies
    t = _table([0.80, 0.795, 0.70, 0.70], [1, 0.99, 0.9, 0.9], [90, 50, 23, 50], [100, 180, 175, 200])
    assert lib.quantize.pick_int8(t) == "ort int8 (emb fp32)"  # the small one lost too much
    t = _table([0.80, 0.6, 0.6, 0.6], [1, 0.9, 0.95, 0.7], [90, 50, 23, 50], [100, 180, 175, 200])
    assert lib.quantize.pick_int8(t) == "ort int8 7-bit"  # none qualifies: the most faithful


def test_onnx_artifact_round_trip(built, tmp_path):
    _, tok, variants = built
    v = variants["ort int8 7-bit per-channel"]
    path = lib.artifacts.save(tmp_path / "quantized", v.path, tok, {"variant": "ort int8 7-bit per-channel"})
    assert (
        lib.runner.catalog.check_artifact(path) is None and lib.runner.catalog.artifact_kind(path) == "onnx"
    )
    predictor, tok2, meta = lib.artifacts.load(path)
    assert meta["variant"] == "ort int8 7-bit per-channel" and meta["format"] == "onnx"
    assert isinstance(predictor, lib.predict.OnnxPredictor)
    x = texts_batch(tok2)
    np.testing.assert_array_equal(predictor(x), v.predictor(x))


def test_onnx_tools_leave_the_working_directory_clean(tiny, tmp_path, monkeypatch):
    """ONNX Runtime's symbolic shape inference dumps ``sym_shape_infer_temp.onnx`` (+ data files) into the
    current directory when it gives up; such dumps once reached this repository's root (and git)."""
    make, tok = tiny
    cwd, work = tmp_path / "cwd", tmp_path / "work"
    cwd.mkdir(), work.mkdir()
    monkeypatch.chdir(cwd)
    raw = lib.quantize.export_onnx(make(), work / "m.onnx", texts_batch(tok))
    cfg = make().config
    opt = lib.quantize.optimize_onnx(raw, work / "opt.onnx", cfg.num_attention_heads, cfg.hidden_size)
    lib.quantize.onnx_int8(opt, work / "q.onnx", reduce_range=True, quantize_embeddings=True)
    assert sorted(p.name for p in work.iterdir()) == ["m.onnx", "opt.onnx", "q.onnx"]
    assert not list(cwd.iterdir())


def test_corrupt_or_missing_onnx_gives_a_clear_error(built, tmp_path):
    _, tok, variants = built
    path = lib.artifacts.save(tmp_path / "q", variants["ort int8"].path, tok, {})  # per-tensor
    (path / "model.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(lib.errors.ArtifactError, match="cannot load"):
        lib.artifacts.load(path)
    (path / "model.onnx").unlink()
    with pytest.raises(lib.errors.ArtifactError, match="missing"):
        lib.artifacts.load(path)
    with pytest.raises(lib.errors.ArtifactError, match="export it first"):
        lib.predict.OnnxPredictor(tmp_path / "nowhere.onnx")


def test_missing_onnxruntime_gives_a_clear_error(monkeypatch, tmp_path):
    real_import = builtins.__import__

    def no_ort(name, *args, **kwargs):
        if name == "onnxruntime" or name.startswith("onnxruntime."):
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ort)
    with pytest.raises(BackendError, match="pip install onnxruntime"):
        lib.predict.OnnxPredictor(tmp_path / "m.onnx")
    with pytest.raises(BackendError, match="pip install onnxruntime"):
        lib.quantize.onnx_int8(tmp_path / "m.onnx", tmp_path / "q.onnx", True, True)


def test_failed_export_gives_a_clear_error(tiny, tmp_path):
    make, tok = tiny
    model = make()

    class Broken(torch.nn.Module):  # data-dependent Python control flow: torch.export cannot trace it
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            if attention_mask.sum() > 3:
                return self.inner(input_ids=input_ids, attention_mask=attention_mask)
            return self.inner(input_ids=input_ids)

    with pytest.raises(QuantizeError, match="ONNX export of Broken failed"):
        lib.quantize.export_onnx(Broken(), tmp_path / "m.onnx", texts_batch(tok))
    assert not list(tmp_path.iterdir())  # nothing half-written
    with pytest.raises(QuantizeError, match="input_ids and attention_mask"):
        lib.quantize.export_onnx(
            model, tmp_path / "m.onnx", {"input_ids": torch.ones(1, 3, dtype=torch.long)}
        )


def test_cpu_support_reads_flags():
    assert lib.utils.cpu_support({"avx2", "fma"}) == {
        "avx2": True,
        "avx512": False,
        "int8_vnni": False,
        "bf16": False,
        "amx": False,
    }
    s = lib.utils.cpu_support({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"})
    assert s["int8_vnni"] and s["bf16"] and s["avx512"] and not s["amx"]
    intel = {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"}
    assert lib.utils.cpu_support(intel)["amx"]  # a Sapphire Rapids-class Xeon: int8/bf16 on tile units
    assert lib.utils.isa(intel, "") == "AVX-512 VNNI BF16 AMX"


CPUINFO = (
    "processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\nmodel name\t: x\n\n"
)


@pytest.mark.parametrize(
    "vendor, family, model, generation",
    [
        ("AuthenticAMD", 25, 1, "Zen 3"),  # Milan
        ("AuthenticAMD", 25, 17, "Zen 4"),  # Genoa: the machine the budgets are set on
        ("AuthenticAMD", 26, 2, "Zen 5"),  # Turin
        ("GenuineIntel", 6, 143, "Intel family 6 model 143"),
    ],
)
def test_the_cpu_generation_is_named_from_family_and_model(vendor, family, model, generation):
    text = CPUINFO.format(vendor=vendor, family=family, model=model)
    assert lib.utils.cpu_generation(text) == generation
    assert lib.utils.cpu_generation("") == ""  # unknown: no name rather than a wrong one
    flags = {"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}
    assert lib.utils.isa(flags, generation) == f"{generation}, AVX-512 VNNI BF16"
    assert lib.utils.isa({"avx2"}) == "AVX2"  # flags alone: only the flags


def test_stolen_cpu_time_is_read_from_proc_stat():
    before = lib.utils.cpu_ticks("cpu  100 0 50 800 10 0 5 35 0 0\ncpu0 50 0 25 400 5 0 2 18 0 0\n")
    after = lib.utils.cpu_ticks("cpu  300 0 90 1400 10 0 5 95 0 0\n")
    assert before == (35, 1000) and after == (95, 1900)
    assert lib.utils.steal_share(before, after) == round(60 / 900, 4)  # 60 of 900 ticks stolen
    assert lib.utils.steal_share(after, before) is None and lib.utils.steal_share(None, after) is None
    assert lib.utils.cpu_ticks("intr 1 2 3") is None
    here = lib.utils.cpu_ticks()  # this machine, if it is Linux
    assert here is None or 0 <= here[0] <= here[1]


def test_embedding_share_of_tiny_bert(tiny):
    model = tiny[0]()
    e = lib.quantize.embedding_share(model)
    assert e["embedding_params"] == 30522 * 32
    assert 0.5 < e["embedding_share"] < 1 and e["embedding_mb_fp32"] == pytest.approx(30522 * 32 * 4 / 1e6)


@pytest.mark.parametrize("per_channel", [False, True])
def test_int8_weights_round_trip_within_half_a_step(per_channel):
    torch.manual_seed(0)
    w = torch.randn(16, 32)
    w[3, 5] = 40.0  # one outlier
    q, scale = lib.quantize.int8_weights(w, per_channel=per_channel)
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127
    assert torch.all((w - q.float() * scale).abs() <= scale / 2 + 1e-6)
    assert scale.numel() == (16 if per_channel else 1)
    q7, _ = lib.quantize.int8_weights(w, per_channel=per_channel, reduce_range=True)
    assert int(q7.abs().max()) == 63


def test_per_channel_scales_contain_an_outlier(tiny):
    model = tiny[0]()
    with torch.no_grad():
        model.bert.encoder.layer[0].output.dense.weight[0, 0] = 50.0  # an outlier in one row of one matrix
    errors = lib.quantize.weight_errors(model)
    row = errors.loc["layer.0.output.dense"]
    assert row["per-channel"] < row["per-matrix"] / 3  # one scale per row confines the outlier to its row
    assert errors["per-matrix"].idxmax() == "layer.0.output.dense"


def test_a_stacked_model_exports_to_int8_onnx(tiny, tmp_path):
    """Pruned (uneven layers) and vocabulary-trimmed: the int8 file predicts like the torch model and is
    small."""
    make, tok = tiny
    model = lib.prune.remove_units(make(seed=1), lib.prune.Plan(heads={0: [0]}, neurons={1: list(range(16))}))
    x = texts_batch(tok)
    keep = {int(i) for i in x["input_ids"].flatten()} | set(tok.all_special_ids)
    trimmed = lib.prune.trim_vocabulary(model, keep, tok.unk_token_id).eval()
    path = lib.quantize.int8_onnx(trimmed, x, tmp_path, name="stacked")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stacked.onnx"]  # the fp32 intermediates are gone
    ort = lib.predict.OnnxPredictor(path)(x)
    with torch.no_grad():
        ref = trimmed(**x).logits.numpy()
    assert np.abs(ort - ref).max() < 0.1 * np.abs(ref).max() + 0.05
    assert (
        path.stat().st_size < lib.bench.serialized_mb(trimmed) * 1e6
    )  # int8 weights (the int32 remap table stays)


def test_the_stack_with_a_4_bit_embedding_table(tiny, tmp_path):
    """``embedding_bits=4``: the embedding lookups (token, position, token type) become ONNX Runtime's 4-bit
    block-quantized gather, the file is smaller than the int8 one, and it still predicts like the torch
    model."""
    make, tok = tiny
    model = make(seed=1).eval()
    x = texts_batch(tok)
    eight = lib.quantize.int8_onnx(model, x, tmp_path / "8", name="m")
    four = lib.quantize.int8_onnx(model, x, tmp_path / "4", name="m", embedding_bits=4)
    assert sorted(p.name for p in four.parent.iterdir()) == ["m.onnx"]  # the intermediates are gone
    assert lib.quantize.fused_ops(four).get("GatherBlockQuantized") == 3
    assert "GatherBlockQuantized" not in lib.quantize.fused_ops(eight)
    assert four.stat().st_size < eight.stat().st_size
    with torch.no_grad():
        ref = model(**x).logits.numpy()
    assert np.abs(lib.predict.OnnxPredictor(four)(x) - ref).max() < 0.1 * np.abs(ref).max() + 0.05
    with pytest.raises(lib.quantize.QuantizeError, match="4 or 8"):
        lib.quantize.int8_onnx(model, x, tmp_path / "2", embedding_bits=2)
    with pytest.raises(lib.quantize.QuantizeError, match="no float embedding table"):
        lib.quantize.onnx_int4_embeddings(four, tmp_path / "again.onnx")  # quantized already


@pytest.mark.parametrize(
    ("cpu", "isa", "label"),
    [
        (
            "Intel(R) Xeon(R) Processor (Intel family 6 model 167)",
            "Intel family 6 model 167, AVX-512 VNNI BF16 AMX",
            "Intel(R) Xeon(R) Processor (Intel family 6 model 167, AVX-512 VNNI BF16 AMX)",
        ),
        (
            "AMD EPYC 9R14 (Zen 4, family 25 model 17)",
            "Zen 4, AVX-512 VNNI BF16",
            "AMD EPYC 9R14 (Zen 4, family 25 model 17, AVX-512 VNNI BF16)",
        ),
        ("arm64", "no AVX2", "arm64 (no AVX2)"),
    ],
)
def test_a_cpu_label_names_each_part_once(cpu, isa, label):
    assert lib.utils.cpu_label(cpu, isa) == label
