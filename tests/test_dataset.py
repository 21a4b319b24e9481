"""MeleeDataset on the real sample store: construction paths agree, windows respect games, targets line up."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest
import torch

from melee_wm.data.config import DataConfig
from melee_wm.data.dataset import MeleeDataset
from melee_wm.data.split import select_games, split_of
from melee_wm.data.store import StoreConfigError
from melee_wm.encoding.config import EncodingConfig
from melee_wm.encoding.layout import Layout
from tests.helpers import assert_same

ENC = EncodingConfig()
LAYOUT = Layout(ENC)


def store_arrays(store):
    """The whole store as in-memory arrays in store order: floats, ints, game_offsets, game_lengths, md5s and
    each game's missing fields."""
    parts = [store.game(g) for g in range(store.num_games)]
    lengths = np.array([len(f) for f, _ in parts], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    floats = np.concatenate([np.asarray(f) for f, _ in parts])
    ints = np.concatenate([np.asarray(i) for _, i in parts])
    return floats, ints, offsets, lengths, [g.md5 for g in store.games], [g.missing_fields for g in store.games]


@pytest.fixture(scope="module")
def arrays(sample_store):
    return store_arrays(sample_store)


@pytest.mark.parametrize("multi", [True, False])
def test_from_tensors_and_from_store_agree_on_every_window(sample_store, arrays, multi):
    assert len(sample_store.shards) > 1  # so the store path gathers across shards
    cfg = DataConfig(multi_position=multi)
    floats, ints, offsets, lengths, md5s, missing = arrays
    mem = MeleeDataset.from_tensors(
        floats, ints, torch.from_numpy(offsets), lengths, len(lengths), cfg, ENC, md5s, missing_fields=missing
    )
    disk = MeleeDataset.from_store(sample_store.path, "all", cfg, ENC)
    assert len(mem) == len(disk) == int(np.maximum(lengths - cfg.context_len, 0).sum())
    assert mem.md5s == disk.md5s
    order = torch.randperm(len(disk), generator=torch.Generator().manual_seed(0))
    for chunk in order.split(8192):  # every window's raw frames; whole batches (targets too) for a sample
        for a, b in zip(mem.gather(chunk), disk.gather(chunk), strict=True):
            assert torch.equal(a, b)
    assert_same(mem.get_batch(order[:2048]), disk.get_batch(order[:2048]))  # random order: gather + scatter
    grouped = order[:2048].sort().values  # grouped by shard, as the sampler yields: copied run by run
    assert len(set(disk.window_starts(grouped)[0].tolist())) > 1
    assert_same(mem.get_batch(grouped), disk.get_batch(grouped))
    one = int(order[0])
    expected = disk.get_batch([one])
    single = disk[one]
    assert torch.equal(single["floats"], expected.floats[0])
    assert torch.equal(single["targets"]["categorical"]["action"], expected.targets.categorical["action"][0])


@pytest.mark.parametrize("k", [30, 200])
def test_every_window_stays_inside_one_game(sample_store, k):
    ds = MeleeDataset.from_store(sample_store.path, "all", DataConfig(context_len=k))
    lengths = np.array([g.length for g in sample_store.games])
    assert len(ds) == int(np.maximum(lengths - k, 0).sum())
    shard, start = ds.window_starts(torch.arange(len(ds)))
    shard, start = shard.numpy(), start.numpy()
    games_seen = set()
    for s, sh in enumerate(sample_store.shards):
        mine = start[shard == s]
        first = np.searchsorted(sh.game_offsets, mine, side="right") - 1
        last = np.searchsorted(sh.game_offsets, mine + k, side="right") - 1
        assert (first == last).all() and (mine + k < len(sh.floats)).all()
        assert len(np.unique(mine)) == len(mine)
        games_seen.update((s, int(sh.game_offsets[g])) for g in np.unique(first))
    long_games = {(g.shard, g.offset) for g in sample_store.games if g.length > k}
    assert games_seen == long_games  # every long game gives windows, no game of <= K frames does
    if k == 200:
        assert len(long_games) < len(sample_store.games)  # the 148- and 128-frame games are left out


def test_split_is_stable_and_by_hash(sample_store):
    md5s = [g.md5 for g in sample_store.games]
    frac = 0.5
    before = {m: split_of(m, frac) for m in md5s}
    assert set(before.values()) == {"train", "val"}  # both splits are exercised by the real games
    added = [*md5s, "f" * 32, "0123456789abcdef" * 2]
    assert {m: split_of(m, frac) for m in added[: len(md5s)]} == before
    reordered = md5s[::-1]
    for split in ("train", "val"):
        picked = {md5s[i] for i in select_games(md5s, split, frac)}
        assert picked == {reordered[i] for i in select_games(reordered, split, frac)}
        assert picked == {m for m, s in before.items() if s == split}
    rng = np.random.default_rng(0)
    many = [rng.bytes(16).hex() for _ in range(4000)]
    share = np.mean([split_of(m, 0.2) == "val" for m in many])
    assert abs(share - 0.2) < 0.03
    assert [split_of(m, 0.2, salt="other") for m in many] != [split_of(m, 0.2) for m in many]
    cfg = DataConfig(val_fraction=frac)
    train = MeleeDataset.from_store(sample_store.path, "train", cfg)
    val = MeleeDataset.from_store(sample_store.path, "val", cfg)
    assert set(train.md5s) == {m for m, s in before.items() if s == "train"}
    assert set(val.md5s) == {m for m, s in before.items() if s == "val"}


def test_multi_position_targets_match_raw_rows(sample_store):
    k = 30
    ds = MeleeDataset.from_store(sample_store.path, "all", DataConfig(context_len=k, multi_position=True))
    single = MeleeDataset.from_store(sample_store.path, "all", DataConfig(context_len=k, multi_position=False))
    idx = torch.randint(len(ds), (64,), generator=torch.Generator().manual_seed(1))
    b, b1 = ds.get_batch(idx), single.get_batch(idx)
    shard, start = ds.window_starts(idx)
    x0 = LAYOUT.float_index("p0.x") - LAYOUT.float_slice("continuous").start
    y1 = LAYOUT.float_index("p1.y") - LAYOUT.float_slice("continuous").start
    stocks = LAYOUT.float_index("p1.stocks") - LAYOUT.float_slice("dynamics").start
    facing = LAYOUT.float_index("p0.facing") - LAYOUT.float_slice("binary").start
    ctrl = LAYOUT.float_slice("controller")
    act = LAYOUT.int_slice("action")
    assert b.floats.shape == (64, k, LAYOUT.num_floats) and b.next_ctrl.shape == (64, k, ctrl.stop - ctrl.start)
    assert b1.next_ctrl.shape[1] == k and b1.num_positions == 1 and b1.targets.categorical["action"].shape == (64, 1, 2)
    for row, (s, r) in enumerate(zip(shard.tolist(), start.tolist(), strict=True)):
        f = torch.from_numpy(np.asarray(sample_store.shards[s].floats[r : r + k + 1]))
        i = torch.from_numpy(np.asarray(sample_store.shards[s].ints[r : r + k + 1])).long()
        t = b.targets
        assert torch.equal(b.floats[row], f[:k])
        assert torch.equal(
            t.floats["continuous"][row, :, x0], f[1:, LAYOUT.float_index("p0.x")] - f[:k, LAYOUT.float_index("p0.x")]
        )
        assert torch.equal(
            t.floats["continuous"][row, :, y1], f[1:, LAYOUT.float_index("p1.y")] - f[:k, LAYOUT.float_index("p1.y")]
        )
        assert torch.equal(t.floats["dynamics"][row, :, stocks], f[1:, LAYOUT.float_index("p1.stocks")])
        assert torch.equal(t.floats["binary"][row, :, facing], f[1:, LAYOUT.float_index("p0.facing")])
        assert torch.equal(t.categorical["action"][row], i[1:, act])
        assert torch.equal(t.current_categorical["action"][row], i[:k, act])
        assert torch.equal(b.next_ctrl[row], f[1:, ctrl])
        for name, value in t.floats.items():  # single-position targets are the multi-position ones' last row
            assert torch.equal(b1.targets.floats[name][row], value[row, -1:])
    assert (b.targets.floats["continuous"] != 0).any()  # the real windows do move


def test_pickle_reopens_the_store(sample_store):
    ds = MeleeDataset.from_store(sample_store.path, "all", DataConfig())
    copy = pickle.loads(pickle.dumps(ds))
    assert isinstance(copy.shards[0][0], torch.Tensor) and len(copy) == len(ds)
    assert len(pickle.dumps(ds)) < 100_000  # the recipe, not the arrays
    idx = torch.arange(0, len(ds), 997)
    assert_same(ds.get_batch(idx), copy.get_batch(idx))


def test_device_resident_gathers_where_the_arrays_are(sample_store):
    ds = MeleeDataset.from_store(sample_store.path, "all", DataConfig())
    ref = ds.get_batch(torch.arange(100))
    ds.to("cpu")
    assert ds.device == torch.device("cpu") and ds.get_batch(torch.arange(100)).floats.device.type == "cpu"
    assert_same(ref, ds.get_batch(torch.arange(100)))
    if torch.cuda.is_available():
        gpu = MeleeDataset.from_store(sample_store.path, "all", DataConfig()).to("cuda")
        assert_same(ref, gpu.get_batch(torch.arange(100, device="cuda")).to("cpu"))
    with pytest.raises(IndexError, match="window indices"):
        ds.get_batch([len(ds)])


@pytest.fixture
def good(arrays):
    floats, ints, offsets, lengths, *_ = arrays
    return floats, ints, offsets, lengths, len(lengths)


def test_from_tensors_validation_errors(good):
    floats, ints, offsets, lengths, n = good
    cfg = DataConfig()

    def build(**change):
        args = dict(floats=floats, ints=ints, game_offsets=offsets, game_lengths=lengths, num_games=n) | change
        return MeleeDataset.from_tensors(**args, cfg=cfg, encoding=ENC)

    with pytest.raises(ValueError, match=rf"floats must be \(frames, {LAYOUT.num_floats}\)"):
        build(floats=floats[:, :-1])
    with pytest.raises(ValueError, match=rf"ints must be \(frames, {LAYOUT.num_ints}\)"):
        build(ints=np.concatenate([ints, ints[:, :1]], axis=1))
    with pytest.raises(ValueError, match="float32"):
        build(floats=floats.astype(np.float64))
    bad = offsets.copy()
    bad[2], bad[3] = bad[3], bad[2]
    with pytest.raises(ValueError, match="non-decreasing"):
        build(game_offsets=bad, game_lengths=np.diff(bad))
    with pytest.raises(ValueError, match="end at the frame count"):
        build(game_offsets=offsets[:-1], game_lengths=lengths[:-1], num_games=n - 1)
    with pytest.raises(ValueError, match=r"game_lengths\[1\]"):
        build(game_lengths=lengths + np.arange(n))
    with pytest.raises(ValueError, match=f"num_games={n + 1}"):
        build(num_games=n + 1)
    wrong = ints.copy()
    wrong[5, LAYOUT.int_index("p1.action")] = ENC.action_vocab
    with pytest.raises(ValueError, match=rf"p1\.action in \[\d+, {ENC.action_vocab}\] \(vocab {ENC.action_vocab}\)"):
        build(ints=wrong)
    build(game_offsets=torch.from_numpy(offsets), game_lengths=torch.from_numpy(lengths))  # torch is fine too


def test_from_store_validation_errors(sample_store, tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "absent")):
        MeleeDataset.from_store(tmp_path / "absent", "all")
    with pytest.raises(StoreConfigError, match="position_scale"):
        MeleeDataset.from_store(sample_store.path, "all", encoding=EncodingConfig(position_scale=0.02))
    with pytest.raises(ValueError, match="split must be one of"):
        MeleeDataset.from_store(sample_store.path, "test")
    copy = tmp_path / "store"
    shutil.copytree(sample_store.path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["column_stats"]["p0.jumps"]["max"] = ENC.jumps_vocab
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"p0\.jumps"):
        MeleeDataset.from_store(copy, "all")
