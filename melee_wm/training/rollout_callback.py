"""`RolloutEvalCallback`: rollout evaluation during training, logged so it can pick the `best` checkpoint.

It runs in `on_validation_epoch_end`, which Lightning calls before `on_validation_end`, where `ModelCheckpoint`
reads `trainer.callback_metrics` (and Lightning puts checkpoint callbacks last in any case), so
`checkpoint.monitor=rollout/pos_mae_h1_5` sees this epoch's value. On validations between two evaluations the
last values are logged again, so the monitored key is never missing (the checkpoint then sees no improvement).
Every rank computes the same numbers (same seed, same starts); each logs its own copy, unsynchronised.
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback

from melee_wm.eval.pictures import save_pictures
from melee_wm.eval.rollout_eval import RolloutReport, evaluate_rollouts, rollout_windows, save_report
from melee_wm.training.config import RolloutConfig


class RolloutEvalCallback(Callback):
    """Every `cfg.every_n_val_epochs`-th validation (the first included): roll out `cfg.samples` seeded starts of
    the val games for `cfg.horizon` frames, log `RolloutReport.scalars()`, and write the report (and pictures)
    to `out_dir`/epoch=NNN/ on rank 0, logging the pictures to every logger that has `log_image` (W&B)."""

    def __init__(self, cfg: RolloutConfig, out_dir: Path | None = None) -> None:
        self.cfg = cfg
        self.out_dir = out_dir
        self.windows = None
        self.validations = 0
        self.last: dict[str, float] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.windows is None:
            c = pl_module.cfg
            self.windows = rollout_windows(
                c.data.store, "val", c.data, c.encoding, c.data.context_len, self.cfg.horizon
            )
            if len(self.windows) == 0:
                raise ValueError(
                    f"rollout.enabled: the val split of {c.data.store} has no window of data.context_len + "
                    f"rollout.horizon = {c.data.context_len + self.cfg.horizon} frames ({self.windows.num_games} games)"
                )

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        run = self.validations % self.cfg.every_n_val_epochs == 0
        self.validations += 1
        if run:
            report = evaluate_rollouts(
                pl_module.net,
                pl_module.codec,
                self.windows,
                pl_module.cfg.data.context_len,
                self.cfg.samples,
                self.cfg.seed,
                self.cfg.batch_size,
                pl_module.table,
            )
            self.last = {k: v for k, v in report.scalars().items() if not math.isnan(v)}
            if trainer.is_global_zero and self.out_dir is not None:
                self._write(trainer, pl_module, report)
        if self.last:
            pl_module.log_dict(self.last, sync_dist=False)

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule, report: RolloutReport) -> None:
        folder = self.out_dir / f"epoch={trainer.current_epoch:03d}"
        report.meta = {"epoch": trainer.current_epoch, "global_step": trainer.global_step, "split": "val"}
        save_report(report, folder)
        if not self.cfg.pictures:
            return
        for path in save_pictures(report, pl_module.layout, folder):
            for logger in trainer.loggers:
                if hasattr(logger, "log_image"):
                    logger.log_image(key=f"rollout/{path.stem}", images=[str(path)], step=trainer.global_step)

    def state_dict(self) -> dict:
        return {"validations": self.validations, "last": self.last}

    def load_state_dict(self, state_dict: dict) -> None:
        self.validations = int(state_dict["validations"])
        self.last = dict(state_dict["last"])
