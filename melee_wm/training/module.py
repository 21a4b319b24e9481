"""`WorldModelModule`: the LightningModule that trains any model satisfying the model interface.

It owns the network, the target codec (standardization statistics travel in the checkpoint), the loss and
the metrics. Metrics and both baselines (persistence, constant velocity) are scored on the same positions:
the target positions whose previous frame is in the context. Hyperparameters are plain containers, so a
checkpoint loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import torch
from torch import Tensor

from melee_wm.data.batch import Batch, ColumnMask, Targets
from melee_wm.encoding.layout import Layout
from melee_wm.eval.baselines import BASELINES, ScoredFrames
from melee_wm.eval.frame_metrics import FrameMetrics
from melee_wm.frames.frame import current_ids, positions_with_previous, previous_frame, select_positions
from melee_wm.frames.table import TableBaseline
from melee_wm.frames.targets import RESIDUALS, TargetCodec, TargetStats
from melee_wm.model.build import build_model
from melee_wm.training.compose import train_config_from_dict
from melee_wm.training.config import TrainConfig
from melee_wm.training.drift import DriftTraining
from melee_wm.training.loss import LossOutput, WorldModelLoss
from melee_wm.training.optim import build_optimizer

TABLE_KEY = "table_baseline"  # checkpoint entry holding the fitted table's tensors


def zero_output_layer(net: torch.nn.Module) -> None:
    """Zero the heads' output layer: an untrained model predicts standardized 0 for every regression target."""
    torch.nn.init.zeros_(net.heads.out.weight)
    torch.nn.init.zeros_(net.heads.out.bias)


class WorldModelModule(L.LightningModule):
    """Trains a world model on `Batch`es. config: a `TrainConfig` as plain containers; target_stats: the
    training split's `TargetStats.to_dict()`; table: the table baseline fitted on the training split (it travels
    in the checkpoint). Every baseline of `melee_wm.eval.baselines` is scored on the validation batches the
    model is scored on, in the same pass, and logged beside it as `baseline/<name>/<metric>`."""

    def __init__(
        self, config: dict[str, Any], target_stats: dict[str, Any], table: TableBaseline | None = None
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["table"])
        self.cfg: TrainConfig = train_config_from_dict(config)
        cfg = self.cfg
        self.layout = Layout(cfg.encoding)
        self.net = build_model(cfg.model, self.layout, cfg.data.context_len)
        if cfg.objective.zero_init_output:
            zero_output_layer(self.net)
        self.codec = TargetCodec(
            self.layout, TargetStats.from_dict(target_stats), cfg.objective.position_parameterization, table
        )
        self.loss_fn = WorldModelLoss(self.layout, cfg.objective)
        self.train_metrics = FrameMetrics(self.layout)
        self.val_metrics = FrameMetrics(self.layout)
        self.table = table
        self.val_baselines = torch.nn.ModuleDict({name: FrameMetrics(self.layout) for name in BASELINES})
        self.baseline_scores: dict[str, dict[str, float]] = {}  # this fit's, once scored (also for the plot)
        self.last_loss_terms: dict[str, Tensor] = {}  # the latest training step's terms, for the non-finite stop
        self.drift = DriftTraining(cfg.drift, self.layout)  # context noise and self-forcing (off by default)

    # The step ------------------------------------------------------------------------------------------------

    def _prev_delta(self, batch: Batch, positions: slice, targets: Targets) -> Tensor | None:
        """The move the x/y targets at `positions` are a residual over (`TargetCodec.position_prior`)."""
        if self.codec.parameterization not in RESIDUALS:
            return None
        previous = previous_frame(batch, self.layout, positions)
        return self.codec.position_prior(targets, previous, current_ids(batch, self.layout, positions, "character"))

    def forward_loss(
        self, batch: Batch, metrics: FrameMetrics | None = None, baselines: dict[str, FrameMetrics] | None = None
    ) -> LossOutput:
        """Loss of one batch; with `metrics`, also score the decoded predictions, and with `baselines` every
        baseline on exactly the same positions and masks (no gradient)."""
        pred, _ = self.net(**batch.model_inputs(), need_state=False)
        k, p = batch.floats.shape[1], batch.num_positions
        valid = ColumnMask.of_batch(batch, self.layout)
        pos = self.codec.positions(batch)
        targets = select_positions(batch.targets, pos)
        cut = pred.at(slice(k - p + pos.start, k - p + pos.stop))
        out = self.loss_fn(cut, self.codec.encode(targets, self._prev_delta(batch, pos, targets)), targets, valid)
        if metrics is not None:
            with torch.no_grad():
                scored = ScoredFrames(batch, self.layout, positions_with_previous(batch), self.table)
                cut = pred.at(slice(k - p + scored.positions.start, k - p + scored.positions.stop))
                prev = self._prev_delta(batch, scored.positions, scored.targets)
                scored.score(metrics, self.codec.decode(cut, scored.targets, prev))
                for name, frame in (scored.baselines() if baselines is not None else {}).items():
                    scored.score(baselines[name], frame)
        return out

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        batch = self.drift.prepare(batch)  # context noise (melee_wm/training/drift.py); the batch itself when off
        out = self.forward_loss(batch, self.train_metrics)
        size = batch.floats.shape[0]
        self.log("train/loss", out.total, prog_bar=True, batch_size=size)  # teacher-forced
        self.last_loss_terms = {k: v.detach() for k, v in out.terms.items()}
        self.log_dict({f"train/loss_{k}": v for k, v in self.last_loss_terms.items()}, batch_size=size)
        forced = self.drift.self_forced(self.net, self.codec, self.loss_fn, batch, self.current_epoch, batch_idx)
        if forced is None:
            return out.total
        sf, steps = forced
        self.log_dict({"train/loss_self_forced": sf.total, "train/self_forcing_steps": float(steps)}, batch_size=size)
        self.last_loss_terms |= {f"self_forced_{k}": v.detach() for k, v in sf.terms.items()}
        return out.total + self.cfg.drift.self_forcing.weight * sf.total

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        # The validation batches are the same every epoch (never shuffled or swapped): score the baselines on
        # them once per fit, in the same pass as the model, and log those scores at every later validation.
        baselines = None if self.baseline_scores else dict(self.val_baselines)
        out = self.forward_loss(batch, self.val_metrics, baselines)
        size = batch.num_counted  # the windows that pad a DDP rank's last batch weigh nothing
        self.log("val/loss", out.total, prog_bar=True, batch_size=size, sync_dist=True)
        self.log_dict({f"val/loss_{k}": v for k, v in out.terms.items()}, batch_size=size, sync_dist=True)

    # Epoch ends: metrics and baselines -------------------------------------------------------------------------

    def on_train_epoch_end(self) -> None:
        self._log_metrics("train", self.train_metrics)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            for metrics in (self.val_metrics, *self.val_baselines.values()):
                metrics.reset()
            return
        self._log_metrics("val", self.val_metrics)
        if not self.baseline_scores:
            self.baseline_scores = {name: m.compute() for name, m in self.val_baselines.items()}
            for metrics in self.val_baselines.values():
                metrics.reset()
        for name, values in self.baseline_scores.items():
            self.log_dict({f"baseline/{name}/{k}": v for k, v in values.items() if v == v}, sync_dist=False)

    def _log_metrics(self, prefix: str, metrics: FrameMetrics) -> None:
        """Log the epoch's values of `metrics` under `prefix/`, then reset it (NaNs are not logged)."""
        values = metrics.compute()
        metrics.reset()
        self.log_dict({f"{prefix}/{k}": v for k, v in values.items() if v == v}, sync_dist=False)

    # Optimizer, compile, checkpoint extras ---------------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        total = int(self.trainer.estimated_stepping_batches)
        t = self.cfg.trainer
        fused = t.precision == "32-true" or not t.gradient_clip_val
        optimizer, scheduler = build_optimizer(self.net, self.cfg.optim, total, fused=fused)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_model(self) -> None:
        """Compile the inner network in place (state-dict keys unchanged) when the config asks for it."""
        if self.cfg.trainer.compile and not getattr(self, "_compiled", False):
            self.net.compile()
            self._compiled = True

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the RNG states, so a resumed run draws what the uninterrupted run would have drawn."""
        checkpoint["rng_states"] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
        if self.table is not None:
            checkpoint[TABLE_KEY] = self.table.state()
        if torch.cuda.is_available():
            checkpoint["rng_states"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_validation_start(self) -> None:
        if self.table is not None:
            self.table.to(self.device)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if TABLE_KEY in checkpoint:
            self.table = self.codec.table = TableBaseline(self.layout, checkpoint[TABLE_KEY])
        states = checkpoint.get("rng_states")
        if states is None:
            return
        torch.set_rng_state(states["torch"])
        version, _, gauss = random.getstate()
        random.setstate((version, tuple(states["python"]), gauss))
        if "cuda" in states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(states["cuda"])
