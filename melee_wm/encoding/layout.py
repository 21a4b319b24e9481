"""Column layout derived from an `EncodingConfig`: the only place that knows where a column lives.

Float columns are ordered group-major, then player, then field, so every group covers one contiguous slice
holding both players (`floats[..., layout.float_slice("continuous")]` has shape (..., 2 * n_fields), player 0
first). Int columns are ordered field-major, then player, with the per-game `stage` last.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from melee_wm.constants import NUM_PLAYERS  # also imported from here by the layout's users
from melee_wm.encoding.config import EncodingConfig


class Target(str, Enum):
    """How a column is predicted for the next frame."""

    DELTA = "delta"  # next - previous, regression
    ABSOLUTE = "absolute"  # next value, regression
    BINARY = "binary"  # next value in {0, 1}, logistic
    CATEGORICAL = "categorical"  # next id, softmax over the vocabulary


# Float groups in storage order: group -> (per-player field names, target kind or None for inputs).
CONTINUOUS_FIELDS = ("percent", "x", "y", "shield")
VELOCITY_FIELDS = ("vel_self_x_air", "vel_self_y", "vel_knockback_x", "vel_knockback_y", "vel_self_x_ground")
DYNAMICS_FIELDS = ("state_age", "hitlag", "hitstun", "stocks", "combo_count")
BASE_BINARY_FIELDS = ("facing", "on_ground", "invulnerable")
STICK_FIELDS = ("main_x", "main_y", "c_x", "c_y", "trigger")
# Deadzone-aware direction features on the centred sticks: (name, stick axis, sign; 0 = hard on either side).
STICK_THRESHOLD_FEATURES = (
    ("main_left", "main_x", -1),
    ("main_right", "main_x", 1),
    ("main_down", "main_y", -1),
    ("main_up", "main_y", 1),
    ("main_x_hard", "main_x", 0),
    ("main_y_hard", "main_y", 0),
    ("c_left", "c_x", -1),
    ("c_right", "c_x", 1),
    ("c_down", "c_y", -1),
    ("c_up", "c_y", 1),
)

# Categorical per-player int fields: name -> (EncodingConfig vocab attribute, predicted?).
INT_FIELDS: dict[str, tuple[str, bool]] = {
    "action": ("action_vocab", True),
    "jumps": ("jumps_vocab", True),
    "character": ("character_vocab", False),
    "l_cancel": ("l_cancel_vocab", True),
    "hurtbox": ("hurtbox_vocab", True),
    "ground": ("ground_vocab", True),
    "last_attack": ("last_attack_vocab", True),
}
STAGE_FIELD = "stage"
# Per-player float field -> the `EncodingConfig` attribute its game value is multiplied by (encoded = value * scale).
# Every other float field (binary flags, controller inputs) is stored as it is.
FIELD_SCALES: dict[str, str] = {
    "percent": "percent_scale",
    "x": "position_scale",
    "y": "position_scale",
    "shield": "shield_scale",
    **{name: "velocity_scale" for name in VELOCITY_FIELDS},
    "state_age": "state_age_scale",
    "hitlag": "hitlag_scale",
    "hitstun": "hitstun_scale",
    "stocks": "stocks_scale",
    "combo_count": "combo_count_scale",
}
POSITION_GROUP = "continuous"  # the float group that holds each player's x and y
POSITION_FIELDS = ("x", "y")


@dataclass(frozen=True)
class Column:
    """One stored column: its name (`p0.x`, `stage`), field, player (None for per-game columns) and role."""

    name: str
    field: str
    player: int | None
    group: str
    index: int
    target: Target | None
    vocab: int | None = None


def controller_fields(cfg: EncodingConfig) -> tuple[str, ...]:
    """Per-player controller fields in column order: the sticks and the trigger, the buttons, the direction
    features."""
    return STICK_FIELDS + tuple(f"button_{b}" for b in cfg.buttons) + tuple(n for n, _, _ in STICK_THRESHOLD_FEATURES)


class Layout:
    """Names, positions and target kinds of every float and int column for one `EncodingConfig`."""

    def __init__(self, cfg: EncodingConfig) -> None:
        self.cfg = cfg
        binary = BASE_BINARY_FIELDS + tuple(f"flag_{f}" for f in cfg.state_flags)
        controller = controller_fields(cfg)
        self.float_groups_fields: dict[str, tuple[tuple[str, ...], Target | None]] = {
            POSITION_GROUP: (CONTINUOUS_FIELDS, Target.DELTA),
            "velocity": (VELOCITY_FIELDS, Target.DELTA),
            "dynamics": (DYNAMICS_FIELDS, Target.ABSOLUTE),
            "binary": (binary, Target.BINARY),
            "controller": (controller, None),
        }
        floats: list[Column] = []
        self._float_slices: dict[str, slice] = {}
        for group, (fields, target) in self.float_groups_fields.items():
            start = len(floats)
            for player in range(NUM_PLAYERS):
                for name in fields:
                    floats.append(Column(f"p{player}.{name}", name, player, group, len(floats), target))
            self._float_slices[group] = slice(start, len(floats))
        ints: list[Column] = []
        self._int_slices: dict[str, slice] = {}
        for name, (vocab_attr, predicted) in INT_FIELDS.items():
            start = len(ints)
            vocab = getattr(cfg, vocab_attr)
            target = Target.CATEGORICAL if predicted else None
            for player in range(NUM_PLAYERS):
                ints.append(Column(f"p{player}.{name}", name, player, "categorical", len(ints), target, vocab))
            self._int_slices[name] = slice(start, len(ints))
        self._int_slices[STAGE_FIELD] = slice(len(ints), len(ints) + 1)
        ints.append(Column(STAGE_FIELD, STAGE_FIELD, None, "categorical", len(ints), None, cfg.stage_vocab))
        self.float_columns: tuple[Column, ...] = tuple(floats)
        self.int_columns: tuple[Column, ...] = tuple(ints)
        self._float_index = {c.name: c.index for c in floats}
        self._int_index = {c.name: c.index for c in ints}
        self.position_group = POSITION_GROUP

    @property
    def num_floats(self) -> int:
        return len(self.float_columns)

    @property
    def num_ints(self) -> int:
        return len(self.int_columns)

    @property
    def float_names(self) -> list[str]:
        return [c.name for c in self.float_columns]

    @property
    def int_names(self) -> list[str]:
        return [c.name for c in self.int_columns]

    def float_index(self, name: str) -> int:
        """Position of float column `name` (e.g. `p1.x`)."""
        try:
            return self._float_index[name]
        except KeyError:
            raise KeyError(f"no float column {name!r}; columns are {self.float_names}") from None

    def int_index(self, name: str) -> int:
        """Position of int column `name` (e.g. `p0.action`, `stage`)."""
        try:
            return self._int_index[name]
        except KeyError:
            raise KeyError(f"no int column {name!r}; columns are {self.int_names}") from None

    def float_slice(self, group: str) -> slice:
        """Contiguous float columns of `group` for both players (player 0's fields first)."""
        try:
            return self._float_slices[group]
        except KeyError:
            raise KeyError(f"no float group {group!r}; groups are {list(self._float_slices)}") from None

    def float_width(self, group: str) -> int:
        """Number of float columns of `group` (both players)."""
        cols = self.float_slice(group)
        return cols.stop - cols.start

    def float_fields(self, group: str) -> tuple[str, ...]:
        """Per-player field names of a float group, in column order."""
        return self.float_groups_fields[group][0]

    def float_target(self, group: str) -> Target | None:
        return self.float_groups_fields[group][1]

    @property
    def float_groups(self) -> list[str]:
        return list(self._float_slices)

    @property
    def target_float_groups(self) -> list[str]:
        """Float groups that are predicted (everything but the controller inputs)."""
        return [g for g in self._float_slices if self.float_target(g) is not None]

    @property
    def regression_groups(self) -> list[str]:
        """Target float groups predicted by regression (DELTA and ABSOLUTE), in layout order."""
        return [g for g in self.target_float_groups if self.float_target(g) in (Target.DELTA, Target.ABSOLUTE)]

    @property
    def position_columns(self) -> list[int]:
        """Float columns of x and y of both players, player-major: p0.x, p0.y, p1.x, p1.y."""
        return [self.player_float_index(p, c) for p in range(NUM_PLAYERS) for c in POSITION_FIELDS]

    @property
    def position_offsets(self) -> list[int]:
        """`position_columns` as offsets inside `position_group`'s slice (p0.x, p0.y, p1.x, p1.y)."""
        start = self.float_slice(self.position_group).start
        return [c - start for c in self.position_columns]

    def int_slice(self, field: str) -> slice:
        """Int columns of `field` (both players, or the single `stage` column)."""
        try:
            return self._int_slices[field]
        except KeyError:
            raise KeyError(f"no int field {field!r}; fields are {list(self._int_slices)}") from None

    @property
    def int_fields(self) -> list[str]:
        """Every int field (per-player ones and `stage`), in column order."""
        return list(self._int_slices)

    def int_vocab(self, field: str) -> int:
        return self.int_columns[self._int_slices[field].start].vocab or 0

    @property
    def categorical_targets(self) -> list[str]:
        """Per-player int fields that are predicted, e.g. ['action', 'jumps', ...]."""
        return [f for f, (_, predicted) in INT_FIELDS.items() if predicted]

    @property
    def int_vocabs(self) -> list[int]:
        """Vocabulary of every int column, in column order."""
        return [c.vocab or 0 for c in self.int_columns]

    @property
    def player_float_fields(self) -> list[str]:
        """Every per-player float field name, in column order."""
        return [name for fields, _ in self.float_groups_fields.values() for name in fields]

    def float_scale(self, field: str) -> float:
        """What a per-player float field's game value is multiplied by when encoded (1.0 for unscaled fields)."""
        return float(getattr(self.cfg, FIELD_SCALES[field])) if field in FIELD_SCALES else 1.0

    def player_float_index(self, player: int, field: str) -> int:
        return self.float_index(f"p{player}.{field}")
