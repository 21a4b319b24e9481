"""Coarse categories of Melee action states, for per-category action accuracy.

Source of truth: Melee's action-state numbering, as exported by Slippi's post-frame `state` (the `action`
column). Ids 0..340 are the common states every character shares; ids >= 341 are character-specific (mostly
special moves). The table below is the only place that groups them; ids it does not name are `other` (dead,
revival platform, items, taunts, being carried or swallowed, entry, ...).
"""

from __future__ import annotations

import torch
from torch import Tensor

from melee_wm.game.names import FIRST_CHARACTER_STATE

# Category -> inclusive (first, last) id ranges, with the states they hold. `other` takes every id left over.
ACTION_CATEGORIES: dict[str, tuple[tuple[int, int | None], ...]] = {  # last None: to the vocabulary's end
    "idle": (
        (14, 14),  # Wait
        (245, 246),  # Ottotto, OttottoWait: teetering on an edge
    ),
    "movement": (
        (15, 23),  # WalkSlow/Middle/Fast, Turn, TurnRun, Dash, Run, RunDirect, RunBrake
        (39, 41),  # Squat, SquatWait, SquatRv
        (244, 244),  # Pass: dropping through a platform
    ),
    "aerial": (
        (24, 37),  # KneeBend (jumpsquat), JumpF/B, JumpAerialF/B, Fall*, FallAerial*, FallSpecial* (helpless)
        (42, 43),  # Landing, LandingFallSpecial
    ),
    "ground_attack": ((44, 64),),  # Attack11-13, Attack100*, AttackDash, tilts (S3/Hi3/Lw3), smashes (S4/Hi4/Lw4)
    "aerial_attack": ((65, 74),),  # AttackAirN/F/B/Hi/Lw, LandingAirN/F/B/Hi/Lw
    "damage": (
        (38, 38),  # DamageFall: tumble after knockback
        (75, 91),  # DamageHi/N/Lw/Air 1-3, DamageFlyHi/N/Lw/Top/Roll
        (183, 211),  # DownBound/Wait/Damage/Stand/Attack/Forward/Back/Spot, Passive* (techs), ShieldBreak*, FuraFura
        (223, 232),  # CapturePulled/Wait/Damage Hi/Lw, CaptureCut, CaptureJump, CaptureNeck, CaptureFoot
        (239, 243),  # ThrownF/B/Hi/Lw, ThrownLwWomen
        (247, 248),  # FlyReflectWall, FlyReflectCeil: knockback bouncing off a wall or ceiling
    ),
    "shield_dodge": (
        (178, 182),  # GuardOn, Guard, GuardOff, GuardSetOff, GuardReflect
        (233, 236),  # EscapeF, EscapeB (rolls), Escape (spot dodge), EscapeAir (air dodge)
    ),
    "grab": (
        (212, 222),
    ),  # Catch, CatchPull, CatchDash, CatchDashPull, CatchWait, CatchAttack, CatchCut, ThrowF/B/Hi/Lw
    "edge": ((252, 263),),  # CliffCatch, CliffWait, CliffClimb*, CliffAttack*, CliffEscape*, CliffJump*
    "special": ((FIRST_CHARACTER_STATE, None),),  # character-specific states
    "other": (),
}
CATEGORY_NAMES: tuple[str, ...] = tuple(ACTION_CATEGORIES)
OTHER = CATEGORY_NAMES.index("other")


def category_of(action_vocab: int) -> Tensor:
    """(action_vocab,) long: the category index (into `CATEGORY_NAMES`) of every action id below the vocabulary."""
    table = torch.full((action_vocab,), OTHER, dtype=torch.long)
    claimed = torch.zeros(action_vocab, dtype=torch.bool)
    for index, (name, ranges) in enumerate(ACTION_CATEGORIES.items()):
        for first, last in ranges:
            ids = slice(first, action_vocab if last is None else last + 1)
            if claimed[ids].any():
                raise AssertionError(f"action category {name!r}: ids {first}..{last} overlap another category")
            claimed[ids] = True
            table[ids] = index
    return table
