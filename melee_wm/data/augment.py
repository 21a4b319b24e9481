"""Player-swap augmentation: exchange the two players' columns of raw windows, so the model sees both sides.

A game seen from the other port is the same game with every `p0.X` column exchanged for `p1.X` (per-game
columns such as `stage` stay put): the encoder fills each player's columns from that player's arrays alone
(melee_wm/encoding/encoder.py). The exchange is one gather along the column axis, derived from the `Layout`'s
`.player` and `.field`, never from column offsets. Swapping raw (K + 1)-frame windows before `build_batch`
(melee_wm/data/batch.py) swaps context, next controller inputs and targets together.

Which training windows are swapped is drawn by `SwapBatchSampler` in the main process, from a generator seeded
by (seed, epoch, rank) and consumed batch by batch, so DataLoader workers, a rerun and a resumed run see the
same swaps.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from melee_wm.data.sampler import WindowBatchSampler, WindowItem
from melee_wm.encoding.layout import NUM_PLAYERS, Column, Layout


class SwapIndex(NamedTuple):
    """Column permutations: swapped[..., c] = original[..., floats[c]] (and likewise for ints)."""

    floats: Tensor  # (num_floats,) long
    ints: Tensor  # (num_ints,) long


def column_permutation(columns: Sequence[Column]) -> list[int]:
    """perm[c]: the column holding the other player's value of column c's field; per-game columns map to
    themselves. Raises ValueError if a player's column has no counterpart of the same field."""
    if NUM_PLAYERS != 2:
        raise ValueError(f"player swap needs exactly 2 players, the layout has {NUM_PLAYERS}")
    where = {(c.player, c.field): c.index for c in columns}
    perm = []
    for c in columns:
        if c.player is None:
            perm.append(c.index)
            continue
        other = (1 - c.player, c.field)
        if other not in where:
            raise ValueError(f"column {c.name!r} has no player-{other[0]} counterpart of field {c.field!r}")
        perm.append(where[other])
    if sorted(perm) != list(range(len(columns))):
        raise ValueError("player swap of the layout's columns is not a permutation")
    return perm


# Layout -> {device: SwapIndex}: computed once per layout, copied once to each device it is used on.
_CACHE: weakref.WeakKeyDictionary[Layout, dict[torch.device, SwapIndex]] = weakref.WeakKeyDictionary()


def swap_index(layout: Layout, device: torch.device | str = "cpu") -> SwapIndex:
    """The layout's float and int column permutations, as long tensors on `device` (cached)."""
    device = torch.device(device)
    per_device = _CACHE.setdefault(layout, {})
    if device not in per_device:
        cpu = per_device.get(torch.device("cpu"))
        if cpu is None:
            cpu = SwapIndex(
                torch.tensor(column_permutation(layout.float_columns), dtype=torch.long),
                torch.tensor(column_permutation(layout.int_columns), dtype=torch.long),
            )
            per_device[torch.device("cpu")] = cpu
        per_device[device] = SwapIndex(cpu.floats.to(device), cpu.ints.to(device))
    return per_device[device]


def swap_players(floats: Tensor, ints: Tensor, layout: Layout) -> tuple[Tensor, Tensor]:
    """Every window seen from the other port: floats (..., num_floats), ints (..., num_ints), e.g. raw windows
    (B, K + 1, columns). New tensors, on the inputs' device; swapping twice gives the inputs back exactly."""
    index = swap_index(layout, floats.device)
    return floats.index_select(-1, index.floats), ints.index_select(-1, index.ints)


def swap_players_where(floats: Tensor, ints: Tensor, layout: Layout, swap: Tensor) -> tuple[Tensor, Tensor]:
    """`swap_players` applied to the windows where `swap` is True. floats: (B, K + 1, num_floats); ints:
    (B, K + 1, num_ints); swap: (B,) bool, on any device."""
    if swap.shape != floats.shape[:1]:
        raise ValueError(f"swap must be a (B,) = ({floats.shape[0]},) mask, got shape {tuple(swap.shape)}")
    swap = swap.to(floats.device, non_blocking=True)
    swapped_f, swapped_i = swap_players(floats, ints, layout)
    return torch.where(swap[:, None, None], swapped_f, floats), torch.where(swap[:, None, None], swapped_i, ints)


def swap_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of the swap draws of one epoch on one rank: a stable hash, a stream apart from the shuffle's."""
    digest = hashlib.blake2b(f"swap_players/{seed}/{epoch}/{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class SwapBatchSampler(WindowBatchSampler):
    """A `WindowBatchSampler` whose batches come with a swap mask (`WindowItem.swap`): each window is swapped
    with probability p.

    The masks of an epoch are drawn in batch order from a generator seeded by `swap_seed(seed, epoch, rank)`,
    so they depend only on those and the batch's position; the sampler runs in the main process and workers
    receive the masks with the indices.
    """

    def __init__(self, num_windows: int, batch_size: int, *, swap_p: float, **kwargs) -> None:
        super().__init__(num_windows, batch_size, **kwargs)
        if not 0.0 <= swap_p <= 1.0:
            raise ValueError(f"swap_p must be in [0, 1], got {swap_p}")
        self.swap_p = swap_p

    def __iter__(self) -> Iterator[WindowItem]:
        g = torch.Generator().manual_seed(swap_seed(self.seed, self.epoch, self.rank))
        for item in super().__iter__():
            yield item._replace(swap=torch.rand(len(item.indices), generator=g) < self.swap_p)
