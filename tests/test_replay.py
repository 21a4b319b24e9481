"""Parsing real replays: peppi's reference values, rollback dedupe, ports, old formats, privacy."""

# ruff: noqa: E402  (the imports below follow the importorskip of a package a bare GPU machine lacks)

from __future__ import annotations

import numpy as np
import pytest

peppi_py = pytest.importorskip("peppi_py")  # absent on a bare GPU machine, where `pytest -m gpu tests` collects this

from melee_wm.replay.parse import (
    AIRBORNE_GROUND,
    FIELD_DEFAULTS,
    BackgroundMd5,
    file_md5,
    final_frame_indices,
    parse_replay,
)

REFERENCE = "peppi-py-0.8.6__tests_data_game.slp"
ROLLBACK = "peppi-py-0.8.1__Game_20230702T014451.slp"

# file -> (peppi frame rows, unique frames, Slippi version, stage, external characters, end method), as read
# from each replay by peppi-py 0.8.6 (the netplay files hold rollback rows, hence fewer unique frames).
SAMPLE_FACTS = {
    "peppi-py-0.8.6__tests_data_game.slp": (5209, 5209, "1.0.0", 8, (9, 2), 3),
    "peppi-py-0.8.1__game.slp": (16158, 16158, "2.2.0", 31, (20, 2), 2),
    "peppi-py-0.8.0__replays_netplay.slp": (128, 128, "3.7.0", 2, (16, 9), 7),
    "peppi-py-0.8.0__replays_game.slp": (148, 148, "3.13.0", 32, (2, 24), 2),
    "peppi-py-0.8.1__Game_20230702T014451.slp": (6157, 6029, "3.15.0", 3, (0, 9), 2),
    "peppi-py-0.8.1__in.slp": (11530, 11516, "3.15.0", 8, (2, 12), None),
}

VELOCITIES = ["vel_knockback_x", "vel_knockback_y", "vel_self_x_air", "vel_self_x_ground", "vel_self_y"]
MISSING = {
    "1.0.0": sorted(
        ["airborne", "ground", "hitlag", "hurtbox_state", "jumps", "l_cancel", "misc_as", "state_flags", *VELOCITIES]
    ),
    "2.2.0": sorted(["hitlag", *VELOCITIES]),
    "3.7.0": ["hitlag"],
    "3.13.0": [],
    "3.15.0": [],
}


def test_peppi_reference_values(replay_dir):
    # peppi's test reads pre.position at row 1000, which is the post position of frame index 999.
    game = parse_replay(replay_dir / REFERENCE)
    assert game.meta.num_frames == 5209
    assert game.meta.first_frame == -123
    assert game.meta.end_method == 3
    p0, p1 = game.players
    assert p0["x"][999] == np.float32(56.818748474121094)
    assert p0["y"][999] == np.float32(-18.6373291015625)
    assert p1["x"][999] == np.float32(42.195167541503906)
    assert p1["y"][999] == np.float32(9.287015914916992)
    raw = peppi_py.read_slippi(str(replay_dir / REFERENCE))
    assert raw.frames.ports[0].leader.pre.position.x[1000].as_py() == p0["x"][999]


@pytest.mark.parametrize("name", sorted(SAMPLE_FACTS))
def test_sample_metadata_and_rollback_dedupe(replay_dir, name):
    rows, frames, version, stage, characters, end_method = SAMPLE_FACTS[name]
    game = parse_replay(replay_dir / name)
    raw = peppi_py.read_slippi(str(replay_dir / name))
    assert len(raw.frames.id) == rows
    meta = game.meta
    assert (meta.num_frames, meta.slippi_version, meta.stage, meta.characters, meta.end_method) == (
        frames,
        version,
        stage,
        characters,
        end_method,
    )
    assert meta.first_frame == -123
    assert meta.missing_fields == MISSING[version]
    assert len(meta.md5) == 32
    for player in game.players:
        assert all(len(values) == frames for values in player.values())


def test_last_row_of_each_frame_is_kept(replay_dir):
    path = replay_dir / ROLLBACK
    raw = peppi_py.read_slippi(str(path))
    game = parse_replay(path)
    ids = raw.frames.id.to_numpy()
    resent = np.unique(ids[np.r_[False, np.diff(ids) <= 0]])  # ids that appear again after a rollback
    assert len(resent) > 0
    changed = 0
    for port, parsed in zip(raw.frames.ports, game.players, strict=True):
        x = port.leader.post.position.x.to_numpy()
        percent = port.leader.post.percent.to_numpy()
        for fid in resent:
            rows = np.flatnonzero(ids == fid)
            index = fid - game.meta.first_frame
            assert parsed["x"][index] == x[rows[-1]]
            assert parsed["percent"][index] == percent[rows[-1]]
            changed += int(x[rows[0]] != x[rows[-1]])
    assert changed > 0, "no re-sent frame differs from its first row: the test would not tell first from last"


def test_final_frame_indices_rejects_gaps():
    assert final_frame_indices(np.array([-123, -122, -121, -122, -121, -120])).tolist() == [0, 3, 4, 5]
    with pytest.raises(ValueError, match="gaps"):
        final_frame_indices(np.array([-123, -122, -120]))


def test_ports_follow_start_players(replay_dir):
    # P1 Falco (internal 22) vs P3 Fox (internal 1): the second player is port index 2.
    game = parse_replay(replay_dir / "peppi-py-0.8.1__game.slp")
    assert game.meta.ports == (0, 2)
    assert game.players[0]["character"][0] == 22
    assert game.players[1]["character"][0] == 1


def test_old_formats_get_documented_defaults(replay_dir):
    old = parse_replay(replay_dir / REFERENCE)
    for player in old.players:
        for name in old.meta.missing_fields:
            assert (player[name] == FIELD_DEFAULTS[name]).all(), name
        assert (player["ground"] == AIRBORNE_GROUND).all()
        assert player["state_age"].any()  # present since 0.2
    v2 = parse_replay(replay_dir / "peppi-py-0.8.1__game.slp")
    assert "state_flags" not in v2.meta.missing_fields
    assert any(p["state_flags"].any() for p in v2.players)
    assert all((p["hitlag"] == 0).all() and (p["vel_self_y"] == 0).all() for p in v2.players)


def test_cpu_player_recorded(replay_dir):
    assert parse_replay(replay_dir / REFERENCE).meta.cpu_players == (False, True)
    assert parse_replay(replay_dir / ROLLBACK).meta.cpu_players == (False, False)


def _player_identities(path) -> list[str]:
    """Every display name, connect code and console nickname the replay carries (never printed)."""
    game = peppi_py.read_slippi(str(path))
    found = []
    for player in game.start.players:
        if player.netplay is not None:
            found += [player.netplay.name, player.netplay.code]
        found.append(player.name_tag)
    metadata = game.metadata or {}
    found.append(metadata.get("consoleNick"))
    for entry in (metadata.get("players") or {}).values():
        found += list((entry.get("names") or {}).values())
    return [s for s in found if isinstance(s, str) and s.strip()]


def test_no_player_names_or_codes_in_manifest(replay_dir, sample_store):
    identities = [s for name in SAMPLE_FACTS for s in _player_identities(replay_dir / name)]
    assert len(identities) >= 4  # the netplay replays carry names and codes
    data = (sample_store.path / "manifest.json").read_bytes()
    leaked = [i for i, s in enumerate(identities) if s.encode() in data]
    assert leaked == [], f"identities #{leaked} appear in manifest.json"


def test_background_md5_matches_file_md5(replay_dir, tmp_path):
    empty = tmp_path / "empty.slp"
    empty.write_bytes(b"")
    for path in [*sorted(replay_dir.glob("*.slp")), empty]:
        assert BackgroundMd5(path).result() == file_md5(path)
    assert BackgroundMd5(empty).result() == "d41d8cd98f00b204e9800998ecf8427e"  # md5 of no bytes
    with pytest.raises(FileNotFoundError):
        BackgroundMd5(tmp_path / "missing.slp")
