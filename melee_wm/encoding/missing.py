"""Which layout columns carry a default instead of data when a replay's format lacks a parsed field.

`melee_wm.replay.parse` fills each field an old Slippi format lacks with a default from `FIELD_DEFAULTS` and
names it in the game's `missing_fields`. Those columns are constant within the game, so they hold no data and
must be masked out of its losses and metrics (README.md, "Training"). `MISSING_FIELD_COLUMNS` records, as data,
which per-player layout fields each parsed field feeds in `melee_wm.encoding.encoder`; `missing_groups` partitions
the columns a format can lack into groups that always lack data together (the model's missing-field indicators).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from melee_wm.encoding.config import STATE_FLAG_BITS
from melee_wm.encoding.layout import NUM_PLAYERS, VELOCITY_FIELDS, Layout

# Every `flag_<name>` binary field a config may select (the layout holds those in `EncodingConfig.state_flags`).
ALL_FLAG_FIELDS = tuple(f"flag_{name}" for name in STATE_FLAG_BITS)

# Parsed field -> the per-player layout fields (float or int) computed from it by the encoder.
MISSING_FIELD_COLUMNS: dict[str, tuple[str, ...]] = {
    "state_age": ("state_age",),
    "state_flags": (*ALL_FLAG_FIELDS, "hitstun"),  # hitstun = misc_as while the hit_stun flag is set
    "misc_as": ("hitstun",),
    "airborne": ("on_ground",),
    "ground": ("ground",),
    "jumps": ("jumps",),
    "l_cancel": ("l_cancel",),
    "hurtbox_state": ("hurtbox", "invulnerable"),  # invulnerable = hurtbox_state != 0
    **{name: (name,) for name in VELOCITY_FIELDS},  # vel_* parsed fields keep their names
    "hitlag": ("hitlag",),
}


def invalid_columns(layout: Layout, missing_fields: Iterable[str]) -> tuple[Tensor, Tensor]:
    """Columns of both players that hold defaults in a game whose replay lacks `missing_fields`.

    Returns (float_invalid (layout.num_floats,) bool, int_invalid (layout.num_ints,) bool). A flag field the
    layout's config does not select is skipped; any other name outside the layout, or a parsed field with no
    entry in `MISSING_FIELD_COLUMNS`, is a ValueError.
    """
    float_invalid = torch.zeros(layout.num_floats, dtype=torch.bool)
    int_invalid = torch.zeros(layout.num_ints, dtype=torch.bool)
    float_fields, int_fields = set(layout.player_float_fields), set(layout.int_fields)
    for parsed in missing_fields:
        if parsed not in MISSING_FIELD_COLUMNS:
            raise ValueError(
                f"invalid_columns: unknown missing field {parsed!r}; known fields are {sorted(MISSING_FIELD_COLUMNS)}"
            )
        for name in MISSING_FIELD_COLUMNS[parsed]:
            if name in float_fields:
                for p in range(NUM_PLAYERS):
                    float_invalid[layout.player_float_index(p, name)] = True
            elif name in int_fields:
                int_invalid[layout.int_slice(name)] = True
            elif name not in ALL_FLAG_FIELDS:
                raise ValueError(f"invalid_columns: {parsed!r} maps to {name!r}, which is no field of the layout")
    return float_invalid, int_invalid


@dataclass(frozen=True)
class MissingGroup:
    """Layout columns that hold data or defaults together: every per-player field fed by the same set of parsed
    fields (`sources`), for both players. float_columns / int_columns: their indices in the layout."""

    sources: tuple[str, ...]
    float_columns: tuple[int, ...]
    int_columns: tuple[int, ...]

    @property
    def name(self) -> str:
        """The parsed fields whose absence empties the group, e.g. `hurtbox_state` or `misc_as+state_flags`."""
        return "+".join(self.sources)


def missing_groups(layout: Layout) -> tuple[MissingGroup, ...]:
    """The columns of `layout` that some replay format can lack, grouped by the parsed fields that feed them.

    A column holds defaults exactly when one of its sources is missing (`invalid_columns`), so the columns of one
    group are always valid or invalid together and any column of it tells the group's state. Grouping by the set
    of sources, not by parsed field, keeps that exact where a column has two sources (`hitstun`: `state_flags`
    and `misc_as`). Groups come in layout column order (floats, then ints); a parsed field whose columns the
    layout does not hold (unselected flags) adds nothing.
    """
    sources: dict[str, tuple[str, ...]] = {}
    for parsed, names in MISSING_FIELD_COLUMNS.items():
        for name in names:
            sources[name] = tuple(sorted((*sources.get(name, ()), parsed)))
    groups: dict[tuple[str, ...], tuple[list[int], list[int]]] = {}  # sources -> (float, int) column indices
    for kind, columns in enumerate((layout.float_columns, layout.int_columns)):
        for column in columns:
            if column.player is not None and column.field in sources:
                groups.setdefault(sources[column.field], ([], []))[kind].append(column.index)
    return tuple(MissingGroup(key, tuple(f), tuple(i)) for key, (f, i) in groups.items())
