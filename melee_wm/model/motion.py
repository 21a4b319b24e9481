"""Motion inputs: each player's last per-frame move and the opponent's relative position, computed in fp32.

A trunk that sees only absolute positions must subtract two of them to recover a velocity, and under bf16
autocast an encoded position of 1-2.3 is stored in steps of 0.8-1.6 game units, more than constant velocity's
whole one-frame error. So the differences are taken here, in float32 before any autocast, and scaled to O(1).
A move across a position jump (a respawn, `melee_wm.game.physics`) is reported as 0 with a flag.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from melee_wm.encoding.layout import NUM_PLAYERS, Layout
from melee_wm.game.physics import position_jump

MOVE_SCALE = 0.25  # encoded move = game units per frame * MOVE_SCALE (typical moves of 0-4 units become 0-1)
XY = ("x", "y")


class MotionFeatures(nn.Module):
    """(..., L, F) frames -> (..., L, `width`) features: per player the move since the previous frame (x, y), a
    flag that the move is known (a previous frame exists and no jump happened), and the position relative to
    the other player (x, y)."""

    width = NUM_PLAYERS * 5

    def __init__(self, layout: Layout) -> None:
        super().__init__()
        index = [[layout.player_float_index(p, c) for c in XY] for p in range(NUM_PLAYERS)]
        self.register_buffer("xy", torch.tensor(index, dtype=torch.long), persistent=False)  # (2 players, 2)
        self.action_cols = layout.int_slice("action")
        self.position_scale = layout.cfg.position_scale

    def forward(self, floats: Tensor, ints: Tensor, previous: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """floats: (B, L, num_floats), ints: (B, L, num_ints); previous: (floats, ints) of the frame before the
        first, each (B, num_floats / num_ints), or None when there is none. Returns (B, L, width) float32."""
        with torch.autocast(floats.device.type, enabled=False):
            xy = floats[..., self.xy].float() / self.position_scale  # (B, L, 2 players, 2) game units
            action = ints[..., self.action_cols].long()  # (B, L, 2)
            if previous is None:
                before_xy = torch.cat([xy[:, :1], xy[:, :-1]], 1)
                before_action = torch.cat([action[:, :1], action[:, :-1]], 1)
                known = torch.ones_like(action, dtype=torch.bool)
                known[:, 0] = False
            else:
                prev_xy = previous[0][:, None][..., self.xy].float() / self.position_scale
                prev_action = previous[1][:, None][..., self.action_cols].long()
                before_xy = torch.cat([prev_xy, xy[:, :-1]], 1)
                before_action = torch.cat([prev_action, action[:, :-1]], 1)
                known = torch.ones_like(action, dtype=torch.bool)
            known = known & ~position_jump(before_xy, xy, before_action, action)
            move = torch.where(known[..., None], xy - before_xy, 0.0) * MOVE_SCALE  # (B, L, 2, 2)
            relative = (xy.flip(-2) - xy) * self.position_scale  # the other player's position minus one's own
            parts = (move.flatten(-2), known.float(), relative.flatten(-2))
            return torch.cat(parts, -1)
