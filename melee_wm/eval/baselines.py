"""The baselines every model number is shown beside (README.md, "Baselines"), predicted for a batch's scored
positions and scored exactly like a model (`FrameMetrics`, same positions, same masks): persistence, constant
velocity, robust constant velocity (persistence across a respawn jump) and the table fitted on the training
split (`melee_wm/frames/table.py`)."""

from __future__ import annotations

import torch

from melee_wm.data.batch import Batch, ColumnMask
from melee_wm.data.dataset import MeleeDataset
from melee_wm.encoding.layout import Layout
from melee_wm.eval.frame_metrics import FrameMetrics
from melee_wm.frames.frame import (
    NextFrame,
    constant_velocity,
    current_frame,
    current_ids,
    position_jumps,
    positions_with_previous,
    previous_frame,
    robust_constant_velocity,
    select_positions,
    true_next_frame,
)
from melee_wm.frames.table import TableBaseline

RULE_BASELINES = ("persistence", "constant_velocity", "robust_constant_velocity")
BASELINES = (*RULE_BASELINES, "table")


class ScoredFrames:
    """The scored positions of one batch: true, current and baseline next frames, masks and no-jump entries."""

    def __init__(self, batch: Batch, layout: Layout, positions: slice, table: TableBaseline | None) -> None:
        self.positions = positions
        self.targets = select_positions(batch.targets, positions)
        self.previous = previous_frame(batch, layout, positions)
        self.true = true_next_frame(self.targets, layout)
        self.current = current_frame(self.targets)
        self.valid = ColumnMask.of_batch(batch, layout)
        into_current, into_next = position_jumps(self.targets, self.previous, layout)
        self.smooth = ~(into_current | into_next)
        self.character = current_ids(batch, layout, positions, "character")
        self.layout, self.table = layout, table

    def baselines(self) -> dict[str, NextFrame]:
        """name -> predicted next frame of every baseline (the table only when one was fitted)."""
        layout = self.layout
        out = {
            "persistence": self.current,
            "constant_velocity": constant_velocity(self.targets, self.previous.continuous, layout),
            "robust_constant_velocity": robust_constant_velocity(self.targets, self.previous, layout),
        }
        if self.table is not None:
            out["table"] = self.table.predict(self.targets, self.previous, self.character)
        return out

    def score(self, metrics: FrameMetrics, pred: NextFrame) -> None:
        """Add `pred` (cut to the same positions) to `metrics`."""
        metrics.update(pred, self.true, self.current, self.valid, self.smooth)


@torch.no_grad()
def score_baselines(
    dataset: MeleeDataset,
    positions: slice | None = None,
    batch_size: int = 4096,
    max_windows: int | None = None,
    table: TableBaseline | None = None,
) -> dict[str, dict[str, float]]:
    """name -> metrics (`FrameMetrics.compute` keys) of every baseline over the first `max_windows` windows of
    `dataset` (all when None), in order. table: fitted on the training split (None leaves the table out).

    positions: target positions scored (None: `positions_with_previous`, the positions the model is scored on).
    """
    layout = dataset.layout
    names = BASELINES if table is not None else RULE_BASELINES
    scores = {name: FrameMetrics(layout).to(dataset.device) for name in names}
    n = len(dataset) if max_windows is None else min(max_windows, len(dataset))
    for start in range(0, n, batch_size):
        batch = dataset.get_batch(torch.arange(start, min(start + batch_size, n)))
        frames = ScoredFrames(batch, layout, positions_with_previous(batch) if positions is None else positions, table)
        for name, pred in frames.baselines().items():
            frames.score(scores[name], pred)
    return {name: metrics.compute() for name, metrics in scores.items()}
