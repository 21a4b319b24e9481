"""One step of predictions -> the next encoded frame, on the model's device: what a rollout feeds back.

`reconstruct_frame` is used by rollout evaluation and by training against drift (self-forcing), so both feed the
model exactly the same frames. Every column comes from the layout by name:

- target float groups: `TargetCodec.decode` (regression de-standardized, DELTA groups added to the current frame,
  the residual-over-constant-velocity x/y correction applied with the previous frame, binary logits thresholded);
- categorical targets: argmax of the logits;
- state age: by rule, not by the regression head. It resets to `RESET_STATE_AGE` frames when the action changes,
  else advances one frame (in encoded units: `state_age_scale` per frame; melee_wm/encoding/encoder.py stores
  `state_age * state_age_scale`). On the sample replays the age on the first frame of a new action is 0 in 53%
  of changes (1 in 47%, -1 in ~4%), and an unchanged action advances by exactly one frame on ~80% of frames
  (0 during hitlag, fractional for animation-rate changes);
- per-game columns the model does not predict (character, stage): carried from the current frame;
- the controller of the next frame: from the ground truth (`next_ctrl_t`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from melee_wm.data.batch import Targets
from melee_wm.encoding.layout import NUM_PLAYERS, Layout
from melee_wm.frames.frame import NextFrame
from melee_wm.frames.targets import TargetCodec
from melee_wm.model.heads import Prediction

RESET_STATE_AGE = 0.0  # frames: state age of the first frame of a new action (the most common value, see above)


def _state_age_columns(layout: Layout) -> list[int]:
    return [layout.player_float_index(p, "state_age") for p in range(NUM_PLAYERS)]


def advance_state_age(layout: Layout, floats_t: Tensor, ints_t: Tensor, next_ints: Tensor) -> Tensor:
    """(..., 2) next state age in encoded units: `RESET_STATE_AGE` where a player's action changes between
    `ints_t` and `next_ints`, else the current age + one frame."""
    cols, scale = _state_age_columns(layout), layout.cfg.state_age_scale
    action = layout.int_slice("action")
    changed = next_ints[..., action] != ints_t[..., action]
    age = floats_t[..., cols]
    return torch.where(changed, torch.full_like(age, RESET_STATE_AGE * scale), age + scale)


def frame_from_next(next_frame: NextFrame, layout: Layout, floats_t: Tensor, ints_t: Tensor, next_ctrl_t: Tensor):
    """Write a `NextFrame` into encoded columns. floats_t (..., num_floats), ints_t (..., num_ints): the current
    frame; next_ctrl_t (..., num_ctrl): the true controller of the next frame. Returns (floats, ints) of the next
    frame in the dtypes of floats_t / ints_t; the state age follows `advance_state_age`."""
    floats = floats_t.clone()
    for g in layout.target_float_groups:
        floats[..., layout.float_slice(g)] = next_frame.floats[g].to(floats.dtype)
    floats[..., layout.float_slice("controller")] = next_ctrl_t.to(floats.dtype)
    ints = ints_t.clone()
    for f in layout.categorical_targets:
        ints[..., layout.int_slice(f)] = next_frame.categorical[f].to(ints.dtype)
    floats[..., _state_age_columns(layout)] = advance_state_age(layout, floats_t, ints_t, ints).to(floats.dtype)
    return floats, ints


def reconstruct_frame(
    pred: Prediction,
    codec: TargetCodec,
    floats_t: Tensor,
    ints_t: Tensor,
    prev_floats_t: Tensor | None,
    next_ctrl_t: Tensor,
    true_ints: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The next encoded frame from one step of predictions.

    pred: one position's `Prediction` (floats group -> (B, width), categorical field -> (B, 2, vocab));
    floats_t (B, num_floats), ints_t (B, num_ints): frame t, the frame the prediction starts from;
    prev_floats_t (B, num_floats): frame t - 1 (the residual parameterization needs it; else it may be None);
    next_ctrl_t (B, num_ctrl): the true controller columns of frame t + 1;
    true_ints (B, num_ints): when given, frame t + 1's true int columns replace the argmax (teacher-forced
    categoricals; the state age then follows the true action).
    Returns floats (B, num_floats) and ints (B, num_ints) of frame t + 1. Gradients flow through the regression
    outputs (not through thresholds, argmax or the state-age rule).
    """
    layout = codec.layout
    current = Targets(
        floats={},
        categorical={},
        current_floats={g: floats_t[..., layout.float_slice(g)] for g in layout.target_float_groups},
        current_categorical={},
    )
    prev_delta = None  # frame t - t-1 of the position group: the residual parameterization's input (else unused)
    if prev_floats_t is not None:
        cols = layout.float_slice(layout.position_group)
        prev_delta = floats_t[..., cols] - prev_floats_t[..., cols]
    next_frame = codec.decode(pred, current, prev_delta)
    if true_ints is not None:
        next_frame.categorical = {f: true_ints[..., layout.int_slice(f)] for f in layout.categorical_targets}
    return frame_from_next(next_frame, layout, floats_t, ints_t, next_ctrl_t)
