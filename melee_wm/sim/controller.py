"""Controller inputs a person, a script or an agent gives a simulated world, encoded into the model's columns by
the same function the encoder applies to replays (`melee_wm.encoding.encoder.controller_flags`)."""

from __future__ import annotations

import functools
import operator
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from melee_wm.encoding.config import BUTTON_BITS
from melee_wm.encoding.encoder import controller_flags
from melee_wm.encoding.layout import NUM_PLAYERS, STICK_FIELDS, Layout

STICKS = ("main_x", "main_y", "c_x", "c_y")  # in [-1, 1]: x to the right, y up, 0 at rest
ANALOG = STICK_FIELDS  # the sticks, then the trigger in [0, 1]
ANALOG_LOW = np.array([-1.0] * len(STICKS) + [0.0], dtype=np.float32)[:, None, None]  # (5, players, worlds)
ANALOG_HIGH = np.ones((len(ANALOG), 1, 1), dtype=np.float32)
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


def _analog(controllers: Sequence[Controller], worlds: int) -> np.ndarray:
    """(5, players, worlds) float32: the sticks and the trigger of every player's controller, checked against their
    ranges."""
    values = np.empty((len(ANALOG), len(controllers), worlds), dtype=np.float32)
    for player, controller in enumerate(controllers):
        for k, name in enumerate(ANALOG):
            value = getattr(controller, name)
            try:
                if np.ndim(value) > 1:
                    raise ValueError
                values[k, player] = value  # a number is one value for every world
            except (TypeError, ValueError):
                raise ValueError(
                    f"player {player} {name}: expected one number or {worlds} (one per world), got shape "
                    f"{np.shape(value)}"
                ) from None
    inside = (values >= ANALOG_LOW) & (values <= ANALOG_HIGH)  # NaN fails both comparisons
    if not inside.all():
        k, player = (int(i[0]) for i in np.nonzero(~inside.all(-1)))
        raise ValueError(
            f"player {player} {ANALOG[k]}: expected values in [{ANALOG_LOW[k, 0, 0]}, {ANALOG_HIGH[k, 0, 0]}], got "
            f"{values[k, player].min()} .. {values[k, player].max()}"
        )
    return values


def _button_word(
    buttons: Collection[str] | Mapping[str, ArrayLike], layout: Layout, worlds: int, player: int
) -> int | np.ndarray:
    """The logical button word (`BUTTON_BITS`) of one player's held buttons: one for every world (a collection of
    names) or (worlds,) (a mapping name -> pressed per world)."""
    for name in buttons:
        if name not in layout.cfg.buttons:
            known = "a button the game has, but not one this model reads" if name in BUTTON_BITS else "no button"
            raise ValueError(
                f"player {player} button {name!r}: {known}; the model's encoding reads {list(layout.cfg.buttons)}"
            )
    if not isinstance(buttons, Mapping):
        return functools.reduce(operator.or_, (BUTTON_BITS[name] for name in buttons), 0)
    word = np.zeros(worlds, dtype=np.int64)
    for name, pressed in buttons.items():
        pressed = np.asarray(pressed, dtype=bool)
        if pressed.shape not in ((), (worlds,)):
            raise ValueError(
                f"player {player} button {name!r}: expected one flag or {worlds} (one per world), got shape "
                f"{pressed.shape}"
            )
        word |= np.where(pressed, BUTTON_BITS[name], 0)
    return word


def encode_controllers(layout: Layout, controllers: Sequence[Controller], worlds: int) -> np.ndarray:
    """(worlds, controller columns) float32: both players' controllers, player 0 first, in the layout's order."""
    if len(controllers) != NUM_PLAYERS:
        raise ValueError(f"expected {NUM_PLAYERS} controllers (one per player, port order), got {len(controllers)}")
    analog = _analog(controllers, worlds)
    words = np.empty((NUM_PLAYERS, worlds), dtype=np.int64)
    for player, controller in enumerate(controllers):
        words[player] = _button_word(controller.buttons, layout, worlds, player)
    pressed, directions = controller_flags(analog, words, layout.cfg)
    fields = np.concatenate([analog, pressed, directions], dtype=np.float32)  # (fields, players, worlds)
    # The group's columns are player 0's `controller_fields`, then player 1's.
    return np.ascontiguousarray(fields.transpose(2, 1, 0)).reshape(worlds, -1)


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
