"""Train/val split by game: a stable hash of the game's md5 decides, so adding games never moves another."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Literal

Split = Literal["train", "val"]
SPLITS = ("train", "val", "all")


def split_unit(md5: str, salt: str = "") -> float:
    """Map a game's md5 to a number uniform in [0, 1), the same on every machine and in every order."""
    digest = hashlib.sha256(f"{salt}:{md5.lower()}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(md5: str, val_fraction: float, salt: str = "") -> Split:
    """'val' when the game's hash falls below `val_fraction`, else 'train'."""
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    return "val" if split_unit(md5, salt) < val_fraction else "train"


def select_games(md5s: Iterable[str], split: str, val_fraction: float, salt: str = "") -> list[int]:
    """Positions of the games in `split` ('train', 'val' or 'all'), in the given order."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return [i for i, m in enumerate(md5s) if split == "all" or split_of(m, val_fraction, salt) == split]
