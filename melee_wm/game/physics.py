"""When a character's position jumps instead of moving: the one definition of a position discontinuity.

A KO freezes the position outside the blast zone (Dead* actions), then the respawn moves it to the revival
platform in one frame. No character moves that far in a frame under the game's physics, so a baseline that
extrapolates the jump (constant velocity) pays it twice, and a learned residual over it is asked to undo it.
On the six sample replays every frame-to-frame move beyond 20 game units is such a respawn (they are 175 to
246 units, or 53 and 77 from a star KO); the largest real moves are 18.7 units (a character-specific dash) and
17.5 (a throw release).
"""

from __future__ import annotations

from torch import Tensor

# A per-frame move of more than this many game units on either axis is not motion (the fastest seen is 18.7).
MAX_SPEED = 40.0
# Melee's Rebirth action state: the first frame on the revival platform, where the position has just jumped.
REBIRTH_ACTION = 12


def position_jump(before_xy: Tensor, after_xy: Tensor, before_action: Tensor, after_action: Tensor) -> Tensor:
    """True where a character's position jumps from one frame to the next instead of moving.

    before_xy, after_xy: (..., 2) x and y in game units; before_action, after_action: (...) action-state ids of
    the same two frames. A jump is a move beyond `MAX_SPEED` on either axis, or the frame a respawn begins.
    """
    too_far = (after_xy - before_xy).abs().amax(-1) > MAX_SPEED
    respawned = (after_action == REBIRTH_ACTION) & (before_action != REBIRTH_ACTION)
    return too_far | respawned
