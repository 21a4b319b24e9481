"""`NextFrame`: next-frame values, the one record that decoded model predictions, baselines and rollouts produce
and the metrics consume; and the two baselines (README.md, "Training") built from a batch's targets.

A batch's target position j (0 <= j < P) is context index t = K - P + j: it predicts frame t + 1 from frame t.
Constant velocity also needs frame t - 1, which only exists for t >= 1 (`positions_with_previous`); the model
and both baselines are scored on those positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

from melee_wm.data.batch import Batch, Targets, map_tensors, next_values
from melee_wm.encoding.layout import Layout

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


def positions_with_previous(batch: Batch) -> slice:
    """Target positions whose context index t = K - P + j is >= 1, i.e. whose frame t - 1 is in the context:
    positions 1..P-1 when P == K, all P positions when P < K."""
    k, p = batch.floats.shape[1], batch.num_positions
    return slice(max(0, 1 - (k - p)), p)


def previous_continuous(batch: Batch, layout: Layout, positions: slice) -> Tensor:
    """(B, P', width) `layout.position_group` values of frame t - 1 for the target positions `positions` (step 1, each
    with t >= 1, e.g. `positions_with_previous(batch)`), taken from the context `batch.floats`."""
    k, p = batch.floats.shape[1], batch.num_positions
    picked = range(p)[positions]
    if picked.step != 1 or (len(picked) and k - p + picked.start < 1):
        raise ValueError(
            f"previous_continuous: positions {positions} must be consecutive and have t >= 1 (K={k}, P={p})"
        )
    rows = slice(k - p + picked.start - 1, k - p + picked.stop - 1)
    return batch.floats[:, rows, layout.float_slice(layout.position_group)]


def select_positions(obj: T, positions: slice) -> T:
    """`Targets` or a `NextFrame` (every tensor (B, P, ...)) restricted to target positions `positions`."""
    return map_tensors(obj, lambda t: t[:, positions])
