"""The encoding schema: every choice that turns parsed replay fields into model columns.

One `EncodingConfig` is shared by the encoder, the store manifest, the dataset and training, so a store can
only be read with the config it was written with (see `config_diff`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from melee_wm.schema import load_structured

# Bump whenever the encoder's output for a given config changes meaning.
ENCODER_VERSION = 1
INT16_IDS = 1 << 15  # categorical ids are stored as int16: at most this many per vocabulary

# Bit positions of `post.state_flags` read as one 40-bit integer (b0 + b1<<8 + ... + b4<<32); names as in
# py-slippi's StateFlags.
STATE_FLAG_BITS: dict[str, int] = {
    "reflect": 4,
    "untouchable": 10,
    "fast_fall": 11,
    "hit_lag": 13,
    "shield": 23,
    "hit_stun": 25,
    "shield_touch": 26,
    "power_shield": 29,
    "follower": 35,
    "sleep": 36,
    "dead": 38,
    "off_screen": 39,
}

# Logical button bits of `pre.buttons`.
BUTTON_BITS: dict[str, int] = {
    "dpad_left": 0x0001,
    "dpad_right": 0x0002,
    "dpad_down": 0x0004,
    "dpad_up": 0x0008,
    "z": 0x0010,
    "r": 0x0020,
    "l": 0x0040,
    "a": 0x0100,
    "b": 0x0200,
    "x": 0x0400,
    "y": 0x0800,
    "start": 0x1000,
}


@dataclass
class EncodingConfig:
    """How replay fields become float32 and int16 columns. Scales multiply raw game units."""

    version: int = ENCODER_VERSION
    # Continuous scales (encoded = raw * scale).
    position_scale: float = 0.01
    percent_scale: float = 0.01
    shield_scale: float = 1.0 / 60.0
    velocity_scale: float = 0.1
    state_age_scale: float = 0.01
    hitlag_scale: float = 0.1
    hitstun_scale: float = 0.02
    stocks_scale: float = 0.25
    combo_count_scale: float = 0.1
    # Vocabulary sizes of the categorical columns (ids >= vocab are clamped to vocab - 1 and counted).
    action_vocab: int = 400
    jumps_vocab: int = 8
    character_vocab: int = 33
    l_cancel_vocab: int = 3
    hurtbox_vocab: int = 3
    ground_vocab: int = 128  # token 0 = no ground (airborne/unknown), ground id g -> g + 1
    last_attack_vocab: int = 64
    stage_vocab: int = 33
    # Controller features.
    stick_deadzone: float = 0.2875
    stick_hard: float = 0.8  # a stick past this on an axis counts as a hard (smash/dash) input
    buttons: list[str] = field(default_factory=lambda: ["a", "b", "x", "y", "z", "l", "r"])
    state_flags: list[str] = field(
        default_factory=lambda: ["reflect", "fast_fall", "hit_lag", "shield", "hit_stun", "power_shield", "off_screen"]
    )

    def __post_init__(self) -> None:
        if self.version != ENCODER_VERSION:
            raise ValueError(
                f"EncodingConfig.version: this code encodes version {ENCODER_VERSION}, got {self.version} "
                "(a store from another encoder version must be rebuilt)"
            )
        unknown = [b for b in self.buttons if b not in BUTTON_BITS]
        if unknown:
            raise ValueError(f"EncodingConfig.buttons: unknown {unknown}; expected names from {sorted(BUTTON_BITS)}")
        unknown = [f for f in self.state_flags if f not in STATE_FLAG_BITS]
        if unknown:
            raise ValueError(
                f"EncodingConfig.state_flags: unknown {unknown}; expected names from {sorted(STATE_FLAG_BITS)}"
            )
        for name in ("buttons", "state_flags"):
            values = list(getattr(self, name))
            if len(set(values)) != len(values):
                raise ValueError(f"EncodingConfig.{name}: duplicate entries in {values}")
            setattr(self, name, values)
        vocabs = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name.endswith("_vocab")}
        bad = {k: v for k, v in vocabs.items() if not 2 <= v <= INT16_IDS}
        if bad:
            raise ValueError(f"EncodingConfig: vocabulary sizes must be in [2, {INT16_IDS}] (int16 ids), got {bad}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncodingConfig:
        """Inverse of `to_dict`; unknown keys are an error naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"EncodingConfig: unknown keys {unknown}; known keys are {sorted(known)}")
        return cls(**data)

    def config_hash(self) -> str:
        """Stable short hash of the resolved config (what a store is keyed by)."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def config_diff(expected: EncodingConfig | dict, actual: EncodingConfig | dict) -> dict[str, tuple[Any, Any]]:
    """Fields whose values differ, as {field: (expected, actual)}; empty when the configs are equal."""
    a = expected.to_dict() if isinstance(expected, EncodingConfig) else dict(expected)
    b = actual.to_dict() if isinstance(actual, EncodingConfig) else dict(actual)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def format_config_diff(diff: dict[str, tuple[Any, Any]], expected_name: str, actual_name: str) -> str:
    """One line per differing field, for error messages."""
    return "\n".join(f"  {k}: {expected_name}={a!r} {actual_name}={b!r}" for k, (a, b) in diff.items())


def load_encoding_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> EncodingConfig:
    """EncodingConfig from the dataclass defaults, a YAML file merged on top, then `key=value` overrides;
    unknown keys and wrong types are ValueErrors naming them."""
    return load_structured(EncodingConfig, path, overrides)
