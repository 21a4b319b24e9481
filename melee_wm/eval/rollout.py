"""Autoregressive rollout of any `WorldModelInterface` model, carrying its recurrent state.

`RecurrentRollout` is the loop itself, shared with the simulator (`melee_wm.sim`): the context but its last frame is
run once (`forward(..., need_state=True)`), then each frame costs one `step` over the current frame with the next
frame's controller; the prediction becomes the next encoded frame (`reconstruct_frame`) and is fed back. The cost
per frame is constant however long the rollout; nothing re-runs the window. The windows' column validity
(`valid`, `valid_ints`: which fields their games' replay formats record) reaches the model's missing-field
indicators through `forward`, and the carried state keeps them for every `step`.

`rollout_by_rerun` is the slow reference: before every frame it re-runs `forward` over the frames so far (all of
them, or the last `window`), as a model without a carried state would have to. With `window=None` it must equal
`rollout` (the tests check it); `scripts/benchmarks/rollout.py` times the two.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from melee_wm.data.batch import Targets, map_tensors
from melee_wm.encoding.layout import Layout
from melee_wm.frames.frame import NextFrame, PreviousFrame
from melee_wm.frames.reconstruct import frame_from_next, reconstruct_frame
from melee_wm.frames.targets import ChooseIds, TargetCodec
from melee_wm.model.interface import WorldModelInterface

OneStep = Callable[[Targets, PreviousFrame, Tensor], NextFrame]  # (targets, previous, character) -> next frame


def _check(floats: Tensor, ints: Tensor, context: int, horizon: int = 1) -> int:
    """The number of frames after `context` (at least `horizon`); a ValueError naming the shapes otherwise."""
    if floats.shape[:2] != ints.shape[:2]:
        raise ValueError(f"rollout: floats {tuple(floats.shape)} and ints {tuple(ints.shape)} differ in (B, T)")
    if context < 2 or floats.shape[1] - context < horizon:
        raise ValueError(
            f"rollout: need >= 2 context frames and >= {horizon} frames to predict, got {floats.shape[1]} frames "
            f"with context {context}"
        )
    return floats.shape[1] - context


class RecurrentRollout:
    """A batch of worlds advanced one predicted frame per `advance`, carrying the model's recurrent state.

    floats: (B, C, num_floats), ints: (B, C, num_ints): C >= 2 true context frames on the model's device (frame
    C - 1 is the current frame; its controller columns are the ones that led to it); valid (B, num_floats),
    valid_ints (B, num_ints): each world's column validity (None: every column valid). `state`, `previous` and
    `current` are public so a caller may copy and restore them (branching). The caller sets eval mode.
    """

    def __init__(
        self,
        net: WorldModelInterface,
        codec: TargetCodec,
        floats: Tensor,
        ints: Tensor,
        valid: Tensor | None = None,
        valid_ints: Tensor | None = None,
    ) -> None:
        _check(floats, ints, floats.shape[1], horizon=0)
        self.net, self.codec = net, codec
        ctrl = floats[..., codec.layout.float_slice("controller")]
        with torch.no_grad():
            _, self.state = net(
                floats[:, :-1], ints[:, :-1], ctrl[:, 1:], need_state=True, valid=valid, valid_ints=valid_ints
            )
        self.valid, self.valid_ints = valid, valid_ints
        self.previous: tuple[Tensor, Tensor] = (floats[:, -2], ints[:, -2])
        self.current: tuple[Tensor, Tensor] = (floats[:, -1], ints[:, -1])

    @torch.no_grad()
    def advance(self, next_ctrl: Tensor, choose: ChooseIds | None = None) -> tuple[Tensor, Tensor]:
        """Predict the next frame of every world from its controller columns next_ctrl (B, num_ctrl), make it the
        current frame and return it as (floats (B, num_floats), ints (B, num_ints)). choose: how categorical
        ids are picked from the logits (default the most likely)."""
        pred, self.state = self.net.step(*self.current, next_ctrl, self.state, inplace=True)
        following = reconstruct_frame(
            pred,
            self.codec,
            *self.current,
            self.previous,
            next_ctrl,
            choose=choose,
            valid=self.valid,
            valid_ints=self.valid_ints,
        )
        self.previous, self.current = self.current, following
        return following


@torch.no_grad()
def rollout(
    net: WorldModelInterface,
    codec: TargetCodec,
    floats: Tensor,
    ints: Tensor,
    context: int,
    *,
    valid: Tensor | None = None,
    valid_ints: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Predict frames context..T-1 of true windows from their first `context` frames and the true controller.

    floats: (B, T, num_floats), ints: (B, T, num_ints) true frames on the model's device; only frames < context
    and the controller columns of later frames are read. valid: (B, num_floats), valid_ints: (B, num_ints) bool
    column validity of each window's game (None: all valid). Returns predicted floats (B, H, num_floats) and ints
    (B, H, num_ints), H = T - context. The caller sets eval mode.
    """
    horizon = _check(floats, ints, context)
    ctrl = floats[..., codec.layout.float_slice("controller")]
    worlds = RecurrentRollout(net, codec, floats[:, :context], ints[:, :context], valid, valid_ints)
    out_f, out_i = zip(*(worlds.advance(ctrl[:, context + h]) for h in range(horizon)), strict=True)
    return torch.stack(out_f, 1), torch.stack(out_i, 1)


@torch.no_grad()
def rollout_by_rerun(
    net: WorldModelInterface,
    codec: TargetCodec,
    floats: Tensor,
    ints: Tensor,
    context: int,
    window: int | None = None,
    *,
    valid: Tensor | None = None,
    valid_ints: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """`rollout` by re-running `forward` over the frames so far before every predicted frame (from the zero
    state): all of them (`window=None`; equals `rollout`) or the last `window` (a fixed-window model's cost).
    valid, valid_ints: as in `rollout`, given to every `forward`."""
    horizon = _check(floats, ints, context)
    ctrl = floats[..., codec.layout.float_slice("controller")]
    seq_f, seq_i = floats[:, :context], ints[:, :context]
    for h in range(horizon):
        end = context + h  # frames 0..end-1 are known; predict frame `end`
        lo = 0 if window is None else max(0, end - window)
        pred, _ = net(
            seq_f[:, lo:],
            seq_i[:, lo:],
            ctrl[:, lo + 1 : end + 1],
            need_state=False,
            valid=valid,
            valid_ints=valid_ints,
        )
        previous = (seq_f[:, -2], seq_i[:, -2])
        next_f, next_i = reconstruct_frame(
            pred.at(-1), codec, seq_f[:, -1], seq_i[:, -1], previous, ctrl[:, end], valid=valid, valid_ints=valid_ints
        )
        seq_f = torch.cat([seq_f, next_f[:, None]], 1)
        seq_i = torch.cat([seq_i, next_i[:, None]], 1)
    return seq_f[:, context:], seq_i[:, context:]


def persistence_rollout(floats: Tensor, ints: Tensor, context: int) -> tuple[Tensor, Tensor]:
    """Persistence baseline over the horizon: every predicted frame equals the last context frame."""
    horizon = _check(floats, ints, context)
    last_f, last_i = floats[:, context - 1 : context], ints[:, context - 1 : context]
    return last_f.expand(-1, horizon, -1).clone(), last_i.expand(-1, horizon, -1).clone()


@torch.no_grad()
def baseline_rollout(
    predict: Callable[[Targets, PreviousFrame, Tensor], NextFrame],
    layout: Layout,
    floats: Tensor,
    ints: Tensor,
    context: int,
) -> tuple[Tensor, Tensor]:
    """A one-step baseline (`robust_constant_velocity`, `TableBaseline.predict`) run forward on its own frames,
    like the model: each predicted frame becomes the next current frame (`frame_from_next`, true controller).

    predict(targets, previous, character): the next frame from Targets whose current_* fields are (B, 1, ...).
    """
    horizon = _check(floats, ints, context)
    ctrl, chars = layout.float_slice("controller"), layout.int_slice("character")
    prev, cur_f, cur_i = (floats[:, context - 2], ints[:, context - 2]), floats[:, context - 1], ints[:, context - 1]
    out_f, out_i = [], []
    for h in range(horizon):
        current = Targets(
            floats={},
            categorical={},
            current_floats={g: cur_f[:, None, layout.float_slice(g)] for g in layout.target_float_groups},
            current_categorical={f: cur_i[:, None, layout.int_slice(f)].long() for f in layout.categorical_targets},
        )
        before = PreviousFrame(
            prev[0][:, None, layout.float_slice("continuous")], prev[1][:, None, layout.int_slice("action")].long()
        )
        frame = map_tensors(predict(current, before, cur_i[:, None, chars].long()), lambda t: t[:, 0])
        next_f, next_i = frame_from_next(frame, layout, cur_f, cur_i, floats[:, context + h, ctrl])
        out_f.append(next_f)
        out_i.append(next_i)
        prev, cur_f, cur_i = (cur_f, cur_i), next_f, next_i
    return torch.stack(out_f, 1), torch.stack(out_i, 1)


def constant_velocity_rollout(floats: Tensor, ints: Tensor, context: int, xy_columns: Tensor) -> tuple[Tensor, Tensor]:
    """Constant-velocity baseline over the horizon: each x and y continues its last observed per-frame change,
    pos[c - 1 + h] = pos[c - 1] + h * (pos[c - 1] - pos[c - 2]); every other field persists.
    xy_columns: (4,) float column indices of p0.x, p0.y, p1.x, p1.y."""
    out_f, out_i = persistence_rollout(floats, ints, context)
    horizon = out_f.shape[1]
    last, before = floats[:, context - 1, xy_columns], floats[:, context - 2, xy_columns]
    steps = torch.arange(1, horizon + 1, device=floats.device, dtype=floats.dtype)[None, :, None]
    out_f[..., xy_columns] = last[:, None] + steps * (last - before)[:, None]
    return out_f, out_i
