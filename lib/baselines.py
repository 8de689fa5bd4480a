"""The references everything in 00_baseline is checked against.

- :func:`tfidf_reference`: TF-IDF + logistic regression on the same split — the classical bar a transformer
  must clear to be worth its cost;
- :func:`compare_with_hf_trainer`: :func:`lib.train.fit` against ``transformers.Trainer`` on the very same
  batches — evidence that the collection's teaching loop is a fair stand-in for the library one.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

from .data import Encoded, Splits
from .evaluate import classification_metrics
from .train import TrainConfig, fit
from .utils import device, progress, seed_everything


def tfidf_reference(splits: Splits, seed: int, max_features: int = 50000) -> dict[str, Any]:
    """TF-IDF (word 1-2 grams) + logistic regression on the same split: the classical bar to beat.

    ``C`` is chosen on the validation split from a small grid, so the reference is tuned as fairly as the
    transformer (which keeps its best epoch on validation).
    """
    start = time.perf_counter()
    best = None
    for c in (0.5, 1.0, 2.0, 4.0, 8.0):
        pipe = make_pipeline(
            TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1, max_features=max_features),
            LogisticRegression(C=c, max_iter=2000, random_state=seed),
        )
        pipe.fit(splits.train.texts, splits.train.labels)
        val_acc = float(np.mean(pipe.predict(splits.val.texts) == splits.val.labels))
        if best is None or val_acc > best[0]:
            best = (val_acc, c, pipe)
    val_acc, c, pipe = best
    fit_seconds = time.perf_counter() - start
    test = classification_metrics(
        splits.test.labels, pipe.predict(splits.test.texts), splits.train.num_labels
    )
    return {"test": test, "val_accuracy": val_acc, "C": c, "fit_seconds": fit_seconds, "pipeline": pipe}


def compare_with_hf_trainer(
    make_model: Callable[[], Any],
    train_enc: Any,
    tokenizer: Any,
    batch_size: int,
    steps: int,
    learning_rate: float,
    seed: int,
    weight_decay: float = 0.01,
    warmup_frac: float = 0.1,
    rounds: int = 2,
) -> pd.DataFrame:
    """Train fresh copies of the same model for ``steps`` steps with :func:`fit` and with
    ``transformers.Trainer``: the very same batches in the same order (one seeded shuffle, fed sequentially to
    both, so both pad identically), same schedule, seed and head initialisation, each timed by the same wall
    clock around the whole training call.

    ``rounds`` alternate the order (lib, Trainer, then Trainer, lib, ...) so neither loop always pays for
    going first; ``samples_per_s`` is the median over rounds. Returns one row per loop: ``seconds``,
    ``samples_per_s``, ``first_loss``, ``final_loss`` (mean of the last quarter of steps) and the per-step
    ``losses`` of the first round.
    """
    rng = np.random.default_rng(seed)
    need = steps * batch_size
    order = np.concatenate([rng.permutation(len(train_enc)) for _ in range(-(-need // len(train_enc)))])[
        :need
    ]
    train_enc = Encoded.from_features([train_enc[int(i)] for i in order])  # one shuffle, shared by both loops
    runs: dict[str, list[tuple[float, list[float]]]] = {"lib.train.fit": [], "transformers.Trainer": []}
    for r in range(rounds):
        order = list(runs) if r % 2 == 0 else list(runs)[::-1]
        for loop in order:
            seed_everything(seed)  # both copies get the same classifier-head initialisation
            model = make_model()
            run = _run_lib if loop == "lib.train.fit" else _run_trainer
            runs[loop].append(
                run(
                    model,
                    train_enc,
                    tokenizer,
                    batch_size,
                    steps,
                    learning_rate,
                    seed,
                    weight_decay,
                    warmup_frac,
                )
            )
            del model
    rows = []
    for loop, results in runs.items():
        seconds = float(np.median([s for s, _ in results]))
        row = _loop_row(loop, seconds, steps * batch_size, results[0][1])
        row["rounds"] = len(results)
        rows.append(row)
    df = pd.DataFrame(rows).set_index("loop")
    df["speed_ratio_vs_trainer"] = df["samples_per_s"] / df.loc["transformers.Trainer", "samples_per_s"]
    # its noise: each round ran both loops, so the ratio of one round is a paired measurement (lib.verdict)
    per_round = [t / mine for (t, _), (mine, _) in zip(runs["transformers.Trainer"], runs["lib.train.fit"])]
    df.loc["lib.train.fit", ["speed_ratio_low", "speed_ratio_high"]] = min(per_round), max(per_round)
    return df


def _run_lib(model, train_enc, tokenizer, batch_size, steps, learning_rate, seed, weight_decay, warmup_frac):
    collate = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    loader = DataLoader(
        train_enc, batch_size=batch_size, shuffle=False, collate_fn=collate
    )  # already shuffled
    cfg = TrainConfig(
        num_epochs=1,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        warmup_frac=warmup_frac,
        max_steps=steps,
        seed=seed,
        keep_best=False,
        progress=True,
    )
    t0 = time.perf_counter()
    hist = fit(model, loader, None, cfg)
    return time.perf_counter() - t0, hist.step_losses


def _run_trainer(
    model, train_enc, tokenizer, batch_size, steps, learning_rate, seed, weight_decay, warmup_frac
):
    collate = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=batch_size,
            max_steps=steps,
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            warmup_steps=int(warmup_frac * steps),
            lr_scheduler_type="linear",
            max_grad_norm=1.0,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            seed=seed,
            data_seed=seed,
            use_cpu=device().type == "cpu",
            dataloader_num_workers=0,
            train_sampling_strategy="sequential",  # already shuffled
            disable_tqdm=True,  # our own bar below: no per-step log table
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train_enc,
            data_collator=collate,
            callbacks=[_tqdm_callback(steps)],
        )
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
        return seconds, [h["loss"] for h in trainer.state.log_history if "loss" in h]


def _tqdm_callback(total: int) -> Any:
    """A plain tqdm bar for Trainer (its notebook callback would print a table row per step)."""

    class Bar(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            self.bar = progress(total=total, desc="Trainer", unit="step")

        def on_step_end(self, args, state, control, **kw):
            self.bar.update(1)

        def on_train_end(self, args, state, control, **kw):
            self.bar.close()

    return Bar()


def _loop_row(name: str, seconds: float, samples: int, losses: list[float]) -> dict[str, Any]:
    tail = losses[-max(1, len(losses) // 4) :]
    return {
        "loop": name,
        "seconds": seconds,
        "samples_per_s": samples / seconds,
        "first_loss": float(losses[0]) if losses else float("nan"),
        "final_loss": float(np.mean(tail)) if tail else float("nan"),
        "losses": list(map(float, losses)),
    }
