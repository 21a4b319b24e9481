"""`invalid_columns` against the encoder on the real sample replays."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from melee_wm.encoding.config import STATE_FLAG_BITS, EncodingConfig
from melee_wm.encoding.encoder import encode_game
from melee_wm.encoding.layout import Layout
from melee_wm.encoding.missing import MISSING_FIELD_COLUMNS, invalid_columns
from melee_wm.replay.parse import FIELD_DEFAULTS, ParsedGame, parse_replay


@pytest.fixture(scope="module")
def parsed_games(replay_dir) -> list[ParsedGame]:
    return [parse_replay(p) for p in sorted(replay_dir.glob("*.slp"))]


def test_every_defaulted_field_has_a_mapping():
    assert set(MISSING_FIELD_COLUMNS) == set(FIELD_DEFAULTS)
    layout = Layout(EncodingConfig(state_flags=list(STATE_FLAG_BITS)))  # every flag column present
    known = set(layout.player_float_fields) | set(layout.int_fields)
    for parsed, names in MISSING_FIELD_COLUMNS.items():
        assert names and set(names) <= known, (parsed, set(names) - known)


def test_unknown_field_is_an_error():
    with pytest.raises(ValueError, match="unknown missing field 'stocks'"):
        invalid_columns(Layout(EncodingConfig()), ["stocks"])


def test_columns_of_missing_fields_are_constant_in_their_game(parsed_games):
    layout = Layout(EncodingConfig())
    old = [g for g in parsed_games if g.meta.missing_fields]
    assert max(len(g.meta.missing_fields) for g in old) == 13  # the 1.0.0 replay
    for game in old:
        float_invalid, int_invalid = (m.numpy() for m in invalid_columns(layout, game.meta.missing_fields))
        enc = encode_game(game, layout.cfg, layout)
        for values, invalid, names in (
            (enc.floats, float_invalid, layout.float_names),
            (enc.ints, int_invalid, layout.int_names),
        ):
            varying = [names[c] for c in np.flatnonzero(invalid) if (values[:, c] != values[0, c]).any()]
            assert not varying, f"{game.meta.slippi_version}: columns marked invalid vary: {varying}"
        assert float_invalid.any()


def test_mapping_covers_every_column_a_field_feeds(parsed_games):
    """Reset one parsed field of a full-format game to its default: every column that changes is mapped."""
    cfg = EncodingConfig(state_flags=list(STATE_FLAG_BITS))
    layout = Layout(cfg)
    game = max((g for g in parsed_games if not g.meta.missing_fields), key=lambda g: g.meta.num_frames)
    base = encode_game(game, cfg, layout)
    for parsed, default in FIELD_DEFAULTS.items():
        players = tuple({**raw, parsed: np.full_like(raw[parsed], default)} for raw in game.players)
        changed = encode_game(dataclasses.replace(game, players=players), cfg, layout)
        float_invalid, int_invalid = (m.numpy() for m in invalid_columns(layout, [parsed]))
        moved_f = (changed.floats != base.floats).any(0)
        moved_i = (changed.ints != base.ints).any(0)
        assert moved_f.any() or moved_i.any(), f"{parsed}: the default equals the data; the check has no teeth"
        unmapped = [layout.float_names[c] for c in np.flatnonzero(moved_f & ~float_invalid)]
        unmapped += [layout.int_names[c] for c in np.flatnonzero(moved_i & ~int_invalid)]
        assert not unmapped, f"{parsed} feeds columns MISSING_FIELD_COLUMNS does not name: {unmapped}"
