"""`MeleeDataModule`: the train/val windows of a store, as DataLoaders that hand whole batches to workers.

Each DataLoader is built with `batch_size=None` and a `WindowBatchSampler`: a sampler item, a `WindowItem`, names
the window indices of one batch, which a worker turns into one `Batch` with `MeleeDataset.get_batch`; it also
marks the windows that only pad a DDP rank's last validation batch (`Batch.counted`). With `swap_players_p > 0`
the train sampler is a `SwapBatchSampler`, whose items also say which windows to see from the other port
(melee_wm/data/augment.py). Under DDP the sampler reads `trainer.global_rank` / `trainer.world_size` itself, so
the Trainer must be built with `use_distributed_sampler=False` (Lightning would otherwise try to replace the
sampler with its own).
With `device_resident=True` the arrays move once to the trainer's device and batches are gathered there.
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from melee_wm.data.augment import SwapBatchSampler
from melee_wm.data.batch import Batch
from melee_wm.data.config import DataConfig
from melee_wm.data.dataset import MeleeDataset
from melee_wm.data.sampler import WindowBatchSampler, WindowItem
from melee_wm.data.store import open_store
from melee_wm.encoding.config import EncodingConfig


class BatchItems(Dataset):
    """A dataset whose item is a whole batch: `items[indices] = windows.get_batch(indices)`."""

    def __init__(self, windows: MeleeDataset) -> None:
        self.windows = windows

    def __getitem__(self, item: WindowItem) -> Batch:
        """The `Batch` of the window indices (B,) the sampler yielded, swapped and counted as the item says."""
        return self.windows.get_batch(item.indices, swap=item.swap, counted=item.counted)


class MeleeDataModule(L.LightningDataModule):
    """Opens `data_cfg.store`, checks its encoding config against the run's, and serves train/val batches."""

    def __init__(self, data_cfg: DataConfig, encoding_cfg: EncodingConfig) -> None:
        super().__init__()
        self.data_cfg = data_cfg
        self.encoding_cfg = encoding_cfg
        self.train_set: MeleeDataset | None = None
        self.val_set: MeleeDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        """Build both splits (once). FileNotFoundError names the store path when it is absent."""
        if self.train_set is not None:
            return
        store = open_store(self.data_cfg.store, expected_config=self.encoding_cfg)
        self.train_set = MeleeDataset.from_store(store, "train", self.data_cfg)
        self.val_set = MeleeDataset.from_store(store, "val", self.data_cfg)
        if stage in (None, "fit") and len(self.train_set) == 0:
            raise ValueError(
                f"store {store.path}: the train split has no window of {self.data_cfg.window_len} frames "
                f"({self.train_set.num_games} games, val_fraction={self.data_cfg.val_fraction})"
            )
        if self.data_cfg.device_resident:
            device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
            moved: dict = {}  # both splits read the same shards: copy each one once
            self.train_set.to(device, moved)
            self.val_set.to(device, moved)

    def _rank(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def loader(self, windows: MeleeDataset, *, shuffle: bool, drop_last: bool, swap_p: float = 0.0) -> DataLoader:
        """A DataLoader of whole `Batch`es from `windows` for this rank; swap_p > 0 sees each window from the
        other port with that probability (`SwapBatchSampler`)."""
        cfg = self.data_cfg
        rank, world_size = self._rank()
        kwargs = dict(shuffle=shuffle, seed=cfg.seed, drop_last=drop_last, rank=rank, world_size=world_size)
        if swap_p > 0:
            sampler = SwapBatchSampler(len(windows), cfg.batch_size, swap_p=swap_p, **kwargs)
        else:
            sampler = WindowBatchSampler(len(windows), cfg.batch_size, **kwargs)
        return DataLoader(
            BatchItems(windows),
            batch_size=None,
            sampler=sampler,
            num_workers=cfg.num_workers,
            pin_memory=cfg.pin_memory,
            persistent_workers=cfg.persistent_workers,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled (reshuffled every epoch), full batches of the train split, player-swapped per `swap_players_p`."""
        train = self._split("train", self.train_set)
        return self.loader(train, shuffle=True, drop_last=True, swap_p=self.data_cfg.swap_players_p)

    def val_dataloader(self) -> DataLoader:
        """Every window of the val split, in order (the last batch may be short), never swapped."""
        return self.loader(self._split("val", self.val_set), shuffle=False, drop_last=False)

    def _split(self, name: str, windows: MeleeDataset | None) -> MeleeDataset:
        if windows is None:
            raise RuntimeError(f"MeleeDataModule.{name}_dataloader called before setup()")
        return windows
