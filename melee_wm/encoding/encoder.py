"""Turn a `ParsedGame` into the float32 / int16 column arrays described by the `Layout`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from melee_wm.encoding.config import BUTTON_BITS, STATE_FLAG_BITS, EncodingConfig
from melee_wm.encoding.layout import NUM_PLAYERS, STAGE_FIELD, STICK_THRESHOLD_FEATURES, Layout
from melee_wm.replay.parse import AIRBORNE_GROUND, ParsedGame

INT16_MAX = np.iinfo(np.int16).max


@dataclass
class EncodeStats:
    """Per-column counts of repaired values: non-finite floats set to 0, out-of-vocabulary ids clamped."""

    nonfinite: Counter = field(default_factory=Counter)
    clamped: Counter = field(default_factory=Counter)

    def add(self, other: EncodeStats) -> None:
        self.nonfinite.update(other.nonfinite)
        self.clamped.update(other.clamped)


@dataclass
class EncodedGame:
    """floats: (num_frames, layout.num_floats) float32; ints: (num_frames, layout.num_ints) int16."""

    floats: np.ndarray
    ints: np.ndarray
    stats: EncodeStats


def _flag(word: np.ndarray, bit: int) -> np.ndarray:
    return ((word >> np.uint64(bit)) & np.uint64(1)).astype(np.float32)


def player_float_features(raw: dict[str, np.ndarray], cfg: EncodingConfig) -> dict[str, np.ndarray]:
    """Every per-player float field of the layout, scaled, from one player's parsed arrays."""
    flags = raw["state_flags"]
    in_hitstun = _flag(flags, STATE_FLAG_BITS["hit_stun"]) > 0
    hitstun = np.where(in_hitstun, np.maximum(raw["misc_as"], 0.0), 0.0)
    sticks = {"main_x": raw["joystick_x"], "main_y": raw["joystick_y"], "c_x": raw["cstick_x"], "c_y": raw["cstick_y"]}
    out = {
        "percent": raw["percent"] * cfg.percent_scale,
        "x": raw["x"] * cfg.position_scale,
        "y": raw["y"] * cfg.position_scale,
        "shield": raw["shield"] * cfg.shield_scale,
        "state_age": raw["state_age"] * cfg.state_age_scale,
        "hitlag": raw["hitlag"] * cfg.hitlag_scale,
        "hitstun": hitstun * cfg.hitstun_scale,
        "stocks": raw["stocks"] * cfg.stocks_scale,
        "combo_count": raw["combo_count"] * cfg.combo_count_scale,
        "facing": (raw["direction"] > 0).astype(np.float32),
        "on_ground": (raw["airborne"] == 0).astype(np.float32),
        "invulnerable": (raw["hurtbox_state"] != 0).astype(np.float32),
        **sticks,
        "trigger": raw["trigger"],
    }
    for name in ("vel_self_x_air", "vel_self_y", "vel_knockback_x", "vel_knockback_y", "vel_self_x_ground"):
        out[name] = raw[name] * cfg.velocity_scale
    for name in cfg.state_flags:
        out[f"flag_{name}"] = _flag(flags, STATE_FLAG_BITS[name])
    for name in cfg.buttons:
        out[f"button_{name}"] = ((raw["buttons"] & BUTTON_BITS[name]) != 0).astype(np.float32)
    for name, axis, sign in STICK_THRESHOLD_FEATURES:
        value = sticks[axis]
        if sign == 0:
            out[name] = (np.abs(value) >= cfg.stick_hard).astype(np.float32)
        else:
            out[name] = (sign * value >= cfg.stick_deadzone).astype(np.float32)
    return out


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


def encode_game(game: ParsedGame, cfg: EncodingConfig, layout: Layout | None = None) -> EncodedGame:
    """Encode both players' frames into the layout's columns, sanitising and counting bad values."""
    layout = layout or Layout(cfg)
    n = game.meta.num_frames
    floats = np.empty((n, layout.num_floats), dtype=np.float32)
    ints = np.empty((n, layout.num_ints), dtype=np.int16)
    stats = EncodeStats()
    per_player_ints = []
    for player in range(NUM_PLAYERS):
        raw = game.players[player]
        features = player_float_features(raw, cfg)
        if player == 0 and set(features) != set(layout_fields := layout.player_float_fields):
            raise AssertionError(f"encoder fields {sorted(features)} != layout fields {sorted(layout_fields)}")
        for name, values in features.items():
            floats[:, layout.player_float_index(player, name)] = values
        per_player_ints.append(player_int_features(raw))
    bad = ~np.isfinite(floats)
    if bad.any():
        for col in np.flatnonzero(bad.any(axis=0)):
            stats.nonfinite[layout.float_columns[col].name] += int(bad[:, col].sum())
        floats[bad] = 0.0
    for column in layout.int_columns:
        if column.field == STAGE_FIELD:
            ids = np.full(n, game.meta.stage, dtype=np.int64)
        else:
            ids = per_player_ints[column.player][column.field].astype(np.int64)
        vocab = min(column.vocab, INT16_MAX + 1)
        out_of_vocab = (ids < 0) | (ids >= vocab)
        if out_of_vocab.any():
            stats.clamped[column.name] += int(out_of_vocab.sum())
            ids = np.clip(ids, 0, vocab - 1)
        ints[:, column.index] = ids
    return EncodedGame(floats=floats, ints=ints, stats=stats)
