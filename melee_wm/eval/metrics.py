"""Evaluation metrics shared by the model, the baselines and rollouts: `ChangeAccuracy` (change_acc) and
`PositionMAE` (pos_mae).

Both take decoded predictions (action ids, x/y positions), accumulate sums over the epoch and report micro
averages: total correct / total counted, never a mean of per-batch means (which would weight a small batch or
a rarely changing player as much as a large one).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from melee_wm.encoding.layout import NUM_PLAYERS


def _per_player(values: Tensor, counts: Tensor) -> dict[str, Tensor]:
    """{"p0": ..., "p1": ..., "all": ...} micro averages from per-player sums and counts (NaN when nothing)."""
    out = {f"p{p}": values[p] / counts[p] for p in range(NUM_PLAYERS)}
    out["all"] = values.sum() / counts.sum()
    return out


class ChangeAccuracy(Metric):
    """change_acc: action-state accuracy on frames whose true next action differs from the current one.

    Inputs (..., 2) ids, player 0 first: pred (predicted next action), target (true next action), current
    (action of the last context frame before the predicted one). `compute` gives {"p0", "p1", "all"}.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", default=torch.zeros(NUM_PLAYERS, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros(NUM_PLAYERS, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor, current: Tensor) -> None:
        """Count the change frames of a batch and the ones predicted right. pred, target, current: (..., 2)."""
        if not pred.shape == target.shape == current.shape or pred.shape[-1] != NUM_PLAYERS:
            raise ValueError(
                f"ChangeAccuracy: pred, target, current must share a (..., {NUM_PLAYERS}) shape, got "
                f"{tuple(pred.shape)}, {tuple(target.shape)}, {tuple(current.shape)}"
            )
        changed = (target != current).reshape(-1, NUM_PLAYERS)
        hit = (pred == target).reshape(-1, NUM_PLAYERS) & changed
        self.correct += hit.sum(0)
        self.total += changed.sum(0)

    def compute(self) -> dict[str, Tensor]:
        """{"p0", "p1", "all"}: correct / total change frames (NaN when there were none)."""
        return _per_player(self.correct.double(), self.total.double())


class PositionMAE(Metric):
    """pos_mae: mean absolute error of x and y of both players, in game units.

    Inputs (..., 2 players, 2 coords) in encoded units (x, y as stored, i.e. raw * position_scale), which
    `compute` divides back out. `compute` gives {"p0", "p1", "all"}.
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, position_scale: float, **kwargs) -> None:
        super().__init__(**kwargs)
        if position_scale <= 0:
            raise ValueError(f"PositionMAE: position_scale must be > 0, got {position_scale}")
        self.position_scale = position_scale
        self.add_state("abs_error", default=torch.zeros(NUM_PLAYERS, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(NUM_PLAYERS, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor, keep: Tensor | None = None) -> None:
        """Add a batch's absolute x/y errors. pred, target: (..., 2 players, 2 coords) in encoded units; keep:
        (..., 2 players) bool, the (frame, player) entries to count (None: all)."""
        if pred.shape != target.shape or pred.shape[-2:] != (NUM_PLAYERS, 2):
            raise ValueError(
                f"PositionMAE: pred and target must share a (..., {NUM_PLAYERS}, 2) shape, got "
                f"{tuple(pred.shape)} and {tuple(target.shape)}"
            )
        err = (pred.double() - target.double()).abs().reshape(-1, NUM_PLAYERS, 2)
        if keep is None:
            self.abs_error += err.sum((0, 2))
            self.count += err.shape[0] * 2
            return
        keep = keep.reshape(-1, NUM_PLAYERS)
        self.abs_error += torch.where(keep[..., None], err, 0.0).sum((0, 2))
        self.count += keep.sum(0) * 2

    def compute(self) -> dict[str, Tensor]:
        """{"p0", "p1", "all"}: mean absolute error per coordinate, in game units."""
        return _per_player(self.abs_error / self.position_scale, self.count.double())
