"""`NextFrame`: next-frame values, the one record that decoded model predictions, baselines and rollouts produce
and the metrics consume; the rule baselines (README.md, "Baselines") built from a batch's targets; and which
positions jump (respawns) rather than move.

A batch's target position j (0 <= j < P) is context index t = K - P + j: it predicts frame t + 1 from frame t.
Constant velocity also needs frame t - 1, which only exists for t >= 1 (`positions_with_previous`); the model
and both baselines are scored on those positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

from melee_wm.data.batch import Batch, Targets, map_tensors, next_values, select_xy
from melee_wm.encoding.layout import NUM_PLAYERS, Layout
from melee_wm.game.physics import position_jump

T = TypeVar("T")


@dataclass
class NextFrame:
    """floats: group -> (..., width) next-frame values in encoded units, for every `layout.target_float_groups`
    group (the binary group holds 0.0 / 1.0); categorical: field -> (..., 2) long ids, for every
    `layout.categorical_targets` field. In a batch `...` is (B, P)."""

    floats: dict[str, Tensor]
    categorical: dict[str, Tensor]


def true_next_frame(targets: Targets, layout: Layout) -> NextFrame:
    """The true next frame: DELTA targets added to the current values, the other targets as they are."""
    floats = {g: next_values(layout, g, v, targets.current_floats[g]) for g, v in targets.floats.items()}
    return NextFrame(floats=floats, categorical=dict(targets.categorical))


@dataclass
class PreviousFrame:
    """Frame t - 1 of each scored position t: continuous (B, P', continuous width) values, action (B, P', 2) ids."""

    continuous: Tensor
    action: Tensor


def current_frame(targets: Targets) -> NextFrame:
    """The current frame's values at each position; as a prediction of the next frame it is `persistence`."""
    return NextFrame(floats=dict(targets.current_floats), categorical=dict(targets.current_categorical))


def persistence(targets: Targets) -> NextFrame:
    """Persistence baseline: the next frame equals the current one."""
    return current_frame(targets)


def constant_velocity(targets: Targets, previous_continuous: Tensor, layout: Layout) -> NextFrame:
    """Constant-velocity baseline: each player's x and y continue their last per-frame change,
    pos[t+1] = pos[t] + (pos[t] - pos[t-1]); every other field persists.

    previous_continuous: (..., width of `layout.position_group`) frame t - 1, matching the targets' (...) shape.
    """
    frame = current_frame(targets)
    group = layout.position_group
    current = frame.floats[group]
    if previous_continuous.shape != current.shape:
        raise ValueError(
            f"constant_velocity: previous_continuous must match the current continuous values' shape "
            f"{tuple(current.shape)}, got {tuple(previous_continuous.shape)}"
        )
    xy = torch.tensor(layout.position_offsets, device=current.device)
    continuous = current.clone()
    continuous[..., xy] = 2 * current[..., xy] - previous_continuous[..., xy]
    frame.floats[group] = continuous
    return frame


def robust_constant_velocity(targets: Targets, previous: PreviousFrame, layout: Layout) -> NextFrame:
    """Constant velocity, except that a player whose position jumped into the current frame (a respawn,
    `melee_wm.game.physics.position_jump`) persists instead of extrapolating the jump."""
    frame = current_frame(targets)
    group = layout.position_group
    current = frame.floats[group]
    displacement = robust_displacement(current, previous, targets.current_categorical["action"], layout)
    xy = torch.tensor(layout.position_offsets, device=current.device)
    continuous = current.clone()
    continuous[..., xy] = current[..., xy] + displacement[..., xy]
    frame.floats[group] = continuous
    return frame


def robust_displacement(current: Tensor, previous: PreviousFrame, action: Tensor, layout: Layout) -> Tensor:
    """(..., position group width) frame t minus frame t - 1, with 0 on the x and y of a player whose position
    jumped into frame t: the per-frame move robust constant velocity continues, and the position prior of the
    residual target parameterization. current: (..., width) frame t's position group; action: (..., 2) ids."""
    jumped = jumped_into(current, previous, action, layout)  # (..., 2 players)
    xy = torch.tensor(layout.position_offsets, device=current.device).reshape(NUM_PLAYERS, -1)
    keep = torch.ones_like(current)
    for player in range(NUM_PLAYERS):
        keep[..., xy[player]] = (~jumped[..., player, None]).to(current.dtype)
    return (current - previous.continuous) * keep


def jumped_into(current: Tensor, previous: PreviousFrame, action: Tensor, layout: Layout) -> Tensor:
    """(..., 2 players) bool: whether each player's position jumped from frame t - 1 into frame t (a respawn).
    current: (..., position group width) frame t's values; action: (..., 2) frame t's action ids."""
    scale = layout.cfg.position_scale
    before, now = select_xy(previous.continuous, layout) / scale, select_xy(current, layout) / scale
    return position_jump(before, now, previous.action, action)


def position_jumps(targets: Targets, previous: PreviousFrame, layout: Layout) -> tuple[Tensor, Tensor]:
    """((..., 2 players) bool, same): whether each player's position jumped from frame t - 1 into t, and from t
    into t + 1 (the true next frame). Position error on frames with neither is the `pos_mae_smooth` error."""
    group, scale = layout.position_group, layout.cfg.position_scale
    current = select_xy(targets.current_floats[group], layout) / scale  # (..., 2 players, 2 coords)
    after = current + select_xy(targets.floats[group], layout) / scale  # the position group is a delta
    action, next_action = targets.current_categorical["action"], targets.categorical["action"]
    into_current = jumped_into(targets.current_floats[group], previous, action, layout)
    return into_current, position_jump(current, after, action, next_action)


def positions_with_previous(batch: Batch) -> slice:
    """Target positions whose context index t = K - P + j is >= 1, i.e. whose frame t - 1 is in the context:
    positions 1..P-1 when P == K, all P positions when P < K."""
    k, p = batch.floats.shape[1], batch.num_positions
    return slice(max(0, 1 - (k - p)), p)


def previous_frame(batch: Batch, layout: Layout, positions: slice) -> PreviousFrame:
    """Frame t - 1 of the target positions `positions` (step 1, each with t >= 1, e.g.
    `positions_with_previous(batch)`), taken from the context."""
    rows = _previous_rows(batch, positions)
    return PreviousFrame(
        continuous=batch.floats[:, rows, layout.float_slice(layout.position_group)],
        action=batch.ints[:, rows, layout.int_slice("action")].long(),
    )


def current_ids(batch: Batch, layout: Layout, positions: slice, field: str) -> Tensor:
    """(B, P', 2) long ids of an int field (e.g. `character`, which has no target) in frame t of the target
    positions `positions`, taken from the context."""
    k, p = batch.floats.shape[1], batch.num_positions
    return batch.ints[:, k - p + positions.start : k - p + positions.stop, layout.int_slice(field)].long()


def _previous_rows(batch: Batch, positions: slice) -> slice:
    """Context rows t - 1 of the target positions `positions` (consecutive, each with t >= 1)."""
    k, p = batch.floats.shape[1], batch.num_positions
    picked = range(p)[positions]
    if picked.step != 1 or (len(picked) and k - p + picked.start < 1):
        raise ValueError(f"previous_frame: positions {positions} must be consecutive and have t >= 1 (K={k}, P={p})")
    return slice(k - p + picked.start - 1, k - p + picked.stop - 1)


def select_positions(obj: T, positions: slice) -> T:
    """`Targets` or a `NextFrame` (every tensor (B, P, ...)) restricted to target positions `positions`."""
    return map_tensors(obj, lambda t: t[:, positions])
