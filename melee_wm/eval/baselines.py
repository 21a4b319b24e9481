"""Persistence baseline: predict that nothing changes (next frame = last context frame), scored like a model."""

from __future__ import annotations

import torch

from melee_wm.data.batch import next_values, select_xy
from melee_wm.data.dataset import MeleeDataset
from melee_wm.eval.metrics import ChangeAccuracy, PositionMAE


@torch.no_grad()
def persistence_baseline(
    dataset: MeleeDataset, batch_size: int = 4096, max_windows: int | None = None
) -> dict[str, float]:
    """change_acc and pos_mae of "nothing changes" over the first `max_windows` windows (all when None), in order.

    Returns {"change_acc/p0", "change_acc/p1", "change_acc/all", "pos_mae/p0", "pos_mae/p1", "pos_mae/all"}.
    change_acc is 0 by construction (on a change frame the current action is wrong); pos_mae is not.
    """
    layout = dataset.layout
    change = ChangeAccuracy().to(dataset.device)
    mae = PositionMAE(dataset.encoding.position_scale).to(dataset.device)
    n = len(dataset) if max_windows is None else min(max_windows, len(dataset))
    for start in range(0, n, batch_size):
        t = dataset.get_batch(torch.arange(start, min(start + batch_size, n))).targets
        current_action = t.current_categorical["action"]
        change.update(current_action, t.categorical["action"], current_action)
        current = t.current_floats["continuous"]
        true_next = next_values(layout, "continuous", t.floats["continuous"], current)
        mae.update(select_xy(current, layout), select_xy(true_next, layout))
    scores = {f"change_acc/{k}": float(v) for k, v in change.compute().items()}
    scores |= {f"pos_mae/{k}": float(v) for k, v in mae.compute().items()}
    return scores
