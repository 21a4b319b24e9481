"""Merging stores (`melee-wm merge`): halves of the sample replays merge into the one-shot build of all six;
duplicates are dropped once; different configs or filters are refused; an existing output is extended."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from melee_wm.cli import main as cli_main
from melee_wm.data.merge import merge_stores
from melee_wm.data.pipeline import StoreFilters
from melee_wm.data.store import StoreConfigError, open_store
from melee_wm.data.store_writer import build_store
from melee_wm.encoding.config import EncodingConfig

SHARD_FRAMES = 8000  # as the sample_store fixture (tests/conftest.py), so shards line up too
VOLATILE = ("created", "updated", "column_stats")  # compared apart (time stamps; float stats with a tolerance)


def _build(files, out, cfg=None, filters=None):
    return build_store(files, out, cfg or EncodingConfig(), filters, shard_frames=SHARD_FRAMES, progress=False)


@pytest.fixture(scope="module")
def halves(replay_dir, tmp_path_factory):
    """Stores of the first three and the last three sample replays (sorted, as a folder build orders them)."""
    files = sorted(replay_dir.resolve().glob("*.slp"))
    assert len(files) == 6
    root = tmp_path_factory.mktemp("halves")
    return _build(files[:3], root / "a"), _build(files[3:], root / "b")


def _placed_elsewhere(manifest: dict) -> dict:
    """The manifest without where games lie (shards, and each row's shard and offset)."""
    games = [{k: v for k, v in g.items() if k not in ("shard", "offset")} for g in manifest["games"]]
    counts = {k: v for k, v in manifest["counts"].items() if k != "shards"}
    return {**manifest, "games": games, "counts": counts, "shards": None}


def assert_same_store(merged, expected, same_shards=True):
    """Same manifest (games, order, counts, config, records, and shards unless `same_shards` is False), column
    stats to float tolerance, and the same arrays for every game (matched by md5)."""
    strip = lambda m: {k: v for k, v in m.items() if k not in VOLATILE}  # noqa: E731
    if same_shards:
        assert strip(merged.manifest) == strip(expected.manifest)
    else:
        assert _placed_elsewhere(strip(merged.manifest)) == _placed_elsewhere(strip(expected.manifest))
    for name, stats in expected.manifest["column_stats"].items():
        got = merged.manifest["column_stats"][name]
        for key, value in stats.items():
            assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (name, key)
    by_md5 = {row.md5: i for i, row in enumerate(merged.games)}
    for index, row in enumerate(expected.games):
        for got, want in zip(merged.game(by_md5[row.md5]), expected.game(index), strict=True):
            np.testing.assert_array_equal(got, want)
    if not same_shards:
        return
    assert len(merged.shards) == len(expected.shards)
    for a, b in zip(merged.shards, expected.shards, strict=True):
        np.testing.assert_array_equal(a.game_offsets, b.game_offsets)


def test_merging_halves_equals_a_one_shot_build(halves, sample_store, tmp_path):
    a, b = halves
    merged = merge_stores([a.path, b.path], tmp_path / "merged", shard_frames=SHARD_FRAMES, progress=False)
    assert merged.manifest["complete"] is True
    assert [g.md5 for g in merged.games] == [g.md5 for g in sample_store.games]
    assert_same_store(merged, sample_store)
    assert_same_store(open_store(tmp_path / "merged"), sample_store)  # what is on disk, reopened


def test_merge_extends_an_existing_store_and_reruns_are_no_ops(halves, sample_store, tmp_path):
    """Merging A, then A and B into the same folder, gives the full store's games (an interrupted merge
    resumes); the shards differ, since A's last shard was closed before B's games came."""
    a, b = halves
    out = tmp_path / "merged"
    merge_stores([a.path], out, shard_frames=SHARD_FRAMES, progress=False)
    merge_stores([a.path, b.path], out, shard_frames=SHARD_FRAMES, progress=False)
    extended = open_store(out)
    assert_same_store(extended, sample_store, same_shards=False)
    again = merge_stores([a.path, b.path], out, shard_frames=SHARD_FRAMES, progress=False)
    assert again.manifest["games"] == extended.manifest["games"]
    assert again.manifest["counts"] == extended.manifest["counts"]


def test_a_duplicate_game_is_dropped_once(halves, replay_dir, tmp_path):
    a, _ = halves
    copied = tmp_path / "copies"
    copied.mkdir()
    original = a.games[1]
    shutil.copyfile(original.path, copied / "renamed_copy.slp")
    shutil.copyfile(a.games[0].path, copied / "another_copy.slp")
    c = _build([copied], tmp_path / "c")
    merged = merge_stores([a.path, c.path], tmp_path / "merged", progress=False)
    md5s = [g.md5 for g in merged.games]
    assert md5s == [g.md5 for g in a.games]  # nothing added, each game once
    assert len(set(md5s)) == len(md5s)
    dupes = {r["path"].rsplit("/", 1)[1]: r["md5"] for r in merged.manifest["duplicates"]}
    assert dupes == {"renamed_copy.slp": original.md5, "another_copy.slp": a.games[0].md5}
    assert merged.manifest["counts"]["duplicates"] == 2
    assert merged.manifest["counts"]["games"] == a.num_games


def test_a_different_encoding_config_is_refused_naming_the_field(halves, replay_dir, tmp_path):
    a, _ = halves
    other = _build([a.games[0].path], tmp_path / "other", cfg=EncodingConfig(position_scale=0.02))
    with pytest.raises(StoreConfigError, match="position_scale") as err:
        merge_stores([a.path, other.path], tmp_path / "merged", progress=False)
    assert str(other.path) in str(err.value)
    assert not (tmp_path / "merged").exists()  # refused before anything is written


def test_different_filters_are_refused_naming_the_field(halves, tmp_path):
    a, _ = halves
    other = _build([a.games[0].path], tmp_path / "other", filters=StoreFilters(min_frames=10))
    with pytest.raises(StoreConfigError, match="min_frames"):
        merge_stores([a.path, other.path], tmp_path / "merged", progress=False)


def test_a_missing_source_is_a_file_not_found_error_naming_it(halves, tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        merge_stores([halves[0].path, missing], tmp_path / "merged", progress=False)
    with pytest.raises(ValueError, match="also a source"):
        merge_stores([halves[0].path], halves[0].path, progress=False)


def test_cli_merge(halves, sample_store, tmp_path, capsys):
    a, b = halves
    out = tmp_path / "merged"
    argv = ["merge", str(a.path), str(b.path), "--out", str(out), "--shard-frames", str(SHARD_FRAMES)]
    assert cli_main(argv) == 0
    assert_same_store(open_store(out), sample_store)
    assert cli_main(["merge", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 1
    assert str(tmp_path / "nope") in capsys.readouterr().err
