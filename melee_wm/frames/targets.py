"""Regression targets the model can learn: standardized, with an optional position parameterization.

Raw regression targets span orders of magnitude (a position delta of 0.01 beside a state age of 3), so the
heads predict standardized values. DELTA groups are divided by their root mean square (no centring: an output
of 0 means "no change"); ABSOLUTE groups are centred on their mean and divided by their standard deviation.
Statistics come from the training split once, pooled over both players (so a player swap changes nothing),
and travel in the checkpoint.

With `residual_over_constant_velocity` the x and y targets are the change of the per-frame position change
(next delta - previous delta), as learned physics simulators predict acceleration: an output of 0 continues
at (robust) constant velocity. With `residual_over_table` they are what the table fitted on the training split
(`melee_wm/frames/table.py`) gets wrong: an output of 0 predicts the table's position. Both need the frame
before the current one, so positions without one have no target.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from melee_wm.data.batch import Batch, Targets
from melee_wm.data.dataset import MeleeDataset
from melee_wm.encoding.layout import NUM_PLAYERS, Layout, Target
from melee_wm.frames.frame import NextFrame, PreviousFrame, positions_with_previous, robust_displacement
from melee_wm.frames.table import TableBaseline
from melee_wm.game.physics import position_jump
from melee_wm.model.heads import Prediction

RESIDUAL = "residual_over_constant_velocity"
RESIDUAL_TABLE = "residual_over_table"
RESIDUALS = (RESIDUAL, RESIDUAL_TABLE)  # the parameterizations whose x/y targets are accelerations
MIN_SCALE = 1e-6  # a column that never changes keeps scale 1 instead of dividing by ~0


@dataclass
class TargetStats:
    """Per-column centre and scale of each regression group's targets: group -> (width,) lists of floats."""

    center: dict[str, list[float]]
    scale: dict[str, list[float]]

    def to_dict(self) -> dict[str, dict[str, list[float]]]:
        """Plain containers (for checkpoint hyperparameters)."""
        return {"center": self.center, "scale": self.scale}

    @classmethod
    def from_dict(cls, data: dict) -> TargetStats:
        return cls(center=dict(data["center"]), scale=dict(data["scale"]))


def _pool_players(values: np.ndarray, layout: Layout, group: str) -> np.ndarray:
    """Sum the two players' entries of each field: (width,) -> (width,) with p0 and p1 of a field equal."""
    fields = layout.float_fields(group)
    per_player = values.reshape(-1, len(fields))  # (2, fields): the group is player-major
    return np.tile(per_player.sum(0), per_player.shape[0])


def _jumps(floats: np.ndarray, ints: np.ndarray, layout: Layout) -> np.ndarray:
    """(L - 1, 2 players) bool: whether each player's position jumps from frame t into t + 1 of one game."""
    xy = floats[:, layout.position_columns] / layout.cfg.position_scale  # p0.x, p0.y, p1.x, p1.y
    xy = torch.from_numpy(xy).reshape(len(floats), NUM_PLAYERS, -1)
    action = torch.from_numpy(ints[:, layout.int_slice("action")])
    return position_jump(xy[:-1], xy[1:], action[:-1], action[1:]).numpy()


def target_statistics(dataset: MeleeDataset, parameterization: str) -> TargetStats:
    """Centre and scale of every regression column over all frames of `dataset`'s games.

    Frames of a game whose replay format lacks a column's field are left out of that column's statistics, and
    a player's x and y targets of frames whose position jumps (respawns: `melee_wm.game.physics`) out of the
    position statistics: two dozen such frames would otherwise set the x/y scale (4-5x larger on the samples).
    """
    layout = dataset.layout
    groups = layout.regression_groups
    xy = layout.position_offsets
    sums = {g: np.zeros(layout.float_width(g)) for g in groups}
    squares = {g: np.zeros(layout.float_width(g)) for g in groups}
    counts = {g: np.zeros(layout.float_width(g)) for g in groups}
    valid_floats = dataset.game_valid_floats.cpu().numpy()
    for game in range(dataset.num_games):
        rows, ints = dataset.game_frames(game)
        if len(rows) < 3:
            continue
        for g in groups:
            cols = layout.float_slice(g)
            values = rows[:, cols]
            weight = np.ones_like(values[1:])  # (L - 1, width): 0 where a target is left out
            values = np.diff(values, axis=0) if layout.float_target(g) == Target.DELTA else values[1:]
            if g == layout.position_group:
                jump = _jumps(rows, ints, layout)  # (L - 1, 2 players): jump into frame t + 1
                weight[:, xy] = ~np.repeat(jump, 2, axis=1)  # xy holds p0.x, p0.y, p1.x, p1.y
                if parameterization in RESIDUALS:
                    values, weight = values[1:].copy(), weight[1:] * weight[:-1]
                    values[:, xy] = np.diff(np.diff(rows[:, cols][:, xy], axis=0), axis=0)
            valid = valid_floats[game, cols].astype(np.float64)
            sums[g] += (values * weight).sum(0) * valid
            squares[g] += (np.square(values) * weight).sum(0) * valid
            counts[g] += weight.sum(0) * valid
    center, scale = {}, {}
    for g in groups:
        n = np.maximum(_pool_players(counts[g], layout, g), 1)
        mean = _pool_players(sums[g], layout, g) / n
        second = _pool_players(squares[g], layout, g) / n
        if layout.float_target(g) == Target.DELTA:
            c, s = np.zeros_like(mean), np.sqrt(second)
        else:
            c, s = mean, np.sqrt(np.maximum(second - mean**2, 0))
        center[g] = c.tolist()
        scale[g] = np.where(s < MIN_SCALE, 1.0, s).tolist()
    return TargetStats(center, scale)


ChooseIds = Callable[[Tensor], Tensor]  # categorical logits (..., vocab) -> chosen ids (...)


def greedy(logits: Tensor) -> Tensor:
    """The most likely id of each categorical prediction: logits (..., vocab) -> (...)."""
    return logits.argmax(-1)


def hold_invariants(frame: NextFrame, current: Targets, layout: Layout) -> NextFrame:
    """What the game guarantees, whatever a model outputs: percent is never below 0 and a stock is never gained
    or counted below 0 (the rollout checks of `melee_wm/eval/constraints.py`). Applied to decoded predictions, so
    rollouts cannot drift out of the game."""
    group = layout.position_group
    start = layout.float_slice(group).start
    percent = [layout.player_float_index(p, "percent") - start for p in range(NUM_PLAYERS)]
    frame.floats[group][..., percent] = frame.floats[group][..., percent].clamp_min(0.0)
    start = layout.float_slice("dynamics").start
    stocks = [layout.player_float_index(p, "stocks") - start for p in range(NUM_PLAYERS)]
    predicted = frame.floats["dynamics"][..., stocks]
    now = current.current_floats["dynamics"][..., stocks].to(predicted.dtype)
    frame.floats["dynamics"][..., stocks] = torch.minimum(predicted, now).clamp_min(0.0)
    return frame


def loss_positions(batch: Batch, parameterization: str) -> slice:
    """Target positions (of the P) that get a loss: all of them, or under a residual parameterization only
    those whose frame t - 1 is in the context."""
    return positions_with_previous(batch) if parameterization in RESIDUALS else slice(0, batch.num_positions)


class TargetCodec(nn.Module):
    """Raw targets -> standardized training targets, and standardized predictions -> next-frame values.

    Buffers `center_<group>` / `scale_<group>` (width,) hold the training split's statistics, so a checkpoint
    carries them.
    """

    def __init__(
        self, layout: Layout, stats: TargetStats, parameterization: str, table: TableBaseline | None = None
    ) -> None:
        super().__init__()
        self.layout = layout
        self.table = table  # the prior of `residual_over_table` (it travels in the checkpoint beside the codec)
        self.groups = layout.regression_groups
        self.parameterization = parameterization
        for g in self.groups:
            self.register_buffer(f"center_{g}", torch.tensor(stats.center[g], dtype=torch.float32))
            self.register_buffer(f"scale_{g}", torch.tensor(stats.scale[g], dtype=torch.float32))
        self.register_buffer("xy", torch.tensor(layout.position_offsets), persistent=False)

    def _stats(self, group: str) -> tuple[Tensor, Tensor]:
        return getattr(self, f"center_{group}"), getattr(self, f"scale_{group}")

    def destandardize(self, group: str, values: Tensor) -> Tensor:
        """Standardized outputs of a regression group (..., width) -> the parameterized target in encoded units."""
        center, scale = self._stats(group)
        return values * scale + center

    def positions(self, batch: Batch) -> slice:
        """Target positions with a loss (see `loss_positions`)."""
        return loss_positions(batch, self.parameterization)

    def _residual(self) -> bool:
        return self.parameterization in RESIDUALS

    def position_prior(self, current: Targets, previous: PreviousFrame, character: Tensor) -> Tensor | None:
        """(..., position group width) the move from frame t to t + 1 the x/y targets are a residual over:
        robust constant velocity's, or the fitted table's under `residual_over_table`; None under `delta`.
        current: only its current_* fields are read; previous: frame t - 1; character: (..., 2) ids of frame t."""
        if self.parameterization == RESIDUAL:
            action = current.current_categorical["action"]
            return robust_displacement(
                current.current_floats[self.layout.position_group], previous, action, self.layout
            )
        if self.parameterization == RESIDUAL_TABLE:
            if self.table is None:
                raise ValueError("objective.position_parameterization residual_over_table: no table was fitted")
            return self.table.to(character.device).position_prior(current, previous, character)
        return None

    def encode(self, targets: Targets, prev_delta: Tensor | None) -> dict[str, Tensor]:
        """Standardized regression targets, group -> (B, P', width), of targets already cut to the loss
        positions; prev_delta: (B, P', continuous width) frame t minus frame t - 1 (residual parameterization)."""
        out = {}
        for g in self.groups:
            raw = targets.floats[g]
            if g == self.layout.position_group and self._residual():
                raw = raw.clone()
                raw[..., self.xy] -= prev_delta[..., self.xy]
            center, scale = self._stats(g)
            out[g] = (raw - center) / scale
        return out

    def decode(
        self, pred: Prediction, current: Targets, prev_delta: Tensor | None, choose: ChooseIds | None = None
    ) -> NextFrame:
        """Next-frame values from predictions cut to the same positions as `current` (its current_* fields):
        regression groups de-standardized and turned into values, binary logits thresholded at 0,
        categoricals by `choose` (logits (..., vocab) -> ids (...); default argmax, the most likely id)."""
        floats = {}
        for g in self.layout.target_float_groups:
            out = pred.floats[g].float()
            if g in self.groups:
                raw = self.destandardize(g, out)
                if g == self.layout.position_group and self._residual():
                    raw = raw.clone()
                    raw[..., self.xy] += prev_delta[..., self.xy]
                is_delta = self.layout.float_target(g) == Target.DELTA
                floats[g] = current.current_floats[g] + raw if is_delta else raw
            else:  # binary logits
                floats[g] = (out > 0).to(out.dtype)
        categorical = {f: (choose or greedy)(logits) for f, logits in pred.categorical.items()}
        return hold_invariants(NextFrame(floats=floats, categorical=categorical), current, self.layout)
