"""Player-swap augmentation on the real replays: the swap is the other port's encoding, and only train swaps."""

from __future__ import annotations

import dataclasses
import math

import lightning as L
import pytest
import torch

from melee_wm.data.augment import (
    SwapBatchSampler,
    column_permutation,
    swap_players,
    swap_players_where,
)
from melee_wm.data.batch import Batch, build_batch
from melee_wm.data.config import DataConfig
from melee_wm.data.datamodule import MeleeDataModule
from melee_wm.data.dataset import MeleeDataset
from melee_wm.data.sampler import WindowBatchSampler, WindowItem
from melee_wm.encoding.config import EncodingConfig
from melee_wm.encoding.encoder import encode_game
from melee_wm.encoding.layout import Column, Layout
from melee_wm.replay.parse import ParsedGame, parse_replay
from tests.helpers import assert_same, quiet_trainer

ENC = EncodingConfig()
LAYOUT = Layout(ENC)


def other_name(column: Column) -> str:
    """The name of the column that holds the other player's value (the column itself for per-game ones)."""
    return column.name if column.player is None else f"p{1 - column.player}.{column.field}"


def by_name(columns: tuple[Column, ...] | list[Column]) -> list[int]:
    """Within `columns`, the position of each one's other-player column, found by name (a reference that does
    not use `column_permutation`)."""
    names = [c.name for c in columns]
    return [names.index(other_name(c)) for c in columns]


@pytest.fixture(scope="module")
def dataset(sample_store) -> MeleeDataset:
    return MeleeDataset.from_store(sample_store.path, "all", DataConfig())


@pytest.fixture(scope="module")
def windows(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """64 raw windows (64, K + 1, columns) spread over every game of the store."""
    return dataset.gather(torch.linspace(0, len(dataset) - 1, 64).long())


# 1. An involution ------------------------------------------------------------------------------------------


def test_swapping_twice_is_the_identity(windows):
    floats, ints = windows
    f1, i1 = swap_players(floats, ints, LAYOUT)
    assert f1.shape == floats.shape and i1.dtype == ints.dtype == torch.int16
    assert not torch.equal(f1, floats) and not torch.equal(i1, ints)  # the real players differ
    f2, i2 = swap_players(f1, i1, LAYOUT)
    assert torch.equal(f2, floats) and torch.equal(i2, ints)
    for perm in (column_permutation(LAYOUT.float_columns), column_permutation(LAYOUT.int_columns)):
        assert [perm[p] for p in perm] == list(range(len(perm))) and perm != list(range(len(perm)))
    if torch.cuda.is_available():
        fc, ic = swap_players(floats.cuda(), ints.cuda(), LAYOUT)
        assert torch.equal(fc.cpu(), f1) and torch.equal(ic.cpu(), i1)


# 2. Columns land on their counterparts; targets follow ------------------------------------------------------


def test_every_column_lands_on_the_other_players_column(windows):
    floats, ints = windows
    sf, si = swap_players(floats, ints, LAYOUT)
    for columns, before, after, index in (
        (LAYOUT.float_columns, floats, sf, LAYOUT.float_index),
        (LAYOUT.int_columns, ints, si, LAYOUT.int_index),
    ):
        for c in columns:
            assert torch.equal(after[..., c.index], before[..., index(other_name(c))]), c.name
    stage = LAYOUT.int_index("stage")
    assert torch.equal(si[..., stage], ints[..., stage])
    assert [c.name for c in LAYOUT.int_columns if c.player is None] == ["stage"]


@pytest.mark.parametrize("multi", [True, False])
def test_swapped_windows_build_the_swapped_batch(windows, multi):
    floats, ints = windows
    p = DataConfig(multi_position=multi).num_positions
    plain = build_batch(floats, ints, LAYOUT, p)
    swapped = build_batch(*swap_players(floats, ints, LAYOUT), LAYOUT, p)
    assert torch.equal(swapped.floats[..., by_name(LAYOUT.float_columns)], plain.floats)
    assert torch.equal(swapped.ints[..., by_name(LAYOUT.int_columns)], plain.ints)
    ctrl = by_name(LAYOUT.float_columns[LAYOUT.float_slice("controller")])
    assert torch.equal(swapped.next_ctrl, plain.next_ctrl[..., ctrl])
    for group in LAYOUT.target_float_groups:
        local = by_name(LAYOUT.float_columns[LAYOUT.float_slice(group)])
        for kind in ("floats", "current_floats"):
            value = getattr(plain.targets, kind)[group]
            assert torch.equal(getattr(swapped.targets, kind)[group], value[..., local]), (kind, group)
    for field in LAYOUT.categorical_targets:
        local = by_name(LAYOUT.int_columns[LAYOUT.int_slice(field)])
        for kind in ("categorical", "current_categorical"):
            value = getattr(plain.targets, kind)[field]
            assert torch.equal(getattr(swapped.targets, kind)[field], value[..., local]), (kind, field)


def test_swap_where_swaps_only_the_chosen_windows(windows):
    floats, ints = windows
    mask = torch.arange(len(floats)) % 3 == 0
    f, i = swap_players_where(floats, ints, LAYOUT, mask)
    sf, si = swap_players(floats, ints, LAYOUT)
    assert torch.equal(f[mask], sf[mask]) and torch.equal(i[mask], si[mask])
    assert torch.equal(f[~mask], floats[~mask]) and torch.equal(i[~mask], ints[~mask])
    with pytest.raises(ValueError, match=r"swap must be a \(B,\)"):
        swap_players_where(floats, ints, LAYOUT, mask[:-1])


def test_a_field_without_counterpart_is_an_error():
    cols = [Column("p0.x", "x", 0, "continuous", 0, None), Column("p1.y", "y", 1, "continuous", 1, None)]
    with pytest.raises(ValueError, match=r"'p0.x' has no player-1 counterpart of field 'x'"):
        column_permutation(cols)


# 3. The swap is the encoding of the game with its ports exchanged ------------------------------------------


def exchange_ports(game: ParsedGame) -> ParsedGame:
    """The same game with its two players (and their per-port metadata) in the other order."""
    meta = dataclasses.replace(
        game.meta,
        characters=game.meta.characters[::-1],
        ports=game.meta.ports[::-1],
        cpu_players=game.meta.cpu_players[::-1],
    )
    return dataclasses.replace(game, meta=meta, players=game.players[::-1])


def test_swap_equals_encoding_with_ports_exchanged(replay_dir):
    paths = sorted(replay_dir.glob("*.slp"))
    assert len(paths) == 6
    for path in paths:
        game = parse_replay(path)
        original = encode_game(game, ENC, LAYOUT)
        exchanged = encode_game(exchange_ports(game), ENC, LAYOUT)
        f, i = swap_players(torch.from_numpy(original.floats), torch.from_numpy(original.ints), LAYOUT)
        assert torch.equal(f, torch.from_numpy(exchanged.floats)), path.name
        assert torch.equal(i, torch.from_numpy(exchanged.ints)), path.name
        assert not torch.equal(f, torch.from_numpy(original.floats)), path.name


# 4. Wiring: train only, seeded by (seed, epoch, rank, batch position) --------------------------------------


def datamodule(store, **kw) -> MeleeDataModule:
    dm = MeleeDataModule(DataConfig(store=str(store.path), val_fraction=0.5, batch_size=32, **kw), EncodingConfig())
    dm.setup("fit")
    return dm


def masks(sampler: SwapBatchSampler) -> torch.Tensor:
    return torch.cat([item.swap for item in sampler])


def test_p0_changes_nothing(sample_store):
    dm = datamodule(sample_store, seed=3)
    loader = dm.train_dataloader()
    assert type(loader.sampler) is WindowBatchSampler  # the default path is untouched
    for item, batch, _ in zip(loader.sampler, loader, range(3), strict=False):
        assert_same(batch, dm.train_set.get_batch(item.indices))
    zero = SwapBatchSampler(1000, 64, swap_p=0.0, seed=3)
    items = list(zero)
    assert [item.indices for item in items] == [item.indices for item in WindowBatchSampler(1000, 64, seed=3)]
    assert not torch.cat([item.swap for item in items]).any()


def test_p1_swaps_every_train_window_and_val_never(sample_store):
    dm = datamodule(sample_store, seed=3, swap_players_p=1.0)
    train, val = dm.train_set, dm.val_set
    loader = dm.train_dataloader()
    assert len(loader) == len(train) // 32
    for item, batch, _ in zip(loader.sampler, loader, range(3), strict=False):
        assert isinstance(item, WindowItem) and item.swap.all()
        floats, ints = train.gather(item.indices)
        expected = build_batch(*swap_players(floats, ints, LAYOUT), LAYOUT, dm.data_cfg.num_positions)
        _, games = train.window_games(item.indices)  # masks are per game, the same for both players
        expected.valid_floats, expected.valid_ints = train.game_valid_floats[games], train.game_valid_ints[games]
        assert_same(batch, expected)
    val_loader = dm.val_dataloader()
    assert type(val_loader.sampler) is WindowBatchSampler
    for item, batch, _ in zip(val_loader.sampler, val_loader, range(3), strict=False):
        assert item.swap is None
        assert_same(batch, val.get_batch(item.indices))


def test_swap_draws_are_seeded_by_seed_epoch_and_rank():
    def sampler(**kw) -> SwapBatchSampler:
        return SwapBatchSampler(4000, 64, **({"swap_p": 0.5, "seed": 7} | kw))

    a = sampler()
    first = masks(a)
    assert torch.equal(masks(sampler()), first) and torch.equal(masks(a), first)  # rerun, re-iterate
    assert abs(first.float().mean().item() - 0.5) < 0.05
    a.set_epoch(1)
    assert not torch.equal(masks(a), first)
    a.set_epoch(0)
    assert torch.equal(masks(a), first)  # a resumed run's epoch 0 is the same
    assert not torch.equal(masks(sampler(seed=8)), first)
    ranks = [sampler(rank=r, world_size=2) for r in (0, 1)]
    assert not torch.equal(masks(ranks[0]), masks(ranks[1]))
    assert [i.indices for i in ranks[1]] == [
        i.indices for i in WindowBatchSampler(4000, 64, seed=7, rank=1, world_size=2)
    ]
    assert abs(masks(sampler(swap_p=0.2)).float().mean().item() - 0.2) < 0.05


def test_workers_draw_the_same_swaps(sample_store):
    loaders = [datamodule(sample_store, num_workers=w, seed=5, swap_players_p=0.5).train_dataloader() for w in (0, 2)]
    drawn = torch.cat([item.swap for item, _ in zip(loaders[0].sampler, range(3), strict=False)])
    assert drawn.any() and not drawn.all()  # a mix, so the comparison below means something
    for b0, b2, _ in zip(*loaders, range(3), strict=False):
        assert_same(b0, b2)


class _Recorder(L.LightningModule):
    """Keeps the context ints of every training batch."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.ints: list[torch.Tensor] = []

    def training_step(self, batch: Batch, _idx: int) -> torch.Tensor:
        self.ints.append(batch.ints.clone())
        return self.w**2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.slow
def test_lightning_fit_swaps_per_epoch(sample_store):
    cfg = DataConfig(store=str(sample_store.path), batch_size=16, swap_players_p=0.5, seed=2)
    dm = MeleeDataModule(cfg, EncodingConfig())
    recorder = _Recorder()
    trainer = quiet_trainer(max_epochs=2, limit_train_batches=2)
    trainer.fit(recorder, datamodule=dm)
    expected = []
    reference = SwapBatchSampler(len(dm.train_set), 16, swap_p=0.5, seed=2)
    for epoch in (0, 1):
        reference.set_epoch(epoch)
        for item, _ in zip(reference, range(2), strict=False):
            expected.append(dm.train_set.get_batch(item.indices, swap=item.swap).ints)
    assert len(recorder.ints) == 4
    assert all(torch.equal(a, b) for a, b in zip(recorder.ints, expected, strict=True))


# 5. A bad probability -------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [-0.1, 1.5, math.nan])
def test_bad_probability_is_a_clear_error(p):
    with pytest.raises(ValueError, match=r"DataConfig\.swap_players_p: must be a probability in \[0, 1\]"):
        DataConfig(swap_players_p=p)
    with pytest.raises(ValueError, match=r"swap_p must be in \[0, 1\]"):
        SwapBatchSampler(100, 10, swap_p=p)
