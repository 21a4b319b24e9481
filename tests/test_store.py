"""The sharded store: round trip, manifest, bad inputs, config refusal, dedupe, filters, kill-and-resume."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from melee_wm.data.manifest import GameRow
from melee_wm.data.pipeline import StoreFilters
from melee_wm.data.store import MANIFEST, StoreConfigError, StoreError, open_store
from melee_wm.data.store_writer import build_store
from melee_wm.encoding.config import EncodingConfig
from melee_wm.encoding.encoder import encode_game
from melee_wm.encoding.layout import Layout
from melee_wm.replay.parse import parse_replay

TINY = ["peppi-py-0.8.0__replays_game.slp", "peppi-py-0.8.0__replays_netplay.slp"]  # 148 and 128 frames
SHARD_ARRAYS = ("floats", "ints", "game_offsets")


def _build(replays, out, cfg=None, filters=None, **kwargs):
    kwargs.setdefault("progress", False)
    return build_store(replays, out, cfg or EncodingConfig(), filters, **kwargs)


def _copy(replay_dir, names, folder, prefix=""):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(replay_dir / name, folder / f"{prefix}{name}")
    return folder


def _content(store) -> dict:
    """Everything in a manifest that must not depend on how or when the store was built."""
    return {k: v for k, v in store.manifest.items() if k not in ("created", "updated")}


def _assert_same_store(a, b):
    assert _content(a) == _content(b)
    assert len(a.shards) == len(b.shards)
    for sa, sb in zip(a.shards, b.shards, strict=True):
        for name in SHARD_ARRAYS:
            np.testing.assert_array_equal(getattr(sa, name), getattr(sb, name))


def test_round_trip_equals_encode_game(sample_store, replay_dir):
    cfg = sample_store.config
    layout = Layout(cfg)
    paths = [g.path for g in sample_store.games]
    assert paths == [str(p) for p in sorted(replay_dir.resolve().glob("*.slp"))]
    assert len(sample_store.shards) >= 3
    for index, row in enumerate(sample_store.games):
        expected = encode_game(parse_replay(row.path), cfg, layout)
        floats, ints = sample_store.game(index)
        assert isinstance(sample_store.shards[row.shard].floats, np.memmap)
        np.testing.assert_array_equal(floats, expected.floats)
        np.testing.assert_array_equal(ints, expected.ints)


def test_manifest_contents(sample_store):
    m = sample_store.manifest
    layout = Layout(EncodingConfig())
    assert m["complete"] is True
    assert m["encoding_config"] == EncodingConfig().to_dict()
    assert m["config_hash"] == EncodingConfig().config_hash()
    assert (m["float_columns"], m["int_columns"]) == (layout.float_names, layout.int_names)
    assert m["counts"] == {"games": 6, "frames": 39188, "skipped": 0, "duplicates": 0, "shards": len(m["shards"])}
    assert m["filters"] == StoreFilters().to_dict()
    assert m["repairs"] == {"nonfinite": {}, "clamped": {}}
    assert [s["name"] for s in m["shards"]] == [f"shard_{i:05d}" for i in range(len(m["shards"]))]
    assert sum(s["frames"] for s in m["shards"]) == 39188
    assert m["games"] == [row.to_dict() for row in sample_store.games]
    for row in sample_store.games:
        meta = parse_replay(row.path).meta
        assert row.length == meta.num_frames
        assert (row.stage, tuple(row.characters), row.end_method) == (
            meta.stage,
            meta.characters,
            meta.end_method,
        )
        assert (row.slippi_version, row.missing_fields, row.md5) == (
            meta.slippi_version,
            meta.missing_fields,
            meta.md5,
        )
    floats = np.concatenate([s.floats for s in sample_store.shards]).astype(np.float64)
    ints = np.concatenate([s.ints for s in sample_store.shards]).astype(np.float64)
    stats = m["column_stats"]
    for values, names in ((floats, layout.float_names), (ints, layout.int_names)):
        np.testing.assert_allclose([stats[n]["mean"] for n in names], values.mean(0), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose([stats[n]["std"] for n in names], values.std(0), rtol=1e-6, atol=1e-9)
        np.testing.assert_array_equal([stats[n]["min"] for n in names], values.min(0))
        np.testing.assert_array_equal([stats[n]["max"] for n in names], values.max(0))
    on_disk = json.loads((sample_store.path / MANIFEST).read_text())
    assert on_disk == m
    _assert_same_store(sample_store, open_store(sample_store.path))  # what build_store returned = a fresh open


def test_a_game_row_with_missing_or_unknown_keys_is_refused(sample_store, tmp_path):
    """A manifest game row must hold exactly GameRow's keys; the error names the store and the keys."""
    row = sample_store.games[0].to_dict()
    assert GameRow.from_dict(row, sample_store.path) == sample_store.games[0]
    del row["stage"]
    row["player_name"] = "x"
    with pytest.raises(StoreError, match=r"missing keys \['stage'\] and unknown keys \['player_name'\]") as err:
        GameRow.from_dict(row, tmp_path / "store")
    assert str(tmp_path / "store") in str(err.value)
    copy = tmp_path / "copy"
    shutil.copytree(sample_store.path, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["games"][0]["extra"] = 1
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match=r"unknown keys \['extra'\]"):
        open_store(copy)


def test_bad_files_become_skip_records(replay_dir, tmp_path):
    folder = _copy(replay_dir, TINY, tmp_path / "in")
    data = (replay_dir / "peppi-py-0.8.1__game.slp").read_bytes()
    (folder / "truncated.slp").write_bytes(data[: len(data) // 2])
    (folder / "empty.slp").write_bytes(b"")
    (folder / "notes.slp").write_text("these are my notes, not a replay\n")
    store = _build([folder], tmp_path / "store")
    assert sorted(g.path.rsplit("/", 1)[1] for g in store.games) == sorted(TINY)
    reasons = {r["path"].rsplit("/", 1)[1]: r["reason"] for r in store.manifest["skipped"]}
    assert set(reasons) == {"truncated.slp", "empty.slp", "notes.slp"}
    assert reasons["truncated.slp"].startswith("unreadable by peppi: I/O error")
    assert reasons["empty.slp"].startswith("unreadable by peppi")
    assert "invalid data" in reasons["notes.slp"]
    assert store.manifest["counts"]["skipped"] == 3
    every = {str(p) for p in folder.resolve().iterdir()}
    assert {g.path for g in store.games} | {r["path"] for r in store.manifest["skipped"]} == every


def test_missing_path_is_an_error_before_any_work(replay_dir, tmp_path):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        _build([replay_dir / TINY[0], missing], tmp_path / "store")
    assert not (tmp_path / "store").exists()
    with pytest.raises(FileNotFoundError, match="not_a_store"):
        open_store(tmp_path / "not_a_store")


def test_config_mismatch_is_refused_and_overwrite_replaces(replay_dir, tmp_path):
    folder = _copy(replay_dir, TINY, tmp_path / "in")
    out = tmp_path / "store"
    _build([folder], out, shard_frames=100)
    assert len(list(out.glob("shard_*"))) == 2
    other = EncodingConfig(position_scale=0.02)
    with pytest.raises(StoreConfigError, match="position_scale") as err:
        _build([folder], out, other)
    assert "overwrite" in str(err.value)
    with pytest.raises(StoreConfigError, match="position_scale"):
        open_store(out, expected_config=other)
    store = _build([folder], out, other, overwrite=True, shard_frames=1000)
    assert store.config == other
    assert sorted(p.name for p in out.glob("shard_*")) == ["shard_00000"]
    assert open_store(out, expected_config=other).num_games == 2
    with pytest.raises(StoreConfigError, match="stages"):
        _build([folder], out, other, StoreFilters(stages=[32]))


def test_refuses_a_folder_that_is_not_a_store(replay_dir, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    for overwrite in (False, True):
        with pytest.raises(StoreError, match="not an encoded store"):
            _build([replay_dir / TINY[0]], out, overwrite=overwrite)
    assert (out / "thesis.tex").read_text() == "years of work"


def test_dedupe_by_md5(replay_dir, tmp_path):
    folder = _copy(replay_dir, TINY, tmp_path / "in")
    _copy(replay_dir, TINY[:1], folder, prefix="copy_of_")
    deduped = _build([folder], tmp_path / "deduped")
    assert deduped.num_games == 2
    # files are taken in sorted order, so the copy is stored and the original counted as its duplicate
    assert deduped.games[0].path == str((folder / f"copy_of_{TINY[0]}").resolve())
    duplicate = {"path": str((folder / TINY[0]).resolve()), "md5": deduped.games[0].md5}
    assert deduped.manifest["duplicates"] == [duplicate]
    assert deduped.manifest["counts"]["duplicates"] == 1
    assert len({g.md5 for g in deduped.games}) == 2
    kept_all = _build([folder], tmp_path / "all", dedupe=False)
    assert kept_all.num_games == 3 and kept_all.manifest["counts"]["duplicates"] == 0
    again = _build([folder], tmp_path / "deduped")  # rerun of a complete store adds nothing
    _assert_same_store(again, deduped)


@pytest.mark.parametrize(
    ("filters", "keep", "reason"),
    [
        (StoreFilters(stages=[31, 32]), lambda g: g.stage in (31, 32), "stage"),
        (StoreFilters(characters=[2, 20]), lambda g: set(g.characters) <= {2, 20}, "characters"),
        (StoreFilters(end_methods=[2]), lambda g: g.end_method == 2, "end_method"),
        (StoreFilters(min_frames=1000), lambda g: g.length >= 1000, "min_frames"),
        (StoreFilters(allow_cpu=False), lambda g: not any(g.cpu_players), "allow_cpu"),
    ],
)
def test_filters(sample_store, replay_dir, tmp_path, filters, keep, reason):
    store = _build([replay_dir], tmp_path / "store", filters=filters)
    expected = [g.md5 for g in sample_store.games if keep(g)]
    assert 0 < len(expected) < 6
    assert [g.md5 for g in store.games] == expected
    skipped = store.manifest["skipped"]
    assert len(skipped) == 6 - len(expected)
    assert all(r["reason"].startswith("filtered: ") and reason in r["reason"] for r in skipped)
    assert store.manifest["filters"] == filters.to_dict()


def test_two_workers_give_the_same_store(sample_store, replay_dir, tmp_path):
    from conftest import SAMPLE_SHARD_FRAMES

    store = _build([replay_dir], tmp_path / "store", workers=2, shard_frames=SAMPLE_SHARD_FRAMES)
    _assert_same_store(store, sample_store)


@pytest.mark.slow
def test_killed_build_resumes_to_the_same_store(replay_dir, tmp_path):
    """SIGKILL a real `melee-wm encode` once a shard is committed; the rerun must equal a one-shot build."""
    src = tmp_path / "copies"
    for i in range(200):
        _copy(replay_dir, TINY, src, prefix=f"{i:03d}_")
    (src / "zz_not_a_replay.slp").write_text("not a replay")
    out = tmp_path / "store"
    shard_frames = 1500
    cmd = [sys.executable, "-m", "melee_wm.cli", "encode", str(src), "--out", str(out), "--no-dedupe"]
    cmd += ["--workers", "1", "--shard-frames", str(shard_frames)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    manifest = None
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if (out / MANIFEST).is_file():
                manifest = json.loads((out / MANIFEST).read_text())
                if manifest["shards"]:
                    break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the build ended before it could be killed"
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["complete"] is False and 1 <= len(manifest["shards"]) < 30
    visible = sorted(p.name for p in out.glob("shard_*"))
    assert {s["name"] for s in manifest["shards"]} <= set(visible)
    for name in visible:  # whatever is visible under a shard name is whole
        floats = np.load(out / name / "floats.npy", mmap_mode="r")
        offsets = np.load(out / name / "game_offsets.npy")
        assert offsets[-1] == len(floats) == len(np.load(out / name / "ints.npy", mmap_mode="r"))
    with pytest.raises(FileNotFoundError, match="incomplete"):
        open_store(out)

    kwargs = {"shard_frames": shard_frames, "dedupe": False}
    resumed = _build([src], out, **kwargs)
    clean = _build([src], tmp_path / "clean", **kwargs)
    _assert_same_store(resumed, clean)
    assert resumed.manifest["counts"]["games"] == 400 and resumed.manifest["counts"]["skipped"] == 1
    assert sorted(p.name for p in out.iterdir() if p.name != ".lock") == sorted(
        [MANIFEST] + [s["name"] for s in resumed.manifest["shards"]]
    )


def test_resume_refuses_a_different_dedupe_setting(replay_dir, tmp_path):
    folder = _copy(replay_dir, TINY, tmp_path / "in")
    out = tmp_path / "store"
    _build([folder], out)
    with pytest.raises(StoreConfigError, match="dedupe"):
        _build([folder], out, dedupe=False)


def test_a_bug_in_our_code_stops_the_build_instead_of_skipping_files(replay_dir, tmp_path, monkeypatch):
    """Only bad replays become skip records: an error of the encoder itself must not end as an empty store."""
    import melee_wm.data.pipeline as pipeline

    def broken(*args, **kwargs):
        raise RuntimeError("encoder bug")

    monkeypatch.setattr(pipeline, "encode_columns", broken)
    out = tmp_path / "store"
    with pytest.raises(RuntimeError, match="encoder bug"):
        _build([_copy(replay_dir, TINY, tmp_path / "in")], out)
    assert not (out / MANIFEST).exists()


def test_any_peppi_failure_is_a_skip_record(replay_dir, tmp_path, monkeypatch):
    """peppi raising something other than OSError (a Rust panic, a ValueError in its wrapper) skips the file."""
    import peppi_py  # the parser imports it when it reads a file, so patching the module reaches it

    real = peppi_py.read_slippi

    def fails_on_netplay(path, *args, **kwargs):
        if "netplay" in path:
            raise ValueError("malformed event payload")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(peppi_py, "read_slippi", fails_on_netplay)
    store = _build([_copy(replay_dir, TINY, tmp_path / "in")], tmp_path / "store")
    assert store.num_games == 1
    (skip,) = store.manifest["skipped"]
    assert "netplay" in skip["path"] and skip["reason"] == "peppi failed: ValueError: malformed event payload"
