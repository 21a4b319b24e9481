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
ANALOG = (*STICKS, "trigger")  # the trigger in [0, 1]
ANALOG_LOW = np.array([[-1.0]] * len(STICKS) + [[0.0]], dtype=np.float32)
ANALOG_HIGH = np.ones((len(ANALOG), 1), dtype=np.float32)
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


def _analog(controller: Controller, worlds: int, player: int) -> np.ndarray:
    """(5, worlds) float32: the sticks and the trigger of one player's controller, checked against their ranges."""
    values = np.empty((len(ANALOG), worlds), dtype=np.float32)
    for k, name in enumerate(ANALOG):
        array = np.asarray(getattr(controller, name), dtype=np.float32)
        if array.ndim > 1 or (array.ndim == 1 and len(array) != worlds):
            raise ValueError(
                f"player {player} {name}: expected one number or {worlds} (one per world), got shape {array.shape}"
            )
        values[k] = array
    inside = (values >= ANALOG_LOW) & (values <= ANALOG_HIGH)  # NaN fails both comparisons
    if not inside.all():
        k = int(np.flatnonzero(~inside.all(1))[0])
        raise ValueError(
            f"player {player} {ANALOG[k]}: expected values in [{ANALOG_LOW[k, 0]}, {ANALOG_HIGH[k, 0]}], got "
            f"{values[k].min()} .. {values[k].max()}"
        )
    return values


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
    fields = layout.float_fields(CONTROLLER_GROUP)
    out = np.empty((worlds, columns.stop - columns.start), dtype=np.float32)
    for player, controller in enumerate(controllers):
        analog = _analog(controller, worlds, player)
        word = _button_word(controller.buttons, layout, worlds, player)
        features = controller_features(dict(zip(STICKS, analog, strict=False)), analog[-1], word, layout.cfg)
        first = layout.player_float_index(player, fields[0]) - columns.start  # a player's fields are contiguous
        out[:, first : first + len(fields)] = np.stack([features[name] for name in fields], axis=1)
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
