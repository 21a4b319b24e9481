"""How far a fixed CPU budget of training gets on the sample store: validation position MAE of the
constant-velocity baseline divided by the model's (ratio > 1: the model beats constant velocity).

It runs the `smoke` experiment (tiny Mamba-2, residual-over-constant-velocity targets) for a fixed wall-clock
budget with unlimited epochs, through the same `train()` as `train.py`. A figure to track toward 1 and
beyond, not a pass/fail condition of the code.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

from melee_wm.training import train
from melee_wm.training.compose import compose_train_config

from ._common import record, summary

TARGET = 1.0


def run(quick: bool) -> Iterator[dict]:
    budget = "00:00:00:30" if quick else "00:00:03:00"
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_train_config(
            [
                "experiment=smoke",
                f"paths.runs_dir={tmp}/runs",
                f"paths.stores_dir={Path(tmp) / 'stores'}",
                "run_name=learn",
                "trainer.max_epochs=1000",
                "trainer.limit_train_batches=1.0",
                f"trainer.max_time={budget}",
                "trainer.enable_progress_bar=false",
                "logger=none",
            ]
        )
        metrics = train(cfg)
    model = metrics["val/pos_mae/all"]
    cv = metrics["baseline/constant_velocity/pos_mae/all"]
    persistence = metrics["baseline/persistence/pos_mae/all"]
    yield record(
        "val_pos_mae",
        model=model,
        constant_velocity=cv,
        persistence=persistence,
        change_acc=metrics["val/change_acc/all"],
        action_acc=metrics["val/action_acc/all"],
        budget=budget,
    )
    yield summary(cv / model, TARGET, cv / model > TARGET, persistence_ratio=persistence / model)
