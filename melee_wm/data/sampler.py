"""`WindowBatchSampler`: yields whole batches of window indices (shuffled per epoch, split across DDP ranks).

Paired with a DataLoader built with `batch_size=None`, each yielded `WindowItem` is one dataset item, so a worker
gathers a whole batch with one vectorized `get_batch` instead of collating B single windows.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor
from torch.utils.data import Sampler


class WindowItem(NamedTuple):
    """One sampler item, a batch. indices: window indices (B,); counted: (B,) bool, False for a window that pads
    this rank's last batch (another rank sees it too: losses and metrics leave it out), None when every window
    counts; swap: (B,) bool, the windows to see from the other port (`SwapBatchSampler`), None for none."""

    indices: list[int]
    counted: Tensor | None = None
    swap: Tensor | None = None


class WindowBatchSampler(Sampler[WindowItem]):
    """Batches of indices in [0, num_windows) for one rank of `world_size`.

    Every rank draws the same permutation (seed + epoch) and takes every `world_size`-th index from offset
    `rank`, so ranks are disjoint and, together, cover the epoch. drop_last: trim the permutation to a
    multiple of batch_size * world_size (equal full batches on every rank); else pad it with its own first
    indices to a multiple of world_size (every rank then has the same number of batches, the last one short,
    as DDP needs) and mark those repeats not `counted`, so validation under DDP scores every window exactly once,
    as one process does. Each batch comes sorted: its windows are still a random draw, but grouped by shard (and
    nearby in the files), which lets `MeleeDataset.gather` copy straight into the output.
    """

    def __init__(
        self,
        num_windows: int,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.num_windows = num_windows
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for `epoch` (Lightning calls this on the sampler at the start of each epoch)."""
        self.epoch = epoch

    @property
    def samples_per_rank(self) -> int:
        """Windows this rank sees per epoch (dropped to whole batches, or padded to split evenly)."""
        if self.drop_last:
            return self.num_windows // (self.batch_size * self.world_size) * self.batch_size
        return math.ceil(self.num_windows / self.world_size)

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        n = self.samples_per_rank
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[WindowItem]:
        """This rank's batches of window indices for the current epoch, each sorted (grouped by shard)."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_windows, generator=g)
        else:
            order = torch.arange(self.num_windows)
        total = self.samples_per_rank * self.world_size
        counted = torch.arange(total) < self.num_windows  # positions past the permutation are repeats
        if total > len(order):  # pad (drop_last=False): repeat the permutation's head
            order = torch.cat([order, order.repeat(math.ceil(total / max(len(order), 1)))[: total - len(order)]])
        mine, mine_counted = order[:total][self.rank :: self.world_size], counted[self.rank :: self.world_size]
        for batch, batch_counted in zip(mine.split(self.batch_size), mine_counted.split(self.batch_size), strict=True):
            indices, by_index = batch.sort()
            batch_counted = batch_counted[by_index]
            yield WindowItem(indices.tolist(), None if batch_counted.all() else batch_counted)
