"""Turn a `ParsedGame` into the float32 / int16 column arrays described by the `Layout`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from melee_wm.encoding.config import BUTTON_BITS, STATE_FLAG_BITS, EncodingConfig
from melee_wm.encoding.layout import (
    FIELD_SCALES,
    NUM_PLAYERS,
    STAGE_FIELD,
    STICK_FIELDS,
    STICK_THRESHOLD_FEATURES,
    VELOCITY_FIELDS,
    Layout,
    controller_fields,
)
from melee_wm.replay.parse import AIRBORNE_GROUND, ParsedGame

# Each direction feature of `STICK_THRESHOLD_FEATURES`: its stick axis's row in `STICK_FIELDS` order, the sign
# of the side it tests, and whether it tests the hard threshold on either side (sign 0).
DIRECTION_AXES = [STICK_FIELDS.index(axis) for _, axis, _ in STICK_THRESHOLD_FEATURES]
DIRECTION_SIGNS = np.array([[sign] for _, _, sign in STICK_THRESHOLD_FEATURES], dtype=np.float32)
DIRECTION_HARD = DIRECTION_SIGNS == 0
MOMENT_BLOCK_BYTES = 1 << 19  # float64 values `column_moments` widens at a time (a cache-sized buffer)


@dataclass
class EncodeStats:
    """Per-column counts of repaired values: non-finite floats set to 0, out-of-vocabulary ids clamped."""

    nonfinite: Counter = field(default_factory=Counter)
    clamped: Counter = field(default_factory=Counter)

    def add(self, other: EncodeStats) -> None:
        self.nonfinite.update(other.nonfinite)
        self.clamped.update(other.clamped)


@dataclass
class ColumnMoments:
    """Per-column row count, float64 sum and sum of squares, min and max of one array; `sum`, `sumsq`,
    `min`, `max`: (num_columns,). Small, so a game's moments travel with it and the store only merges them."""

    count: int
    sum: np.ndarray
    sumsq: np.ndarray
    min: np.ndarray
    max: np.ndarray


def _runs(indices: list[int]) -> list[slice]:
    """Maximal runs of consecutive ascending indices, as slices."""
    runs: list[slice] = []
    for i in indices:
        if runs and runs[-1].stop == i:
            runs[-1] = slice(runs[-1].start, i + 1)
        else:
            runs.append(slice(i, i + 1))
    return runs


def _small_int_moments(
    columns: np.ndarray, others: list[int], sums: np.ndarray, sumsq: np.ndarray, lows: np.ndarray, highs: np.ndarray
) -> ColumnMoments:
    """`column_moments` of 8- or 16-bit integer rows in exact int64 sums, with no widened copy of the rows. They
    equal float64 sums' results while those are exact too: below 2**53, so for rows under 2**23 (any game)."""
    for block in _runs(others):
        values = columns[block]
        sums[block] = np.add.reduce(values, axis=1, dtype=np.int64)
        sumsq[block] = np.einsum("ij,ij->i", values, values, dtype=np.int64)
        lows[block] = values.min(axis=1)
        highs[block] = values.max(axis=1)
    return ColumnMoments(count=columns.shape[1], sum=sums, sumsq=sumsq, min=lows, max=highs)


def column_moments(columns: np.ndarray, binary_ones: dict[int, int] | None = None) -> ColumnMoments:
    """Moments of each row of `columns`: (num_columns, rows), one column per row (contiguous rows are fastest).

    binary_ones: row -> its count of ones, for rows known to hold only 0 and 1 (their moments are counts).
    The other rows are widened to float64 a few at a time in one small buffer that stays in cache; each row's
    moments depend only on its own values, however the rows are grouped."""
    num_columns, rows = columns.shape
    binary_ones = binary_ones or {}
    sums, sumsq = np.zeros(num_columns), np.zeros(num_columns)
    lows, highs = np.full(num_columns, np.inf), np.full(num_columns, -np.inf)
    if rows == 0:
        return ColumnMoments(count=0, sum=sums, sumsq=sumsq, min=lows, max=highs)
    binary = np.array(list(binary_ones), dtype=np.int64)
    ones = np.array(list(binary_ones.values()), dtype=np.float64)
    sums[binary] = sumsq[binary] = ones
    lows[binary] = ones == rows
    highs[binary] = ones > 0
    others = [i for i in range(num_columns) if i not in binary_ones]
    if np.issubdtype(columns.dtype, np.integer) and columns.itemsize <= 2:
        return _small_int_moments(columns, others, sums, sumsq, lows, highs)
    step = max(1, MOMENT_BLOCK_BYTES // (8 * rows))
    buffer = np.empty((min(step, len(others)), rows))
    for run in _runs(others):
        for start in range(run.start, run.stop, step):
            block = slice(start, min(start + step, run.stop))
            wide = buffer[: block.stop - block.start]
            np.copyto(wide, columns[block])
            np.minimum.reduce(wide, axis=1, out=lows[block])
            np.maximum.reduce(wide, axis=1, out=highs[block])
            with np.errstate(invalid="ignore", over="ignore"):  # non-finite values give non-finite moments, quietly
                np.add.reduce(wide, axis=1, out=sums[block])
                np.square(wide, out=wide)
                np.add.reduce(wide, axis=1, out=sumsq[block])
    return ColumnMoments(count=rows, sum=sums, sumsq=sumsq, min=lows, max=highs)


@dataclass
class EncodedColumns:
    """One game column by column: floats (layout.num_floats, num_frames) float32 and ints (layout.num_ints,
    num_frames) int16, each column one contiguous row; its repairs and the moments of its columns."""

    floats: np.ndarray
    ints: np.ndarray
    stats: EncodeStats
    float_moments: ColumnMoments
    int_moments: ColumnMoments


@dataclass
class EncodedGame:
    """floats: (num_frames, layout.num_floats) float32; ints: (num_frames, layout.num_ints) int16."""

    floats: np.ndarray
    ints: np.ndarray
    stats: EncodeStats


def _flag(word: np.ndarray, bit: int) -> np.ndarray:
    return (word & np.uint64(1 << bit)) != 0


def controller_flags(analog: np.ndarray, buttons: np.ndarray, cfg: EncodingConfig) -> tuple[np.ndarray, np.ndarray]:
    """The binary controller fields, from analog (5, *shape): the sticks main_x, main_y, c_x, c_y in [-1, 1] and
    the trigger in [0, 1] (`STICK_FIELDS` order), and the logical button words buttons (*shape) (`BUTTON_BITS`).
    Returns pressed (len(cfg.buttons), *shape) and directions (len(STICK_THRESHOLD_FEATURES), *shape), bool, in
    the layout's order (`controller_fields`). *shape is (frames,) for one player of a replay, or any axes, e.g.
    (players, worlds) for a simulator encoding the controllers it was given every frame: so both produce the same
    columns, in a few array operations whatever the number of buttons, features and players."""
    shape, flat = buttons.shape, analog.reshape(len(STICK_FIELDS), -1)  # one row per stick field
    axes = flat[DIRECTION_AXES]  # (features, values)
    directions = np.where(DIRECTION_HARD, np.abs(axes) >= cfg.stick_hard, DIRECTION_SIGNS * axes >= cfg.stick_deadzone)
    bits = np.array([BUTTON_BITS[name] for name in cfg.buttons], dtype=np.int64)[:, None]
    pressed = (buttons.reshape(1, -1).astype(np.int64) & bits) != 0
    return pressed.reshape(-1, *shape), directions.reshape(-1, *shape)


def player_float_features(raw: dict[str, np.ndarray], cfg: EncodingConfig) -> dict[str, np.ndarray]:
    """Every per-player float field of the layout, scaled (`FIELD_SCALES`), from one player's parsed arrays. Binary
    fields are bool arrays (stored as 0.0 / 1.0), so `encode_game` knows which columns hold only 0 and 1."""
    flags = raw["state_flags"]
    in_hitstun = _flag(flags, STATE_FLAG_BITS["hit_stun"])
    game_values = {
        **{name: raw[name] for name in ("percent", "x", "y", "shield", "state_age", "hitlag", "stocks")},
        **{name: raw[name] for name in VELOCITY_FIELDS},
        "hitstun": np.where(in_hitstun, np.maximum(raw["misc_as"], 0.0), 0.0),
        "combo_count": raw["combo_count"],
    }
    out = {name: value * getattr(cfg, FIELD_SCALES[name]) for name, value in game_values.items()}
    out |= {
        "facing": raw["direction"] > 0,
        "on_ground": raw["airborne"] == 0,
        "invulnerable": raw["hurtbox_state"] != 0,
    }
    for name in cfg.state_flags:
        out[f"flag_{name}"] = _flag(flags, STATE_FLAG_BITS[name])
    analog = {"main_x": raw["joystick_x"], "main_y": raw["joystick_y"], "c_x": raw["cstick_x"], "c_y": raw["cstick_y"]}
    analog["trigger"] = raw["trigger"]
    pressed, directions = controller_flags(np.stack([analog[name] for name in STICK_FIELDS]), raw["buttons"], cfg)
    binary_names = controller_fields(cfg)[len(STICK_FIELDS) :]
    return out | analog | dict(zip(binary_names, [*pressed, *directions], strict=True))


def player_int_features(raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every per-player categorical field of the layout as raw ids (before vocabulary clamping)."""
    ground = raw["ground"].astype(np.int64)
    return {
        "action": raw["state"],
        "jumps": raw["jumps"],
        "character": raw["character"],
        "l_cancel": raw["l_cancel"],
        "hurtbox": raw["hurtbox_state"],
        "ground": np.where(ground == AIRBORNE_GROUND, 0, ground + 1),
        "last_attack": raw["last_attack_landed"],
    }


def encode_columns(game: ParsedGame, cfg: EncodingConfig, layout: Layout | None = None) -> EncodedColumns:
    """Encode both players' frames into the layout's columns, sanitising and counting bad values.

    Each column is filled as one contiguous row, where writes, the non-finite check and the moments are cheap;
    `encode_game` (or the store, while writing a shard) transposes them into (frames, columns) order."""
    layout = layout or Layout(cfg)
    n = game.meta.num_frames
    float_columns = np.empty((layout.num_floats, n), dtype=np.float32)
    binary_ones: dict[int, int] = {}
    int_columns = np.empty((layout.num_ints, n), dtype=np.int16)
    stats = EncodeStats()
    per_player_ints = []
    for player in range(NUM_PLAYERS):
        raw = game.players[player]
        features = player_float_features(raw, cfg)
        if player == 0 and set(features) != set(layout_fields := layout.player_float_fields):
            raise AssertionError(f"encoder fields {sorted(features)} != layout fields {sorted(layout_fields)}")
        for name, values in features.items():
            index = layout.player_float_index(player, name)
            float_columns[index] = values
            if values.dtype == np.bool_:
                binary_ones[index] = np.count_nonzero(values)
        per_player_ints.append(player_int_features(raw))
    float_moments = column_moments(float_columns, binary_ones)
    # A float64 sum of float32 values is finite exactly when every value is, so the sums find the columns to
    # repair without another pass over the frames.
    repair = np.flatnonzero(~np.isfinite(float_moments.sum))
    for col in repair:
        bad = ~np.isfinite(float_columns[col])
        stats.nonfinite[layout.float_columns[col].name] += int(bad.sum())
        float_columns[col, bad] = 0.0
    if len(repair):
        float_moments = column_moments(float_columns, binary_ones)
    for column in layout.int_columns:
        if column.field == STAGE_FIELD:
            ids = np.full(n, game.meta.stage, dtype=np.int64)
        else:
            ids = per_player_ints[column.player][column.field]
        vocab = column.vocab  # <= INT16_IDS, checked by EncodingConfig
        out_of_vocab = (ids < 0) | (ids >= vocab)
        if out_of_vocab.any():
            stats.clamped[column.name] += int(out_of_vocab.sum())
            ids = np.clip(ids.astype(np.int64), 0, vocab - 1)
        int_columns[column.index] = ids
    return EncodedColumns(
        floats=float_columns,
        ints=int_columns,
        stats=stats,
        float_moments=float_moments,
        int_moments=column_moments(int_columns),
    )


def encode_game(game: ParsedGame, cfg: EncodingConfig, layout: Layout | None = None) -> EncodedGame:
    """Encode both players' frames into the layout's columns, sanitising and counting bad values."""
    columns = encode_columns(game, cfg, layout)
    return EncodedGame(
        floats=np.ascontiguousarray(columns.floats.T), ints=np.ascontiguousarray(columns.ints.T), stats=columns.stats
    )
