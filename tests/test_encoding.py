"""Encoding: the layout, config hashing/diffs/validation, and encoded values checked against parsed ones."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest

from melee_wm.encoding import encoder
from melee_wm.encoding.config import (
    BUTTON_BITS,
    ENCODER_VERSION,
    STATE_FLAG_BITS,
    EncodingConfig,
    config_diff,
    format_config_diff,
    load_encoding_config,
)
from melee_wm.encoding.encoder import column_moments, encode_columns, encode_game
from melee_wm.encoding.layout import NUM_PLAYERS, Layout
from melee_wm.paths import config_dir
from melee_wm.replay.parse import AIRBORNE_GROUND, parse_replay

MODERN = "peppi-py-0.8.1__Game_20230702T014451.slp"  # 3.15.0: every field present


@pytest.fixture(scope="module")
def modern(replay_dir):
    return parse_replay(replay_dir / MODERN)


def test_layout_names_and_slices():
    cfg = EncodingConfig()
    layout = Layout(cfg)
    covered = []
    for group in layout.float_groups:
        sl = layout.float_slice(group)
        fields = layout.float_fields(group)
        assert sl.stop - sl.start == NUM_PLAYERS * len(fields)
        names = layout.float_names[sl]
        assert names == [f"p{p}.{f}" for p in range(NUM_PLAYERS) for f in fields]
        covered += range(sl.start, sl.stop)
    assert covered == list(range(layout.num_floats))
    assert layout.float_names[layout.float_index("p1.x")] == "p1.x"
    assert [f"button_{b}" for b in cfg.buttons] == [f for f in layout.float_fields("controller") if "button" in f]
    assert layout.int_names[-1] == "stage"
    assert layout.int_names[layout.int_slice("action")] == ["p0.action", "p1.action"]
    assert layout.int_vocab("action") == cfg.action_vocab
    with pytest.raises(KeyError, match=r"p2\.x"):
        layout.float_index("p2.x")
    smaller = Layout(EncodingConfig(buttons=["a"]))
    assert smaller.num_floats == layout.num_floats - NUM_PLAYERS * (len(cfg.buttons) - 1)


def test_config_hash_and_diff():
    a, b = EncodingConfig(), EncodingConfig()
    assert a.config_hash() == b.config_hash()
    assert config_diff(a, b) == {}
    c = EncodingConfig(position_scale=0.02, buttons=["a", "b"])
    assert c.config_hash() != a.config_hash()
    diff = config_diff(a, c)
    assert set(diff) == {"position_scale", "buttons"}
    assert diff["position_scale"] == (0.01, 0.02)
    text = format_config_diff(diff, "run", "store")
    assert "position_scale: run=0.01 store=0.02" in text
    assert EncodingConfig.from_dict(c.to_dict()) == c


def test_unknown_or_bad_config_keys_are_errors(tmp_path):
    with pytest.raises(ValueError, match="bogus"):
        EncodingConfig.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="jump"):
        EncodingConfig(buttons=["jump"])
    with pytest.raises(ValueError, match="vocab"):
        EncodingConfig(action_vocab=1)
    with pytest.raises(ValueError, match="int16"):
        EncodingConfig(ground_vocab=40_000)
    with pytest.raises(ValueError, match="version"):
        EncodingConfig(version=ENCODER_VERSION + 1)
    with pytest.raises(ValueError, match="bogus"):
        load_encoding_config(None, ["bogus=1"])
    with pytest.raises(ValueError, match="action_vocab"):
        load_encoding_config(None, ["action_vocab=many"])
    yaml = tmp_path / "enc.yaml"
    yaml.write_text("position_scale: 0.5\npositon_scale: 0.5\n")
    with pytest.raises(ValueError, match="positon_scale"):
        load_encoding_config(yaml)
    yaml.write_text("position_scale: 0.5\nbuttons: [a, z]\n")
    cfg = load_encoding_config(yaml, ["action_vocab=500"])
    assert (cfg.position_scale, cfg.buttons, cfg.action_vocab) == (0.5, ["a", "z"], 500)
    assert load_encoding_config() == EncodingConfig()


def test_default_yaml_is_the_schema_defaults():

    default = config_dir() / "encoding" / "default.yaml"
    assert load_encoding_config(default) == EncodingConfig()


def test_nonfinite_and_out_of_vocab_are_repaired_and_counted(modern):
    cfg = EncodingConfig()
    layout = Layout(cfg)
    game = copy.deepcopy(modern)
    p0, p1 = game.players
    p0["x"][10] = np.nan
    p0["x"][11] = np.inf
    p1["percent"][5] = -np.inf
    p1["state"][7] = 60000
    p0["last_attack_landed"][3] = 250
    encoded = encode_game(game, cfg, layout)
    assert np.isfinite(encoded.floats).all()
    assert dict(encoded.stats.nonfinite) == {"p0.x": 2, "p1.percent": 1}
    assert encoded.floats[10, layout.float_index("p0.x")] == 0.0
    assert dict(encoded.stats.clamped) == {"p1.action": 1, "p0.last_attack": 1}
    assert encoded.ints[7, layout.int_index("p1.action")] == cfg.action_vocab - 1
    assert encoded.ints[3, layout.int_index("p0.last_attack")] == cfg.last_attack_vocab - 1
    clean = encode_game(modern, cfg, layout)
    assert not clean.stats.nonfinite and not clean.stats.clamped


def test_encoded_values_match_parsed_fields(modern):
    cfg = EncodingConfig()
    layout = Layout(cfg)
    enc = encode_game(modern, cfg, layout)
    assert enc.floats.dtype == np.float32 and enc.ints.dtype == np.int16
    assert enc.floats.shape == (modern.meta.num_frames, layout.num_floats)
    for p, raw in enumerate(modern.players):
        col = lambda name, p=p: enc.floats[:, layout.float_index(f"p{p}.{name}")]  # noqa: E731
        np.testing.assert_array_equal(col("x"), raw["x"] * np.float32(cfg.position_scale))
        np.testing.assert_array_equal(col("y"), raw["y"] * np.float32(cfg.position_scale))
        a_held = (raw["buttons"] & BUTTON_BITS["a"]) != 0
        assert a_held.any() and (~a_held).any()
        np.testing.assert_array_equal(col("button_a"), a_held.astype(np.float32))
        left = raw["joystick_x"] <= -cfg.stick_deadzone
        assert left.any()
        np.testing.assert_array_equal(col("main_left") == 1, left)
        np.testing.assert_array_equal(col("main_x_hard") == 1, np.abs(raw["joystick_x"]) >= cfg.stick_hard)
        shield = (raw["state_flags"] >> np.uint64(STATE_FLAG_BITS["shield"])) & np.uint64(1)
        assert shield.any()
        np.testing.assert_array_equal(col("flag_shield"), shield.astype(np.float32))
        np.testing.assert_array_equal(col("on_ground") == 1, raw["airborne"] == 0)
        ground = enc.ints[:, layout.int_index(f"p{p}.ground")]
        airborne = raw["ground"] == AIRBORNE_GROUND
        assert airborne.any() and (~airborne).any()
        assert (ground[airborne] == 0).all()
        np.testing.assert_array_equal(ground[~airborne], raw["ground"][~airborne].astype(np.int16) + 1)
        np.testing.assert_array_equal(enc.ints[:, layout.int_index(f"p{p}.action")], raw["state"])
    assert (enc.ints[:, layout.int_index("stage")] == modern.meta.stage).all()


def test_scales_come_from_the_config(modern):
    base = encode_game(modern, EncodingConfig())
    cfg = dataclasses.replace(EncodingConfig(), position_scale=0.5)
    layout = Layout(cfg)
    scaled = encode_game(modern, cfg, layout)
    x = layout.float_index("p0.x")
    np.testing.assert_array_equal(scaled.floats[:, x], modern.players[0]["x"] * np.float32(0.5))
    other = [i for i in range(layout.num_floats) if layout.float_columns[i].field not in ("x", "y")]
    np.testing.assert_array_equal(scaled.floats[:, other], base.floats[:, other])


def test_column_moments_do_not_depend_on_grouping(modern, monkeypatch):
    """A store resumed from its shards recomputes the moments of whole games; each column's must equal the
    encoder's bit for bit, whichever columns share a block, and the integer path must equal float64 sums."""
    cfg = EncodingConfig()
    columns = encode_columns(modern, cfg)
    for values in (columns.floats, columns.ints):
        together = column_moments(values)
        wide = values.astype(np.float64)
        np.testing.assert_allclose(together.sum, wide.sum(axis=1), rtol=1e-12)
        np.testing.assert_allclose(together.sumsq, (wide * wide).sum(axis=1), rtol=1e-12)
        np.testing.assert_array_equal(together.min, wide.min(axis=1))
        np.testing.assert_array_equal(together.max, wide.max(axis=1))
        for block_bytes in (1 << 12, 1 << 16, 1 << 24):  # 1 row, a few rows, every row per block
            monkeypatch.setattr(encoder, "MOMENT_BLOCK_BYTES", block_bytes)
            for start in range(0, len(values), 5):
                alone = column_moments(values[start : start + 3])
                for name in ("sum", "sumsq", "min", "max"):
                    np.testing.assert_array_equal(getattr(alone, name), getattr(together, name)[start : start + 3])
    ints = columns.ints.astype(np.float64)
    np.testing.assert_array_equal(column_moments(columns.ints).sum, ints.sum(axis=1))  # exact: integer sums
