"""Models, artifacts and the training loop, on the tiny random BERT."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lib
from lib.errors import ArtifactError, OfflineError
from tests.conftest import loaders_for


def test_tiny_model_shapes(tiny):
    make, _ = tiny
    m = make(num_labels=3)
    assert m.config.num_labels == 3 and m.config.num_hidden_layers == 2
    assert lib.models.count_params(m) < 2_000_000


def test_packaged_minilm_folder_exists():
    folder = lib.models.packaged_minilm_dir()
    assert (folder / "model.safetensors").exists() and (folder / "config.json").exists()


def test_packaged_model_loads_with_a_new_head_and_no_noise(recwarn, caplog):
    model, tokenizer = lib.models.load_model("minilm-l6", 3, ["a", "b", "c"])
    assert model.config.num_labels == 3 and model.config.id2label[2] == "c"
    assert 22e6 < lib.models.count_params(model) < 23e6
    assert not [
        w for w in recwarn if "loading" in str(w.message)
    ]  # only the head is new: expected, not reported
    assert "LOAD REPORT" not in caplog.text


def test_hub_id_fails_clearly_offline(monkeypatch):
    with pytest.raises(OfflineError, match="minilm-l6"):
        lib.models.load_model("someone/not-a-local-model", 2)


def test_local_folder_without_config(tmp_path):
    with pytest.raises(ArtifactError, match="no config.json"):
        lib.models.load_model(str(tmp_path), 2)


def test_artifact_round_trip(tiny, tmp_path):
    make, tokenizer = tiny
    model = make()
    loaders = loaders_for(tokenizer)
    path = lib.artifacts.save(tmp_path / "m", model, tokenizer, {"seed": 1, "metrics": {"accuracy": 0.5}})
    again, tok2, meta = lib.artifacts.load(path)
    assert meta["seed"] == 1 and "created" in meta
    diff = lib.evaluate.compare_predictions(model, again, loaders.test)
    assert diff["max_abs_logit_diff"] == 0.0 and diff["label_agreement"] == 1.0
    assert tok2("a b")["input_ids"] == tokenizer("a b")["input_ids"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left behind


def test_save_is_atomic_when_interrupted(tiny, tmp_path, monkeypatch):
    make, tokenizer = tiny
    path = lib.artifacts.save(tmp_path / "m", make(), tokenizer, {"v": 1})

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(tokenizer, "save_pretrained", boom)
    with pytest.raises(KeyboardInterrupt):
        lib.artifacts.save(path, make(), tokenizer, {"v": 2})
    assert lib.artifacts.load(path)[2]["v"] == 1  # the old artifact survives whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_missing_and_corrupt_artifacts(tiny, outputs):
    with pytest.raises(ArtifactError, match=r"missing.*Run 00_baseline first.*--only 00_baseline"):
        lib.runner.catalog.require_artifact("smoke", "teacher")
    make, tokenizer = tiny
    path = lib.artifacts.save(lib.runner.folders.artifact_dir("smoke", "teacher"), make(), tokenizer, {})
    assert lib.runner.catalog.require_artifact("smoke", "teacher") == path
    (path / "model.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ArtifactError, match="corrupt"):
        lib.artifacts.load(path)
    (path / "metadata.json").write_text("{broken")
    with pytest.raises(ArtifactError, match="corrupt"):
        lib.runner.catalog.require_artifact("smoke", "teacher")
    (path / "config.json").unlink()
    with pytest.raises(ArtifactError, match="config.json missing"):
        lib.runner.catalog.require_artifact("smoke", "teacher")


def test_fit_learns_and_keeps_best(tiny):
    make, tokenizer = tiny
    model = make()
    loaders = loaders_for(tokenizer)
    before = lib.evaluate.evaluate(model, loaders.val)["accuracy"]
    cfg = lib.train.TrainConfig(num_epochs=6, learning_rate=3e-3, warmup_frac=0.1, seed=0, progress=False)
    hist = lib.train.fit(model, loaders.train, loaders.val, cfg)
    assert len(hist.epochs) == 6 and hist.samples == 6 * 96 and hist.samples_per_s > 0
    assert np.mean(hist.step_losses[-6:]) < np.mean(hist.step_losses[:6])
    best = max(e["val_accuracy"] for e in hist.epochs)
    assert before < 0.9 <= best
    assert lib.evaluate.evaluate(model, loaders.val)["accuracy"] == pytest.approx(
        best
    )  # best weights restored
    assert hist.peak_mem_mb > 0 and not model.training


def test_fit_is_reproducible(tiny):
    make, tokenizer = tiny
    runs = []
    for _ in range(2):
        model = make(seed=3)
        loaders = loaders_for(tokenizer, seed=3)
        cfg = lib.train.TrainConfig(num_epochs=1, learning_rate=1e-3, seed=3, progress=False)
        runs.append(lib.train.fit(model, loaders.train, None, cfg).step_losses)
    assert runs[0] == runs[1]


def test_fit_on_a_used_loader_sees_the_same_batches(tiny):
    make, tokenizer = tiny
    loaders = loaders_for(tokenizer, seed=3)  # one loader, three runs: the third must equal the first
    cfg = lib.train.TrainConfig(num_epochs=2, learning_rate=1e-3, seed=3, progress=False)
    first = lib.train.fit(make(seed=3), loaders.train, None, cfg).step_losses
    lib.train.fit(
        make(seed=3), loaders.train, None, lib.train.TrainConfig(num_epochs=1, seed=5, progress=False)
    )
    assert lib.train.fit(make(seed=3), loaders.train, None, cfg).step_losses == first


def test_fit_keeps_the_moving_average_of_the_weights(tiny):
    make, tokenizer = tiny
    loaders = loaders_for(tokenizer, seed=3)

    def weights(steps: int, ema: float = 0.0, val=None):
        model = make(seed=3)
        cfg = lib.train.TrainConfig(
            num_epochs=1,
            learning_rate=1e-2,
            warmup_frac=0.0,
            max_steps=steps,
            seed=3,
            ema_decay=ema,
            progress=False,
        )
        hist = lib.train.fit(model, loaders.train, val, cfg)
        return {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}, hist

    w1, _ = weights(1)  # the first step is the same in a 1- and a 2-step run (no warm-up; lr factor 1)
    w2, _ = weights(2)
    avg, hist = weights(2, ema=0.75, val=loaders.val)  # the average starts at w1: 0.75 * w1 + 0.25 * w2
    for k in w1:
        torch.testing.assert_close(avg[k], 0.75 * w1[k] + 0.25 * w2[k])
    assert any(not torch.equal(w1[k], w2[k]) for k in w1)
    assert {"val_accuracy", "val_accuracy_raw"} <= set(hist.epochs[0])
    with pytest.raises(ValueError, match="ema_decay"):
        weights(1, ema=1.0)


def test_fit_hooks_custom_loss_prepare_max_steps_and_frozen_params(tiny):
    make, tokenizer = tiny
    model = make()
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith("classifier")  # LoRA-style: only some parameters train
    frozen_before = model.bert.embeddings.word_embeddings.weight.clone()
    calls = {"loss": 0, "prepare": 0}

    def loss_fn(m, batch):
        calls["loss"] += 1
        return torch.nn.functional.cross_entropy(
            m(**{k: v for k, v in batch.items() if k != "labels"}).logits, batch["labels"]
        )

    def prepare(m, opt, loader):
        calls["prepare"] += 1
        return m, opt, loader

    cfg = lib.train.TrainConfig(num_epochs=3, max_steps=4, learning_rate=1e-2, progress=False)
    hist = lib.train.fit(model, loaders_for(tokenizer).train, None, cfg, loss_fn=loss_fn, prepare=prepare)
    assert calls == {"loss": 4, "prepare": 1} and len(hist.step_losses) == 4
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, frozen_before)


def test_stop_after_epochs_is_the_full_runs_first_epochs(tiny):
    """A run stopped after epoch 1 of a 3-epoch schedule is that schedule's first epoch: the same step losses
    and the same validation predictions, which History keeps per epoch for paired tests at any epoch."""
    make, tokenizer = tiny
    loaders = loaders_for(tokenizer)
    runs = {}
    for stop in (0, 1):
        cfg = lib.train.TrainConfig(num_epochs=3, stop_after_epochs=stop, learning_rate=1e-3, progress=False)
        runs[stop] = lib.train.fit(make(), loaders.train, loaders.val, cfg)
    full, short = runs[0], runs[1]
    assert len(full.epochs) == 3 and len(short.epochs) == 1 and len(short.val_predictions) == 1
    assert short.step_losses == pytest.approx(full.step_losses[: len(short.step_losses)], abs=1e-6)
    assert len(short.step_losses) * 3 == len(full.step_losses)
    np.testing.assert_array_equal(short.val_predictions[0], full.val_predictions[0])
    assert short.epochs[0]["val_accuracy"] == pytest.approx(
        float(np.mean(full.val_predictions[0] == full.val_labels))
    )


def test_no_trainable_parameters_is_a_clear_error(tiny):
    make, tokenizer = tiny
    model = make()
    for p in model.parameters():
        p.requires_grad = False
    with pytest.raises(ValueError, match="no trainable parameters"):
        lib.train.fit(model, loaders_for(tokenizer).train, None, lib.train.TrainConfig(progress=False))


def test_compare_with_hf_trainer(tiny):
    make, tokenizer = tiny
    enc = loaders_for(tokenizer).encoded["train"]
    df = lib.baselines.compare_with_hf_trainer(
        lambda: make(), enc, tokenizer, batch_size=16, steps=3, learning_rate=1e-3, seed=0
    )
    assert list(df.index) == ["lib.train.fit", "transformers.Trainer"]
    assert all(len(x) == 3 for x in df["losses"]) and (df["samples_per_s"] > 0).all()
    speed = 3 * 16 / df["seconds"]  # samples per second of the median round, from the timed seconds
    assert df["samples_per_s"].tolist() == pytest.approx(speed.tolist())
    assert df.loc["lib.train.fit", "speed_ratio_vs_trainer"] == pytest.approx(speed.iloc[0] / speed.iloc[1])
    # same head init, the very same first batch, same seed: the first step's loss agrees
    assert abs(df["first_loss"].iloc[0] - df["first_loss"].iloc[1]) < 1e-3


def test_precision_auto_follows_the_cpu(monkeypatch):
    monkeypatch.setattr(lib.train, "cpu_support", lambda: {"bf16": False})
    assert lib.train.resolve_precision("auto") == "fp32"  # emulated bf16 is several times slower than fp32
    monkeypatch.setattr(lib.train, "cpu_support", lambda: {"bf16": True})
    assert lib.train.resolve_precision("auto") == "bf16"
    assert lib.train.resolve_precision("fp32") == "fp32" and lib.train.resolve_precision("bf16") == "bf16"
    with pytest.raises(ValueError, match="precision"):
        lib.train.resolve_precision("fp16")


def test_bf16_training_casts_the_forward_and_keeps_fp32_weights(tiny):
    make, tokenizer = tiny
    runs = {}
    for precision in ("fp32", "bf16"):
        model = make(seed=3)
        cfg = lib.train.TrainConfig(
            num_epochs=6, learning_rate=3e-3, seed=3, progress=False, precision=precision
        )
        runs[precision] = lib.train.fit(
            model, loaders_for(tokenizer, seed=3).train, loaders_for(tokenizer, seed=3).val, cfg
        )
        assert all(p.dtype == torch.float32 for p in model.parameters())  # only the forward is cast
    assert runs["bf16"].precision == "bf16" and runs["fp32"].precision == "fp32"
    assert (
        runs["bf16"].step_losses[0] != runs["fp32"].step_losses[0]
    )  # autocast really changed the arithmetic
    assert abs(runs["bf16"].step_losses[0] - runs["fp32"].step_losses[0]) < 0.05  # ... by bf16 rounding only
    assert max(e["val_accuracy"] for e in runs["bf16"].epochs) >= 0.9  # and it still learns


def test_under_the_runner_the_training_bar_does_not_flood_the_log(tiny, monkeypatch, capsys):
    """The runner streams every redraw to the terminal and into the executed notebook: at most one per few
    seconds."""
    make, tokenizer = tiny
    monkeypatch.setenv("MUXL_RUN_BY", "runner")
    cfg = lib.train.TrainConfig(num_epochs=4, learning_rate=1e-3, seed=0)  # 24 steps, a second or two
    lib.train.fit(make(), loaders_for(tokenizer).train, None, cfg)
    redraws = capsys.readouterr().err.count("\r")
    assert 1 <= redraws <= 6, redraws  # first draw, a timed redraw or two, the close; not one per step


def test_device_resolution_and_moves_on_cpu(tiny, monkeypatch):
    monkeypatch.delenv("MUXL_DEVICE", raising=False)
    assert lib.utils.resolve_device("cpu").type == "cpu"
    assert lib.utils.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(lib.errors.ParamError, match="must be 'auto', 'cpu' or 'cuda'"):
        lib.utils.resolve_device("tpu")
    lib.utils.set_device("cpu")
    assert lib.utils.device().type == "cpu" and lib.utils.env_info()["device"] == "cpu"
    make, tokenizer = tiny
    model = make()
    batch = next(iter(loaders_for(tokenizer).val))
    moved = lib.utils.to_device(batch, lib.utils.device())
    assert all(v.device.type == "cpu" for v in moved.values())
    assert lib.predict.TorchPredictor(model)(batch).shape == (len(batch["labels"]), 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on the reference machines)")
def test_training_and_prediction_run_on_cuda(tiny, monkeypatch):
    make, tokenizer = tiny
    lib.utils.set_device("cuda")
    model = make()
    loaders = loaders_for(tokenizer)
    lib.train.fit(model, loaders.train, None, lib.train.TrainConfig(num_epochs=1, seed=0, progress=False))
    assert next(model.parameters()).device.type == "cuda"
    logits, labels = lib.evaluate.predict_logits(model, loaders.val)
    assert logits.shape == (len(labels), 2)
    lib.utils.set_device("cpu")
