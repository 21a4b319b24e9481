"""Motion inputs: each player's last per-frame move, the opponent's relative position and where the stage is
(ground below, ledge, blast zones), computed in fp32.

A trunk that sees only absolute positions must subtract two of them to recover a velocity, and under bf16
autocast an encoded position of 1-2.3 is stored in steps of 0.8-1.6 game units, more than constant velocity's
whole one-frame error. So the differences are taken here, in float32 before any autocast, and scaled to O(1).
A move across a position jump (a respawn, `melee_wm.game.physics`) is reported as 0 with a flag. Stage
distances come from `melee_wm.game.stages` (0 with a flag 0 on a stage it does not know).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from melee_wm.encoding.layout import NUM_PLAYERS, STAGE_FIELD, Layout
from melee_wm.game.physics import position_jump
from melee_wm.game.stages import stage_table, surface_table

MOVE_SCALE = 0.25  # encoded move = game units per frame * MOVE_SCALE (typical moves of 0-4 units become 0-1)
NO_GROUND = 100.0  # game units: the height reported when no surface lies below a character
SURFACE_SLACK = 1.0  # game units below a surface at which a character still counts as above it
XY = ("x", "y")
# Feature groups in output order: (name, width); per-player pairs are flattened player-major.
PARTS = (
    ("move", NUM_PLAYERS * 2),
    ("known", NUM_PLAYERS),
    ("relative", NUM_PLAYERS * 2),
    ("stage", NUM_PLAYERS * 6),  # height above the ground below, past the ledge, blast zones left/right/top/bottom
    ("stage_known", 1),
)


class MotionFeatures(nn.Module):
    """(..., L, F) frames -> (..., L, `width`) features: per player the move since the previous frame (x, y), a
    flag that the move is known (a previous frame exists and no jump happened), the position relative to the
    other player (x, y), and on a known stage (with a flag) the height above the surface below, the distance
    past the nearest ledge and the distances to the four blast zones."""

    width = sum(w for _, w in PARTS)

    @staticmethod
    def part(name: str) -> slice:
        """Columns of feature group `name` (`PARTS`) in the output."""
        names = [n for n, _ in PARTS]
        start = sum(w for _, w in PARTS[: names.index(name)])
        return slice(start, start + PARTS[names.index(name)][1])

    def __init__(self, layout: Layout) -> None:
        super().__init__()
        index = [[layout.player_float_index(p, c) for c in XY] for p in range(NUM_PLAYERS)]
        self.register_buffer("xy", torch.tensor(index, dtype=torch.long), persistent=False)  # (2 players, 2)
        self.action_cols = layout.int_slice("action")
        self.stage_col = layout.int_slice(STAGE_FIELD)
        self.position_scale = layout.cfg.position_scale
        vocab = layout.int_vocab(STAGE_FIELD)
        self.register_buffer("zones", stage_table(vocab), persistent=False)  # (vocab, 5)
        self.register_buffer("surfaces", surface_table(vocab), persistent=False)  # (vocab, S, 3)

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
            stage = self._stage(xy, ints[..., self.stage_col].long())
            return torch.cat((move.flatten(-2), known.float(), relative.flatten(-2), stage), -1)

    def _stage(self, xy: Tensor, stage: Tensor) -> Tensor:
        """xy: (B, L, 2 players, 2) game units; stage: (B, L, 1) ids -> (B, L, 2 * 6 + 1) encoded distances."""
        zone = self.zones[stage[..., 0]][..., None, :]  # (B, L, 1, 5) left, right, top, bottom, top ground
        known = ~zone[..., 0, 0].isnan()  # (B, L)
        x, y = xy[..., 0], xy[..., 1]  # (B, L, 2)
        surfaces = self.surfaces[stage[..., 0]][..., None, :, :]  # (B, L, 1, S, 3)
        over = (x[..., None] >= surfaces[..., 0]) & (x[..., None] <= surfaces[..., 1])
        height = y[..., None] - surfaces[..., 2]  # (B, L, 2, S)
        below = over & (height >= -SURFACE_SLACK)
        ground = torch.where(below, height, NO_GROUND).amin(-1).clamp_max(NO_GROUND)
        ledge = x.abs() - surfaces[..., 0, 1]  # past the main stage's edge (> 0: off stage)
        blast = torch.stack([x - zone[..., 0], zone[..., 1] - x, zone[..., 2] - y, y - zone[..., 3]], -1)
        out = torch.cat([ground[..., None], ledge[..., None], blast], -1) * self.position_scale  # (B, L, 2, 6)
        out = torch.where(known[..., None, None], out, 0.0).nan_to_num(0.0)
        return torch.cat([out.flatten(-2), known[..., None].float()], -1)
