"""Weights stored in few bits, computed in bf16 (lib.compact): round trip, size, refusals."""

from __future__ import annotations

import pytest
import torch

import lib
from lib.techniques import compact


def test_blocks_round_trip_within_half_a_step():
    """Every value comes back within half its block's step (scale = max |x| / 7 for 4 bits); a row that is
    not a whole number of blocks keeps its length."""
    w = torch.randn(5, 70) * torch.linspace(0.1, 3, 70)
    for bits, top in ((4, 7), (8, 127)):
        codes, scale = compact._blocks(w, bits, 32)
        assert codes.dtype == torch.uint8 and scale.shape == (5, 3)
        assert codes.shape == (5, 96 // (2 if bits == 4 else 1))  # 4 bits: two to a byte
        back = compact._unblocks(codes, scale, bits, [5, 70])
        step = torch.repeat_interleave(scale, 32, dim=1)[:, :70]
        assert back.shape == w.shape and ((back - w).abs() <= step / 2 + 1e-6).all()
        assert scale.max() == pytest.approx(float(w.abs().max()) / top, rel=1e-5)


def test_int8_rows_keep_an_outlier_in_its_row():
    w = torch.randn(4, 64) * 0.02
    w[2, 5] = 8.0
    q, scale = compact._int8_rows(w)
    back = q.float() * scale[:, None]
    assert (back[[0, 1, 3]] - w[[0, 1, 3]]).abs().max() < 0.02 / 50  # the other rows keep a fine step
    assert back[2, 5] == pytest.approx(8.0, rel=1e-6)


def test_a_stacked_model_round_trips_small_and_predicts_like_the_original(tiny, tmp_path):
    """Pruned (uneven layers) and vocabulary-trimmed, written with 4-bit tables: the file is several times
    smaller than the fp32 weights, loads into bf16 with every weight from the file, and predicts the same
    labels (the logits within the rounding of 8- and 4-bit weights and bf16 arithmetic)."""
    make, tok = tiny
    model = lib.prune.remove_units(make(seed=1), lib.prune.Plan(heads={0: [0]}, neurons={1: list(range(16))}))
    x = tok(
        ["the film was great and moving", "the film was dull", "awful"], padding=True, return_tensors="pt"
    )
    keep = {int(i) for i in x["input_ids"].flatten()} | set(tok.all_special_ids)
    trimmed = lib.prune.trim_vocabulary(model, keep, tok.unk_token_id).eval()
    path = compact.save(trimmed, tmp_path / "m.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary file left
    assert compact.describe(trimmed) == {"linear": 14, "embedding": 3}  # 2 layers x 6, pooler, head; 3 tables
    loaded = compact.load(trimmed, path)
    assert next(loaded.parameters()).dtype == torch.bfloat16 and not loaded.training
    assert compact.memory_mb(loaded) < compact.memory_mb(trimmed)  # bf16 in memory: about half of fp32
    assert compact.file_mb(path) < lib.bench.serialized_mb(trimmed)  # (the int32 remap table stays as it is)
    whole = make(seed=1)
    assert (
        compact.file_mb(compact.save(whole, tmp_path / "w" / "m.safetensors"))
        < lib.bench.serialized_mb(whole) / 4
    )
    for (name, a), (_, b) in zip(trimmed.state_dict().items(), loaded.state_dict().items(), strict=True):
        if a.is_floating_point() and a.dim() == 2:  # every matrix came from the file, rounded, not copied
            assert not torch.equal(a.to(b.dtype), b) or a.abs().max() == 0, name
    with torch.no_grad():
        ref, got = trimmed(**x).logits, loaded(**x).logits.float()
    assert (ref.argmax(-1) == got.argmax(-1)).all()
    assert (ref - got).abs().max() < 0.1 * ref.abs().max() + 0.05


def test_bad_settings_a_missing_file_and_another_architecture_are_clear_errors(tiny, tmp_path):
    make, _ = tiny
    model = make(seed=0)
    with pytest.raises(ValueError, match="4 or 8"):
        compact.save(model, tmp_path / "m.safetensors", embedding_bits=3)
    with pytest.raises(ValueError, match="even number"):
        compact.save(model, tmp_path / "m.safetensors", block=7)
    with pytest.raises(lib.errors.ArtifactError, match="write it with lib.compact.save first"):
        compact.load(model, tmp_path / "none.safetensors")
    path = compact.save(model, tmp_path / "m.safetensors")
    pruned = lib.prune.remove_units(make(seed=0), lib.prune.Plan(heads={0: [0]}, neurons={}))
    with pytest.raises(lib.errors.ArtifactError, match="another architecture"):
        compact.load(pruned, path)
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(lib.errors.ArtifactError, match="not a readable safetensors file"):
        compact.load(model, tmp_path / "junk.safetensors")
