"""Batch sampler (seeding, DDP ranks), DataLoader workers, and MeleeDataModule setup on the real store."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import pytest
import torch

from melee_wm.data.batch import Batch
from melee_wm.data.config import DataConfig
from melee_wm.data.datamodule import MeleeDataModule
from melee_wm.data.sampler import WindowBatchSampler, WindowItem
from melee_wm.data.split import split_of
from melee_wm.data.store import StoreConfigError
from melee_wm.encoding.config import EncodingConfig
from melee_wm.encoding.layout import Layout
from tests.helpers import assert_same, quiet_trainer


def flat(batches: list[WindowItem], counted_only: bool = False) -> list[int]:
    """The window indices of sampler items in order (with counted_only, those the items count)."""
    out = []
    for b in batches:
        counted = [True] * len(b.indices) if b.counted is None or not counted_only else b.counted.tolist()
        out += [i for i, c in zip(b.indices, counted, strict=True) if c]
    return out


@pytest.mark.parametrize(("n", "drop_last"), [(1000, True), (1000, False), (1003, False)])
def test_two_ranks_are_disjoint_and_cover_the_epoch(n, drop_last):
    ranks = [WindowBatchSampler(n, 64, seed=3, drop_last=drop_last, rank=r, world_size=2) for r in (0, 1)]
    batches = [list(s) for s in ranks]
    assert len(batches[0]) == len(batches[1]) == len(ranks[0])  # same step count on every rank (no DDP hang)
    seen = [flat(b) for b in batches]
    if drop_last:
        assert all(len(b.indices) == 64 for r in batches for b in r)
        assert len(seen[0]) == len(seen[1]) == n // 128 * 64
        assert not set(seen[0]) & set(seen[1]) and len(set(seen[0]) | set(seen[1])) == 2 * len(seen[0])
    else:
        assert set(seen[0]) | set(seen[1]) == set(range(n))
        assert len(seen[0]) + len(seen[1]) == n + n % 2  # only the padding repeats
        if n % 2 == 0:
            assert not set(seen[0]) & set(seen[1])
        # The repeats are marked: the counted windows of both ranks are every window exactly once.
        counted = [flat(b, counted_only=True) for b in batches]
        assert sorted(counted[0] + counted[1]) == list(range(n))
        assert all(b.counted is None for b in batches[0]) and (n % 2 == 0) == all(b.counted is None for b in batches[1])


def test_sampler_is_seeded_per_epoch():
    a, b = WindowBatchSampler(500, 50, seed=7), WindowBatchSampler(500, 50, seed=7)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first and sorted(flat(list(a))) == sorted(flat(first))
    assert list(WindowBatchSampler(500, 50, seed=8)) != first
    assert flat(list(WindowBatchSampler(10, 4, shuffle=False, drop_last=False))) == list(range(10))


def datamodule(store, **kw) -> MeleeDataModule:
    dm = MeleeDataModule(DataConfig(store=str(store.path), val_fraction=0.5, batch_size=32, **kw), EncodingConfig())
    dm.setup("fit")
    return dm


def test_setup_builds_the_splits(sample_store):
    dm = datamodule(sample_store)
    train, val = dm.train_set, dm.val_set
    assert {m: "train" for m in train.md5s} | {m: "val" for m in val.md5s} == {
        g.md5: split_of(g.md5, 0.5) for g in sample_store.games
    }
    assert len(dm.train_dataloader()) == len(train) // 32
    assert len(dm.val_dataloader()) == -(-len(val) // 32)
    batch = next(iter(dm.train_dataloader()))
    assert batch.floats.shape == (32, 30, train.layout.num_floats)
    dm.trainer = SimpleNamespace(global_rank=1, world_size=2)
    sampler = dm.train_dataloader().sampler
    assert (sampler.rank, sampler.world_size) == (1, 2) and len(sampler) == len(train) // 64


def test_setup_errors_name_the_problem(sample_store, tmp_path):
    missing = MeleeDataModule(DataConfig(store=str(tmp_path / "nowhere")), EncodingConfig())
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        missing.setup("fit")
    other = MeleeDataModule(DataConfig(store=str(sample_store.path)), EncodingConfig(action_vocab=512))
    with pytest.raises(StoreConfigError, match="action_vocab"):
        other.setup("fit")
    with pytest.raises(ValueError, match="persistent_workers"):
        DataConfig(persistent_workers=True)


def test_workers_yield_the_same_batches(sample_store):
    loaders = [datamodule(sample_store, num_workers=w, seed=5).train_dataloader() for w in (0, 2)]
    for b0, b2, _ in zip(*loaders, range(6), strict=False):
        assert_same(b0, b2)
    assert torch.equal(next(iter(loaders[0])).ints, next(iter(loaders[1])).ints)


class _Probe(L.LightningModule):
    """Records what the Trainer hands over: batch types, shapes and the sampler's epoch at each step."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[tuple[type, tuple, int]] = []

    def training_step(self, batch: Batch, _idx: int) -> torch.Tensor:
        epoch = self.trainer.train_dataloader.sampler.epoch
        self.seen.append((type(batch), tuple(batch.targets.floats["continuous"].shape), epoch))
        return (self.w * batch.targets.floats["continuous"]).pow(2).mean() + self.w**2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.slow
def test_lightning_fit_gets_batches_and_reshuffles(sample_store):
    cfg = DataConfig(store=str(sample_store.path), batch_size=16)
    dm = MeleeDataModule(cfg, EncodingConfig())
    probe = _Probe()
    trainer = quiet_trainer(max_epochs=2, limit_train_batches=2)
    trainer.fit(probe, datamodule=dm)
    assert [(t, e) for t, _, e in probe.seen] == [(Batch, 0), (Batch, 0), (Batch, 1), (Batch, 1)]
    cols = Layout(EncodingConfig()).float_slice("continuous")
    expected = (cfg.batch_size, cfg.num_positions, cols.stop - cols.start)  # (B, P, both players' columns)
    assert all(s == expected for _, s, _ in probe.seen)


def test_device_resident_splits_share_one_copy(sample_store):
    dm = datamodule(sample_store, device_resident=True)
    train, val = dm.train_set, dm.val_set
    assert all(t is v for ts, vs in zip(train.shards, val.shards, strict=True) for t, v in zip(ts, vs, strict=True))
    assert next(iter(dm.val_dataloader())).floats.device == train.device
