"""Lightning callbacks of cloud runs: commit the volume after checkpoint saves, and report what a run proved."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_warn

OFFLINE = "offline"


class CommitVolumeOnSave(Callback):
    """Call `commit` (a Modal Volume's `commit`) after checkpoint saves, so a preempted or crashed container
    leaves its checkpoints on the volume.

    Lightning calls `on_save_checkpoint` while it builds the checkpoint, before the file is written, and
    `ModelCheckpoint` runs after every other callback in a hook; so a save only marks a commit as due, and the
    commit runs at the next hook that can follow a save (the next batch or epoch, the end of training, an
    exception). Several saves in a row (epoch, last, best) make one commit. Rank 0 only; a failed commit is a
    warning (Modal also commits when the container stops), never the end of the run.
    """

    def __init__(self, commit: Callable[[], None]) -> None:
        self.commit = commit
        self.due = False
        self.saves = 0
        self.commits = 0

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self.due = True
        self.saves += 1

    def commit_if_due(self, trainer: L.Trainer) -> None:
        if not self.due:
            return
        self.due = False
        if not trainer.is_global_zero:
            return
        try:
            self.commit()
        except Exception as err:  # a network hiccup must not kill a day of training
            rank_zero_warn(f"volume commit failed ({type(err).__name__}: {err}); the run goes on")
            return
        self.commits += 1

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self.commit_if_due(trainer)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.commit_if_due(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.commit_if_due(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.commit_if_due(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.commit_if_due(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.commit_if_due(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.commit_if_due(trainer)


class RunReport(Callback):
    """What a run showed: the first training losses, the last global step, the W&B run's URL (or "offline"; None
    without a W&B logger) and the volume commits of `committer`.

    Filled in the process that trains: under `ddp_spawn` that is a child, and the parent's copy stays empty. So
    rank 0 also writes it to `path` at the end of fit (and when fit fails), and the parent reads it back
    (`read`). List the committer before this callback, so its commit at the end of fit is counted.
    """

    def __init__(self, path: Path | None = None, committer: CommitVolumeOnSave | None = None, first_batches: int = 3):
        self.path = path
        self.committer = committer
        self.first_batches = first_batches
        self.first_losses: list[float] = []
        self.global_step = 0
        self.wandb: str | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                run = logger.experiment
                self.wandb = OFFLINE if getattr(run, "offline", True) else (run.url or OFFLINE)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *args: Any) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None and len(self.first_losses) < self.first_batches:
            self.first_losses.append(float(loss))
        self.global_step = trainer.global_step

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._write(trainer)

    def _write(self, trainer: L.Trainer) -> None:
        if self.path is not None and trainer.is_global_zero:
            self.path.write_text(json.dumps(self.as_dict()))

    def as_dict(self) -> dict[str, Any]:
        commits = self.committer.commits if self.committer is not None else 0
        shown = {"first_losses": self.first_losses, "global_step": self.global_step, "wandb": self.wandb}
        return {**shown, "commits": commits}

    def read(self) -> dict[str, Any]:
        """The report rank 0 wrote (whichever process trained), else this process's own."""
        if self.path is not None and self.path.is_file():
            return json.loads(self.path.read_text())
        return self.as_dict()
