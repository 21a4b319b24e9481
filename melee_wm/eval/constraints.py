"""Physical-constraint checks of predicted frames: what a real game never shows, with rates a model can be
compared on (`melee_wm/eval/rollout_eval.py` scores the model, both baselines and the true frames with them).
Stage geometry comes from `melee_wm.game.stages.py`."""

from __future__ import annotations

import torch
from torch import Tensor

from melee_wm.encoding.layout import NUM_PLAYERS, STAGE_FIELD, Layout
from melee_wm.game.stages import (
    GROUND_MARGIN,
    SINK_DEPTH,
    flat_ground_table,
    is_dead_action,
    outside_blast_zone,
    stage_table,
)

VIOLATIONS = ("negative_percent", "stocks_increase", "outside_blast_zone", "ground_above_platforms", "sunk_into_stage")
PERCENT_TOLERANCE = 1e-3  # game units below 0 before a percent counts as negative (float rounding)


def physical_violations(
    layout: Layout, floats: Tensor, ints: Tensor, last_f: Tensor, valid_f: Tensor
) -> dict[str, Tensor]:
    """{kind: (2,) [violations, entries]} over the (B, H, player) entries of frames floats (B, H, num_floats) and
    ints (B, H, num_ints) that follow the frame last_f (B, num_floats).

    negative_percent: percent < 0. stocks_increase: whole stocks above the previous frame's. outside_blast_zone:
    a position past the stage's blast zone while the player is not in a Dead* action and has lost no stock since
    `last_f`. ground_above_platforms: on the ground more than `GROUND_MARGIN` above the stage's highest surface.
    sunk_into_stage: on the ground more than `SINK_DEPTH` below a level main stage (`Stage.flat_ground`).
    """
    cfg = layout.cfg

    def column(field: str, source: Tensor = floats) -> Tensor:  # (..., 2) both players' encoded values
        return source[..., [layout.player_float_index(p, field) for p in range(NUM_PLAYERS)]]

    def valid(field: str) -> Tensor:  # (B, H, 2)
        return column(field, valid_f)[:, None].expand(floats.shape[0], floats.shape[1], NUM_PLAYERS)

    zone = stage_table(layout.int_vocab(STAGE_FIELD), floats.device)[ints[..., layout.int_slice(STAGE_FIELD)].long()]
    zone = zone.expand(*ints.shape[:2], NUM_PLAYERS, zone.shape[-1])  # (B, H, 2, 5)
    stage = ints[..., layout.int_slice(STAGE_FIELD)].long()  # (B, H, 1)
    flat = flat_ground_table(layout.int_vocab(STAGE_FIELD), floats.device)[stage].expand(*ints.shape[:2], NUM_PLAYERS)
    known = ~zone[..., 0].isnan()
    x, y = column("x") / cfg.position_scale, column("y") / cfg.position_scale
    stocks = torch.round(column("stocks") / cfg.stocks_scale)
    before = torch.cat([torch.round(column("stocks", last_f) / cfg.stocks_scale)[:, None], stocks[:, :-1]], 1)
    lost = stocks < torch.round(column("stocks", last_f) / cfg.stocks_scale)[:, None]
    dead = is_dead_action(ints[..., layout.int_slice("action")])
    checks = {
        "negative_percent": (column("percent") / cfg.percent_scale < -PERCENT_TOLERANCE, valid("percent")),
        "stocks_increase": (stocks > before, valid("stocks")),
        "outside_blast_zone": (outside_blast_zone(x, y, zone) & ~dead & ~lost, known & valid("x") & valid("y")),
        "ground_above_platforms": (
            (column("on_ground") >= 0.5) & (y > zone[..., 4] + GROUND_MARGIN),
            known & valid("on_ground") & valid("y"),
        ),
        "sunk_into_stage": (
            (column("on_ground") >= 0.5) & (y < -SINK_DEPTH) & flat,
            known & valid("on_ground") & valid("y"),
        ),
    }
    return {k: torch.stack([(hit & ok).sum().double(), ok.sum().double()]) for k, (hit, ok) in checks.items()}
