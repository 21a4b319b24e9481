"""`FrameMetrics`: every one-step metric of a predicted `NextFrame` against the true one (README.md, "Training"),
(the persistence and constant-velocity baselines are scored with it in `baselines.py`).

Every metric accumulates sums and counts and reports micro averages (total correct / total counted), never a
mean of per-batch means. Float errors are reported in game units (encoded error / the EncodingConfig scale).
Entries a `ColumnMask` marks invalid (fields the game's replay format lacks) are left out of every sum and count.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from melee_wm.data.batch import ColumnMask, select_xy
from melee_wm.encoding.layout import NUM_PLAYERS, Layout
from melee_wm.eval.action_categories import CATEGORY_NAMES, category_of
from melee_wm.eval.metrics import ChangeAccuracy, PositionMAE
from melee_wm.frames.frame import NextFrame

BINARY_THRESHOLD = 0.5  # a binary value counts as 1 from here up (so probabilities can be scored too)


class MaskedMean(Metric):
    """Per-slot micro average of the valid entries: sum of values / number of valid entries (NaN when none).

    `update(values (N, S), valid (N, S) bool)`; `compute()` gives (S,) float64, squeezed to a scalar when S == 1
    (torchmetrics squeezes one-element results)."""

    full_state_update = False

    def __init__(self, num_slots: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.zeros(num_slots, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(num_slots, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, values: Tensor, valid: Tensor) -> None:
        self.total += torch.where(valid, values.double(), 0.0).sum(0)
        self.count += valid.sum(0)

    def compute(self) -> Tensor:
        return self.total / self.count


def _by_player(values: Tensor) -> Tensor:
    """(..., 2 * n) columns of a float group (player 0's n fields first) -> (N, 2): one row per (frame, field)."""
    return values.reshape(-1, NUM_PLAYERS, values.shape[-1] // NUM_PLAYERS).transpose(1, 2).reshape(-1, NUM_PLAYERS)


class FrameMetrics(torch.nn.Module):
    """change_acc, false_change, action_acc, pos_mae and pos_mae_smooth (per player and all), percent_mae,
    velocity_mae, binary_acc, binary_flip_acc and action_cat_acc/<category> of predicted next frames; scales
    from `layout.cfg`.

    false_change is the share of (frame, player) entries whose action does not change where a change was
    predicted: change_acc alone rises by predicting changes everywhere. pos_mae_smooth is pos_mae on the
    entries whose position does not jump into the current or the next frame (respawns, `position_jumps`): a
    tiny share of frames that carries a large share of the error of every extrapolating predictor.

    action_cat_acc/<category> is action accuracy on the (frame, player) entries whose TRUE next action falls in
    that category of `melee_wm.eval.action_categories`; a category never seen reports NaN, so the keys are the
    same in every run. binary_flip_acc is binary accuracy on the (frame, bit) entries whose true next bit
    differs from the current one (change_acc for bits).
    """

    def __init__(self, layout: Layout) -> None:
        super().__init__()
        self.layout = layout
        cfg = layout.cfg
        self.percent_scale, self.velocity_scale = cfg.percent_scale, cfg.velocity_scale
        self.group = layout.position_group  # x, y and percent of both players
        start = layout.float_slice(self.group).start
        self.percent_cols = [layout.player_float_index(p, "percent") - start for p in range(NUM_PLAYERS)]
        self.register_buffer("categories", category_of(layout.int_vocab("action")), persistent=False)
        self.change = ChangeAccuracy()
        self.false_change = MaskedMean(1)
        self.position = PositionMAE(cfg.position_scale)
        self.position_smooth = PositionMAE(cfg.position_scale)
        self.action = MaskedMean(NUM_PLAYERS)
        # Both players pooled, as its own state: read from `action` after `compute` it would hold this rank's
        # sums only (torchmetrics restores the local states after syncing them across DDP ranks).
        self.action_all = MaskedMean(1)
        self.action_category = MaskedMean(len(CATEGORY_NAMES))
        self.percent = MaskedMean(1)
        self.velocity = MaskedMean(1)
        self.binary = MaskedMean(1)
        self.binary_flip = MaskedMean(1)

    @torch.no_grad()
    def update(
        self,
        pred: NextFrame,
        true: NextFrame,
        current: NextFrame,
        valid: ColumnMask | None = None,
        smooth: Tensor | None = None,
    ) -> None:
        """Add one batch. pred, true, current: NextFrames of one shape (..., width), `current` the frame each
        prediction starts from; valid: per-window validity broadcastable to (...) (see `ColumnMask`); smooth:
        (..., 2 players) bool, entries without a position jump (None: pos_mae_smooth counts nothing)."""

        def ok(values: Tensor, kind: str, key: str) -> Tensor:
            mask = None if valid is None else getattr(valid, kind).get(key)
            return torch.ones_like(values, dtype=torch.bool) if mask is None else torch.broadcast_to(mask, values.shape)

        act_pred, act_true, act_current = (f.categorical["action"] for f in (pred, true, current))
        act_ok = ok(act_true, "categorical", "action")
        # A masked entry is made a non-change frame, which ChangeAccuracy leaves out of both its sums.
        self.change.update(act_pred, torch.where(act_ok, act_true, act_current), act_current)
        hit = act_pred == act_true
        stays = (act_true == act_current) & act_ok
        self.false_change.update((act_pred != act_current).reshape(-1, 1), stays.reshape(-1, 1))
        self.action.update(hit.reshape(-1, NUM_PLAYERS), act_ok.reshape(-1, NUM_PLAYERS))
        self.action_all.update(hit.reshape(-1, 1), act_ok.reshape(-1, 1))
        in_category = torch.nn.functional.one_hot(self.categories[act_true.reshape(-1)], len(CATEGORY_NAMES)).bool()
        self.action_category.update(hit.reshape(-1, 1).expand_as(in_category), in_category & act_ok.reshape(-1, 1))

        cont_pred, cont_true = pred.floats[self.group], true.floats[self.group]
        cont_ok = ok(cont_true, "floats", self.group)
        xy_pred, xy_true, xy_ok = (select_xy(v, self.layout) for v in (cont_pred, cont_true, cont_ok))
        keep = xy_ok.all(-1)  # (..., 2 players)
        self.position.update(xy_pred, xy_true, keep)
        self.position_smooth.update(xy_pred, xy_true, keep & (False if smooth is None else smooth))
        cols = self.percent_cols
        err = (cont_pred[..., cols] - cont_true[..., cols]).abs() / self.percent_scale
        self.percent.update(err.reshape(-1, 1), cont_ok[..., cols].reshape(-1, 1))
        vel_true = true.floats["velocity"]
        err = (pred.floats["velocity"] - vel_true).abs() / self.velocity_scale
        self.velocity.update(err.reshape(-1, 1), ok(vel_true, "floats", "velocity").reshape(-1, 1))

        bits_pred, bits_true, bits_current = (f.floats["binary"] >= BINARY_THRESHOLD for f in (pred, true, current))
        bits_ok = ok(bits_true, "floats", "binary").reshape(-1, 1)
        bits_hit = (bits_pred == bits_true).reshape(-1, 1)
        self.binary.update(bits_hit, bits_ok)
        self.binary_flip.update(bits_hit, bits_ok & (bits_true != bits_current).reshape(-1, 1))

    def compute(self) -> dict[str, float]:
        """Flat {name: value}: change_acc/{p0,p1,all}, false_change/all, action_acc/{p0,p1,all}, pos_mae/{p0,p1,all},
        pos_mae_smooth/{p0,p1,all}, percent_mae,
        velocity_mae, binary_acc, binary_flip_acc, action_cat_acc/<category>. NaN where nothing was counted."""
        out = {f"change_acc/{k}": float(v) for k, v in self.change.compute().items()}
        out["false_change/all"] = float(self.false_change.compute())
        action = self.action.compute()
        out |= {f"action_acc/p{p}": float(action[p]) for p in range(NUM_PLAYERS)}
        out["action_acc/all"] = float(self.action_all.compute())
        out |= {f"pos_mae/{k}": float(v) for k, v in self.position.compute().items()}
        out |= {f"pos_mae_smooth/{k}": float(v) for k, v in self.position_smooth.compute().items()}
        out["percent_mae"] = float(self.percent.compute())
        out["velocity_mae"] = float(self.velocity.compute())
        out["binary_acc"] = float(self.binary.compute())
        out["binary_flip_acc"] = float(self.binary_flip.compute())
        per_category = self.action_category.compute()
        out |= {f"action_cat_acc/{name}": float(per_category[i]) for i, name in enumerate(CATEGORY_NAMES)}
        return out

    def reset(self) -> None:
        """Clear every accumulated sum and count."""
        for metric in self.modules():
            if isinstance(metric, Metric):
                metric.reset()
