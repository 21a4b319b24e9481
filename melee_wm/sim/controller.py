"""Controller inputs a person, a script or an agent gives a simulated world, encoded into the model's columns by
the same function the encoder applies to replays (`melee_wm.encoding.encoder.controller_features`)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from melee_wm.encoding.config import BUTTON_BITS
from melee_wm.encoding.encoder import controller_features
from melee_wm.encoding.layout import NUM_PLAYERS, Layout

STICKS = ("main_x", "main_y", "c_x", "c_y")  # in [-1, 1]: x to the right, y up, 0 at rest
CONTROLLER_GROUP = "controller"


@dataclass(frozen=True)
class Controller:
    """One player's controller on one frame, in the units a replay stores: the main and C sticks in [-1, 1], the
    analog trigger in [0, 1], and the buttons held (names of `BUTTON_BITS` the model's encoding reads). Each value
    is one number for every world, or an array with one value per world (for buttons: name -> bool array)."""

    main_x: ArrayLike = 0.0
    main_y: ArrayLike = 0.0
    c_x: ArrayLike = 0.0
    c_y: ArrayLike = 0.0
    trigger: ArrayLike = 0.0
    buttons: Collection[str] | Mapping[str, ArrayLike] = ()


IDLE = Controller()  # sticks at rest, nothing pressed


def _per_world(value: ArrayLike, worlds: int, what: str, low: float, high: float) -> np.ndarray:
    array = np.asarray(value, dtype=np.float32)
    if array.ndim > 1 or (array.ndim == 1 and len(array) != worlds):
        raise ValueError(f"{what}: expected one number or {worlds} (one per world), got shape {array.shape}")
    if not np.isfinite(array).all() or (array < low).any() or (array > high).any():
        raise ValueError(f"{what}: expected values in [{low}, {high}], got {array.min()} .. {array.max()}")
    return np.broadcast_to(array, (worlds,))


def _button_word(
    buttons: Collection[str] | Mapping[str, ArrayLike], layout: Layout, worlds: int, player: int
) -> np.ndarray:
    """(worlds,) logical button words (`BUTTON_BITS`) of one player's held buttons."""
    held = buttons if isinstance(buttons, Mapping) else dict.fromkeys(buttons, True)
    word = np.zeros(worlds, dtype=np.uint32)
    for name, pressed in held.items():
        if name not in layout.cfg.buttons:
            known = "a button the game has, but not one this model reads" if name in BUTTON_BITS else "no button"
            raise ValueError(
                f"player {player} button {name!r}: {known}; the model's encoding reads {list(layout.cfg.buttons)}"
            )
        mask = np.broadcast_to(np.asarray(pressed, dtype=bool), (worlds,))
        word |= np.where(mask, np.uint32(BUTTON_BITS[name]), np.uint32(0))
    return word


def encode_controllers(layout: Layout, controllers: Sequence[Controller], worlds: int) -> np.ndarray:
    """(worlds, controller columns) float32: both players' controllers, player 0 first, in the layout's order."""
    if len(controllers) != NUM_PLAYERS:
        raise ValueError(f"expected {NUM_PLAYERS} controllers (one per player, port order), got {len(controllers)}")
    columns = layout.float_slice(CONTROLLER_GROUP)
    out = np.empty((worlds, columns.stop - columns.start), dtype=np.float32)
    for player, controller in enumerate(controllers):
        sticks = {s: _per_world(getattr(controller, s), worlds, f"player {player} {s}", -1.0, 1.0) for s in STICKS}
        trigger = _per_world(controller.trigger, worlds, f"player {player} trigger", 0.0, 1.0)
        word = _button_word(controller.buttons, layout, worlds, player)
        for name, values in controller_features(sticks, trigger, word, layout.cfg).items():
            out[:, layout.player_float_index(player, name) - columns.start] = values
    return out


def describe_controllers(layout: Layout, encoded: np.ndarray) -> list[dict[str, object]]:
    """Both players' controllers from one row of encoded controller columns (width,): sticks, trigger and the
    buttons held, for a JSON record of what drove a world."""
    start = layout.float_slice(CONTROLLER_GROUP).start
    out = []
    for player in range(NUM_PLAYERS):
        value = {name: float(encoded[layout.player_float_index(player, name) - start]) for name in (*STICKS, "trigger")}
        held = [b for b in layout.cfg.buttons if encoded[layout.player_float_index(player, f"button_{b}") - start]]
        out.append({**value, "buttons": held})
    return out
