"""`DataConfig`: which store to read, how windows are cut and split, and how batches are loaded.

Plain types only, so it can be the Hydra schema of the data config group.
"""

from __future__ import annotations

from dataclasses import dataclass

from melee_wm.data.split import SPLIT_KINDS
from melee_wm.schema import require


@dataclass
class DataConfig:
    """Windows of `context_len + 1` frames from the store at `store`, split by game into train and val."""

    store: str = "data/store"  # directory holding manifest.json and the shards
    from_samples: bool = False  # build `store` from the six sample replays when it does not exist yet
    context_len: int = 30  # K: context frames per window (a window holds K + 1 frames)
    multi_position: bool = True  # predict the next frame at every context position (P = K), else the last (P = 1)
    # How validation frames are chosen (melee_wm/data/split.py): "game" holds out whole games (by md5 hash),
    # "tail" the last `val_fraction` of every game, `tail_gap` frames after the training frames end.
    split: str = "game"
    val_fraction: float = 0.1  # share of games (split "game") or of every game's frames (split "tail") in val
    split_salt: str = ""  # mixed into the game split's hash; changing it draws a different split
    tail_gap: int = 90  # frames between a game's training and validation frames (split "tail")
    batch_size: int = 512
    num_workers: int = 0
    pin_memory: bool = False
    persistent_workers: bool = False
    seed: int = 0  # shuffling seed (each epoch reshuffles with seed + epoch)
    device_resident: bool = False  # move the arrays to the training device once and gather there
    swap_players_p: float = 0.0  # chance that a train window is seen from the other port (melee_wm/data/augment.py)

    def __post_init__(self) -> None:
        def fail(key: str, msg: str) -> None:
            raise ValueError(f"DataConfig.{key}: {msg}")

        c = "DataConfig"
        require(self.context_len >= 1, f"{c}.context_len", self.context_len, ">= 1")
        require(self.split in SPLIT_KINDS, f"{c}.split", self.split, f"one of {list(SPLIT_KINDS)}")
        if self.split == "tail":
            require(
                self.tail_gap >= self.window_len,
                f"{c}.tail_gap",
                self.tail_gap,
                f">= the window length {self.window_len}",
            )
        require(0.0 <= self.val_fraction <= 1.0, f"{c}.val_fraction", self.val_fraction, "in [0, 1]")
        require(0 <= self.swap_players_p <= 1, f"{c}.swap_players_p", self.swap_players_p, "a probability in [0, 1]")
        require(self.batch_size >= 1, f"{c}.batch_size", self.batch_size, ">= 1")
        require(self.num_workers >= 0, f"{c}.num_workers", self.num_workers, ">= 0")
        if self.persistent_workers and self.num_workers == 0:
            fail("persistent_workers", "needs num_workers > 0")
        if self.device_resident and self.num_workers > 0:
            fail(
                "device_resident",
                f"gathers on the device in the main process; set num_workers=0 (got {self.num_workers})",
            )
        if self.device_resident and self.pin_memory:
            fail("pin_memory", "has no use with device_resident=True (batches are already on the device)")

    @property
    def window_len(self) -> int:
        """Frames per window: K context frames plus the frame after the last one."""
        return self.context_len + 1

    @property
    def num_positions(self) -> int:
        """P: predicted positions per window."""
        return self.context_len if self.multi_position else 1
