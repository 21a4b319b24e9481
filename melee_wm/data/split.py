"""Train/val split by game: a stable hash of the game's md5 decides, so adding games never moves another."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
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


SPLIT_KINDS = ("game", "tail")


def tail_cut(length: int, val_fraction: float, gap: int) -> tuple[int, int]:
    """(training frames, first validation frame) of one game under the tail split: the last `val_fraction` of
    its frames are validation, the `gap` frames before them belong to neither, the rest to training."""
    val_start = length - round(length * val_fraction)
    return max(val_start - gap, 0), val_start


def select_segments(
    md5s: Sequence[str],
    lengths: Sequence[int],
    split: str,
    kind: str,
    val_fraction: float,
    salt: str = "",
    gap: int = 0,
) -> list[tuple[int, int, int]]:
    """(game position, first frame, frame count) of each stretch of frames in `split` ('train', 'val', 'all').

    kind 'game': whole games, by `split_of` (the default for real stores: no game is seen in both splits).
    kind 'tail': every game gives its head to training and its tail to validation (`tail_cut`), so every
    character and stage of a small store appears in both; the `gap` frames between them (at least a window and
    a rollout horizon) keep any training window from overlapping a validation window or rollout.
    """
    if kind not in SPLIT_KINDS:
        raise ValueError(f"split kind must be one of {SPLIT_KINDS}, got {kind!r}")
    if kind == "game" or split == "all":
        return [(i, 0, int(lengths[i])) for i in select_games(md5s, split, val_fraction, salt)]
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    out = []
    for i, length in enumerate(lengths):
        train_end, val_start = tail_cut(int(length), val_fraction, gap)
        out.append((i, 0, train_end) if split == "train" else (i, val_start, int(length) - val_start))
    return out
