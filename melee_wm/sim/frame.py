"""`SimFrame`: the current frame of every simulated world, as the encoded columns the model reads and, on access,
named fields in game units (positions, percent, stocks, action state id and name, ...)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from melee_wm.encoding.layout import NUM_PLAYERS, STAGE_FIELD, Layout
from melee_wm.game.names import action_name, character_name

# Fields `SimFrame.players` spells out for each player (float fields in game units, the rest as ids or flags).
REPORTED_FLOATS = ("x", "y", "percent", "shield", "state_age", "hitlag", "hitstun", "combo_count")
REPORTED_FLAGS = ("facing", "on_ground", "invulnerable")  # facing True: facing right
REPORTED_IDS = ("jumps", "ground", "l_cancel", "hurtbox", "last_attack")


@dataclass(frozen=True)
class SimFrame:
    """floats (N, num_floats) and ints (N, num_ints): the encoded frame of N worlds; done (N,) bool: the world's
    game is over (a player has no stock left), so it no longer changes; frame: frames stepped since `reset`."""

    floats: Tensor
    ints: Tensor
    done: Tensor
    frame: int
    layout: Layout

    def value(self, field: str) -> Tensor:
        """(N, 2) one per-player field of both players: float fields in game units, int fields as ids."""
        layout = self.layout
        if field in layout.int_fields:
            return self.ints[:, layout.int_slice(field)].long()
        columns = [layout.player_float_index(p, field) for p in range(NUM_PLAYERS)]
        return self.floats[:, columns] / layout.float_scale(field)

    @property
    def position(self) -> Tensor:
        """(N, 2 players, 2): x and y in game units."""
        return torch.stack([self.value("x"), self.value("y")], -1)

    @property
    def percent(self) -> Tensor:
        """(N, 2) damage percent."""
        return self.value("percent")

    @property
    def stocks(self) -> Tensor:
        """(N, 2) whole stocks left (the model's value rounded)."""
        return self.value("stocks").round().long()

    @property
    def action(self) -> Tensor:
        """(N, 2) action-state ids (`melee_wm.game.names.action_name` names them)."""
        return self.value("action")

    @property
    def facing_right(self) -> Tensor:
        """(N, 2) bool."""
        return self.value("facing") >= 0.5

    @property
    def on_ground(self) -> Tensor:
        """(N, 2) bool."""
        return self.value("on_ground") >= 0.5

    @property
    def stage(self) -> Tensor:
        """(N,) stage ids."""
        return self.ints[:, self.layout.int_slice(STAGE_FIELD)][:, 0].long()

    def players(self, world: int = 0) -> list[dict[str, Any]]:
        """Both players of one world as plain named fields (game units, ids with their names), for JSON."""
        floats = {f: self.value(f)[world].tolist() for f in REPORTED_FLOATS}
        flags = {f: (self.value(f)[world] >= 0.5).tolist() for f in REPORTED_FLAGS}
        ids = {f: self.value(f)[world].tolist() for f in ("action", "character", *REPORTED_IDS)}
        stocks = self.stocks[world].tolist()
        out = []
        for p in range(NUM_PLAYERS):
            out.append(
                {
                    "character": ids["character"][p],
                    "character_name": character_name(ids["character"][p]),
                    "action": ids["action"][p],
                    "action_name": action_name(ids["action"][p]),
                    **{f: floats[f][p] for f in REPORTED_FLOATS},
                    "stocks": stocks[p],
                    **{f: flags[f][p] for f in REPORTED_FLAGS},
                    **{f: ids[f][p] for f in REPORTED_IDS},
                }
            )
        return out

    def to_dict(self, world: int = 0) -> dict[str, Any]:
        """One world's frame: its count since reset, whether the game is over, the stage and both players."""
        return {
            "frame": self.frame,
            "done": bool(self.done[world]),
            "stage": int(self.stage[world]),
            "players": self.players(world),
        }
