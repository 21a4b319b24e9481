"""The two baselines every model number is shown beside, scored exactly like a model (`FrameMetrics`):
persistence (the next frame equals the current one) and constant velocity (each player's x and y continue
their last per-frame change, every other field persists)."""

from __future__ import annotations

import torch

from melee_wm.data.batch import ColumnMask
from melee_wm.data.dataset import MeleeDataset
from melee_wm.eval.frame_metrics import FrameMetrics
from melee_wm.frames.frame import (
    constant_velocity,
    current_frame,
    positions_with_previous,
    previous_continuous,
    select_positions,
    true_next_frame,
)

BASELINES = ("persistence", "constant_velocity")


@torch.no_grad()
def score_baselines(
    dataset: MeleeDataset,
    positions: slice | None = None,
    batch_size: int = 4096,
    max_windows: int | None = None,
) -> dict[str, dict[str, float]]:
    """{"persistence": metrics, "constant_velocity": metrics} (`FrameMetrics.compute` keys) over the first
    `max_windows` windows of `dataset` (all when None), in order.

    positions: target positions scored (None: `positions_with_previous`, the positions the model is scored on);
    each must have a previous frame in the context. Columns a game's replay format lacks are masked out, as
    for the model.
    """
    layout = dataset.layout
    scores = {name: FrameMetrics(layout).to(dataset.device) for name in BASELINES}
    n = len(dataset) if max_windows is None else min(max_windows, len(dataset))
    for start in range(0, n, batch_size):
        indices = torch.arange(start, min(start + batch_size, n))
        batch = dataset.get_batch(indices)
        picked = positions_with_previous(batch) if positions is None else positions
        targets = select_positions(batch.targets, picked)
        true, current = true_next_frame(targets, layout), current_frame(targets)
        valid = ColumnMask.of_batch(batch, layout)
        scores["persistence"].update(current, true, current, valid)
        cv = constant_velocity(targets, previous_continuous(batch, layout, picked), layout)
        scores["constant_velocity"].update(cv, true, current, valid)
    return {name: metrics.compute() for name, metrics in scores.items()}
