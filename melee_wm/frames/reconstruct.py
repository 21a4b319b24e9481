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
- the controller of the next frame: from the ground truth (`next_ctrl_t`);
- invariants the game guarantees: percent >= 0 and no stock gained (`TargetCodec.decode`); a character
  predicted on the ground over a level main stage stands on its top, and one predicted on the ground where no
  surface can be is airborne (`keep_standing`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from melee_wm.data.batch import Targets
from melee_wm.encoding.layout import NUM_PLAYERS, STAGE_FIELD, Layout
from melee_wm.frames.frame import NextFrame, PreviousFrame
from melee_wm.frames.targets import ChooseIds, TargetCodec
from melee_wm.game.stages import GROUND_MARGIN, SINK_DEPTH, flat_ground_table, stage_table, surface_table
from melee_wm.model.heads import Prediction

GROUND_SNAP = 5.0  # game units from a level main stage's top within which a grounded character stands on it
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
    keep_standing(layout, floats_t, ints_t, floats)
    return floats, ints


def keep_standing(layout: Layout, floats_t: Tensor, ints_t: Tensor, floats: Tensor) -> None:
    """Ground contact as the game's collision allows it, so a model's small errors cannot sink a character
    through the stage over a rollout nor stand it on air:

    - a character predicted on the ground over a level main stage (`Stage.flat_ground`: its top is y = 0 from
      ledge to ledge) and within `GROUND_SNAP` of that top stands on it: its y becomes 0;
    - a character predicted on the ground more than `SINK_DEPTH` below a level main stage's top, or more than
      `GROUND_MARGIN` above the stage's highest surface, stands on nothing: its on-ground flag is cleared (the
      real games never show either: `melee_wm/eval/constraints.py` counts them).

    floats_t, ints_t: the current frame (its stage); floats: the next frame's columns (..., num_floats), changed
    in place."""
    scale = layout.cfg.position_scale
    x = floats[..., [layout.player_float_index(p, "x") for p in range(NUM_PLAYERS)]] / scale
    y_cols = [layout.player_float_index(p, "y") for p in range(NUM_PLAYERS)]
    ground_cols = [layout.player_float_index(p, "on_ground") for p in range(NUM_PLAYERS)]
    ground = floats[..., ground_cols] >= 0.5
    stage = ints_t[..., layout.int_slice(STAGE_FIELD)].long()  # (..., 1)
    vocab = layout.int_vocab(STAGE_FIELD)
    flat = flat_ground_table(vocab, floats.device)[stage]  # (..., 1)
    main = surface_table(vocab, floats.device)[stage[..., 0], 0]  # (..., 3): x_left, x_right, y of the main stage
    top_ground = stage_table(vocab, floats.device)[stage[..., 0], -1:]  # (..., 1); NaN for an unknown stage
    over = (x >= main[..., :1]) & (x <= main[..., 1:2])
    standing = ground & flat & over & ((floats[..., y_cols] / scale).abs() < GROUND_SNAP)
    floats[..., y_cols] = floats[..., y_cols].masked_fill(standing, 0.0)
    y = floats[..., y_cols] / scale
    on_nothing = ground & ((flat & (y < -SINK_DEPTH)) | (y > top_ground + GROUND_MARGIN))
    floats[..., ground_cols] = floats[..., ground_cols].masked_fill(on_nothing, 0.0)


def reconstruct_frame(
    pred: Prediction,
    codec: TargetCodec,
    floats_t: Tensor,
    ints_t: Tensor,
    previous: tuple[Tensor, Tensor] | None,
    next_ctrl_t: Tensor,
    true_ints: Tensor | None = None,
    choose: ChooseIds | None = None,
    valid: Tensor | None = None,
    valid_ints: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The next encoded frame from one step of predictions.

    pred: one position's `Prediction` (floats group -> (B, width), categorical field -> (B, 2, vocab));
    floats_t (B, num_floats), ints_t (B, num_ints): frame t, the frame the prediction starts from;
    previous: frame t - 1 as (floats (B, num_floats), ints (B, num_ints)) (the residual parameterization needs it;
    else it may be None);
    next_ctrl_t (B, num_ctrl): the true controller columns of frame t + 1;
    true_ints (B, num_ints): when given, frame t + 1's true int columns replace the argmax (teacher-forced
    categoricals; the state age then follows the true action);
    choose: how categorical ids are picked from their logits (`TargetCodec.decode`; default the most likely);
    valid (B, num_floats), valid_ints (B, num_ints): the game's column validity; a column its replay format
    lacks keeps frame t's value (the format's default, all the model ever saw there). None: every column valid.
    Returns floats (B, num_floats) and ints (B, num_ints) of frame t + 1. Gradients flow through the regression
    outputs (not through thresholds, argmax or the state-age rule).
    """
    layout = codec.layout
    current = Targets(
        floats={},
        categorical={},
        current_floats={g: floats_t[..., layout.float_slice(g)] for g in layout.target_float_groups},
        current_categorical={"action": ints_t[..., layout.int_slice("action")].long()},
    )
    prior = None  # the move the x/y outputs are a residual over (`TargetCodec.position_prior`; else unused)
    if previous is not None:
        cols, actions = layout.float_slice(layout.position_group), layout.int_slice("action")
        before = PreviousFrame(previous[0][..., cols], previous[1][..., actions].long())
        prior = codec.position_prior(current, before, ints_t[..., layout.int_slice("character")].long())
    next_frame = codec.decode(pred, current, prior, choose)
    if true_ints is not None:
        next_frame.categorical = {f: true_ints[..., layout.int_slice(f)] for f in layout.categorical_targets}
    floats, ints = frame_from_next(next_frame, layout, floats_t, ints_t, next_ctrl_t)
    if valid is not None:
        floats = torch.where(valid, floats, floats_t)
    if valid_ints is not None:
        ints = torch.where(valid_ints, ints, ints_t)
    return floats, ints
