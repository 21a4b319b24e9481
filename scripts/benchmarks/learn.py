"""How far a fixed CPU budget of training gets on the sample store, against the strongest baseline of each
headline metric, scored on the same validation frames (the `smoke` experiment: tail split, `small` Mamba-2).

Ratios are taken so that > 1 means the model is better: strongest baseline's error / the model's for position
MAE (all frames, and frames without a position jump), the model's accuracy / the best baseline's for action
and action-change accuracy. The false-change rate is reported beside them. The summary's ratio is position MAE
over all frames against the strongest baseline (the table, on real replays); it passes above 1, the goal is
1 / 0.85. It runs through the same `train()` as `train.py`, for a fixed wall-clock budget.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

from melee_wm.eval.baselines import BASELINES
from melee_wm.training import train
from melee_wm.training.compose import compose_train_config

from ._common import record, summary

TARGET = 1.0
GOAL = 1 / 0.85  # model error at most 0.85 x the table's


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
    ratios = {}
    for key, higher in (("pos_mae", False), ("pos_mae_smooth", False), ("action_acc", True), ("change_acc", True)):
        model = metrics[f"val/{key}/all"]
        baselines = {b: metrics[f"baseline/{b}/{key}/all"] for b in BASELINES}
        best = max(baselines, key=baselines.get) if higher else min(baselines, key=baselines.get)
        ratios[key] = model / baselines[best] if higher else baselines[best] / model
        yield record(key, model=model, strongest=best, ratio=ratios[key], **baselines, budget=budget)
    yield record(
        "false_change", model=metrics["val/false_change/all"], table=metrics["baseline/table/false_change/all"]
    )
    yield summary(
        ratios["pos_mae"], TARGET, ratios["pos_mae"] > TARGET, goal=GOAL, **{f"{k}_ratio": v for k, v in ratios.items()}
    )
