"""Geometry of every legal stage, in game units: blast zones (where a character dies), the highest surface a
character can stand on, and an outline for pictures. The one place that holds stage geometry.

Blast zones of Final Destination and Battlefield are verified values; the other four are the
community's published values. `tests/test_rollout.py` checks every table entry against the sample replays we
have (all real positions lie inside the zone except while a character is dead or dying); Dream Land N64 has no
sample replay. Platform outlines are approximate and only drawn; `top_ground` (the highest standable y) is what
the on-ground check uses, and Fountain of Dreams' side platforms and Pokémon Stadium's transformations move or
raise the ground, which `GROUND_MARGIN` absorbs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

GROUND_MARGIN = 30.0  # game units above a stage's highest surface before "on ground" is physically impossible
SINK_DEPTH = 2.0  # game units below a level main stage's top (y = 0) where no surface holds a grounded character
# Melee action states 0..10 are the Dead* states (DeadDown, DeadLeft, DeadRight, DeadUp, DeadUpStar, ...): a
# character flying out past the top (a star KO) stays outside the blast zone in them ~130 frames before its stock
# is taken; after a stock loss the position stays frozen outside for ~60 frames.
DEAD_ACTIONS = range(0, 11)


@dataclass(frozen=True)
class Stage:
    """One stage. left/right/top/bottom: blast zone; ledge: half-width of the main stage (its top at y = 0);
    platforms: (x_left, x_right, y) of each soft platform; top_ground: highest y a character can stand on;
    flat_ground: the main stage's top is level at y = 0 everywhere (not Yoshi's Story's slopes, not Pokémon
    Stadium's transformations), so a character standing on it stays at y = 0."""

    id: int
    name: str
    left: float
    right: float
    top: float
    bottom: float
    ledge: float
    platforms: tuple[tuple[float, float, float], ...]
    top_ground: float
    flat_ground: bool


_FOD_PLATFORMS = ((-49.5, -21.0, 16.125), (21.0, 49.5, 22.125), (-14.25, 14.25, 42.75))  # side ones move
_PS_PLATFORMS = ((-55.0, -25.0, 25.0), (25.0, 55.0, 25.0))
_YS_PLATFORMS = ((-59.5, -28.0, 23.45), (28.0, 59.5, 23.45), (-15.75, 15.75, 42.0))
_DL_PLATFORMS = ((-61.39, -31.73, 30.24), (31.7, 63.08, 30.24), (-19.02, 19.02, 51.43))
_BF_PLATFORMS = ((-57.6, -20.0, 27.2), (20.0, 57.6, 27.2), (-18.8, 18.8, 54.4))

# Columns: id, name, blast zone left / right / top / bottom, ledge, platforms, top_ground.
STAGES: dict[int, Stage] = {
    s.id: s
    for s in (
        Stage(2, "Fountain of Dreams", -198.75, 198.75, 202.5, -146.25, 63.35, _FOD_PLATFORMS, 42.75, True),
        Stage(3, "Pokémon Stadium", -230.0, 230.0, 180.0, -111.0, 87.75, _PS_PLATFORMS, 25.0, False),
        Stage(8, "Yoshi's Story", -175.7, 173.6, 168.0, -91.0, 56.0, _YS_PLATFORMS, 42.0, False),
        Stage(28, "Dream Land N64", -255.0, 255.0, 250.0, -123.0, 77.27, _DL_PLATFORMS, 51.43, True),
        Stage(31, "Battlefield", -224.0, 224.0, 200.0, -108.8, 68.4, _BF_PLATFORMS, 54.4, True),
        Stage(32, "Final Destination", -246.0, 246.0, 188.0, -140.0, 85.5657, (), 0.0, True),
    )
}


def stage_table(vocab: int, device: torch.device | None = None) -> Tensor:
    """(vocab, 5) float32 rows [left, right, top, bottom, top_ground] indexed by stage id; NaN for a stage not in
    `STAGES` (every comparison with NaN is False, so no check fires on an unknown stage)."""
    table = torch.full((vocab, 5), float("nan"))
    for s in STAGES.values():
        if s.id < vocab:
            table[s.id] = torch.tensor([s.left, s.right, s.top, s.bottom, s.top_ground])
    return table.to(device)


def flat_ground_table(vocab: int, device: torch.device | None = None) -> Tensor:
    """(vocab,) bool indexed by stage id: whether that stage's main ground is level at y = 0 (`Stage.flat_ground`)."""
    table = torch.zeros(vocab, dtype=torch.bool)
    for s in STAGES.values():
        if s.id < vocab:
            table[s.id] = s.flat_ground
    return table.to(device)


MAX_SURFACES = 4  # the main stage and up to three platforms


def surface_table(vocab: int, device: torch.device | None = None) -> Tensor:
    """(vocab, MAX_SURFACES, 3) float32 [x_left, x_right, y] of every surface a character can stand on, by stage
    id: the main stage (-ledge..ledge at y = 0), then its platforms; NaN rows for absent ones and unknown stages."""
    table = torch.full((vocab, MAX_SURFACES, 3), float("nan"))
    for s in STAGES.values():
        if s.id < vocab:
            rows = [(-s.ledge, s.ledge, 0.0), *s.platforms]
            table[s.id, : len(rows)] = torch.tensor(rows)
    return table.to(device)


def outside_blast_zone(x: Tensor, y: Tensor, zone: Tensor) -> Tensor:
    """x, y: (...) game units; zone: (..., 5) rows of `stage_table`. True where the point is past a blast zone."""
    return (x < zone[..., 0]) | (x > zone[..., 1]) | (y > zone[..., 2]) | (y < zone[..., 3])


def is_dead_action(action: Tensor) -> Tensor:
    """True where an action-state id is one of the Dead* states (`DEAD_ACTIONS`)."""
    return (action >= DEAD_ACTIONS.start) & (action < DEAD_ACTIONS.stop)
