"""Callbacks of a training run: checkpoints (`last`, `best`, one per epoch), the non-finite-loss stop, the
learning-rate monitor and the progress bar."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, RichProgressBar

from melee_wm.training.checkpoint import BEST_STEM, EPOCH_STEM
from melee_wm.training.config import TrainConfig
from melee_wm.training.rollout_callback import RolloutEvalCallback

HISTORY_FILE = "history.json"
ROLLOUT_DIR = "rollout"  # rollout evaluations of the run: rollout/epoch=NNN/


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


class StopOnNonFiniteLoss(Callback):
    """Stop the run at the first non-finite loss, before its backward pass (so the weights never see it),
    naming the step and which loss terms were finite (the module keeps them in `last_loss_terms`)."""

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Any) -> None:
        value = float(loss.detach())
        if math.isfinite(value):
            return
        terms = {k: float(v) for k, v in getattr(pl_module, "last_loss_terms", {}).items()}
        bad = {k: v for k, v in terms.items() if not math.isfinite(v)}
        good = {k: round(v, 6) for k, v in terms.items() if math.isfinite(v)}
        raise NonFiniteLossError(
            f"non-finite loss {value} at global step {trainer.global_step} (epoch {trainer.current_epoch}); "
            f"non-finite terms: {bad or 'none'}; finite terms: {good or 'none'}"
        )


class MetricHistory(Callback):
    """Keep the training loss every `every_n_steps` steps and every validation scalar at each validation, in
    `path` (JSON list of {"step": ..., key: value}); rank 0 writes it, whatever loggers run."""

    def __init__(self, path: Path, every_n_steps: int) -> None:
        self.path = path
        self.every_n_steps = every_n_steps
        self.rows: list[dict[str, float]] = []

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if trainer.global_step % self.every_n_steps == 0 and loss is not None:
            self.rows.append({"step": trainer.global_step, "train/loss": float(loss)})

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        values = {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith(("val/", "rollout/")) and v.numel() == 1
        }
        self.rows.append({"step": trainer.global_step, "epoch": trainer.current_epoch, **values})
        if trainer.is_global_zero:
            self.path.write_text(json.dumps(self.rows))

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict["rows"])


def build_callbacks(cfg: TrainConfig, checkpoint_dir: Path, has_logger: bool) -> list[Callback]:
    """Checkpoints into `checkpoint_dir` (`best.ckpt` by `checkpoint.monitor`, `epoch=NNN.ckpt`, `last.ckpt`),
    the non-finite stop, the LR monitor (needs a logger) and the rich progress bar.

    The folder belongs to one run, so a file name is never versioned (`best-v1.ckpt`): a file already there is
    this run's own, left by a crash, and the resumed run writes it again. `best` is saved before `epoch=NNN` and
    `last` in each epoch, so `last.ckpt` is the newest file and holds the best-model tracking of its epoch."""
    every = cfg.checkpoint.every_n_epochs
    callbacks: list[Callback] = [
        StopOnNonFiniteLoss(),
        MetricHistory(checkpoint_dir.parent / HISTORY_FILE, cfg.trainer.log_every_n_steps),
        ModelCheckpoint(
            dirpath=checkpoint_dir,
            filename=BEST_STEM,
            monitor=cfg.checkpoint.monitor,
            mode=cfg.checkpoint.mode,
            save_top_k=1,
            auto_insert_metric_name=False,
            every_n_epochs=every,
            enable_version_counter=False,
        ),
        ModelCheckpoint(
            dirpath=checkpoint_dir,
            filename=EPOCH_STEM,
            auto_insert_metric_name=False,
            save_top_k=-1,
            save_last=True,
            every_n_epochs=every,
            enable_version_counter=False,
        ),
    ]
    if cfg.rollout.enabled:  # logs in on_validation_epoch_end, before ModelCheckpoint reads the metrics
        callbacks.append(RolloutEvalCallback(cfg.rollout, checkpoint_dir.parent / ROLLOUT_DIR))
    if has_logger:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if cfg.trainer.enable_progress_bar:
        callbacks.append(RichProgressBar())
    return callbacks
