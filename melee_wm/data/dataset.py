"""`MeleeDataset`: every window of K + 1 consecutive frames inside one game, gathered a batch at a time.

Arrays stay where they are: memory-mapped shards of a store (`from_store`, nothing copied into RAM; forked
DataLoader workers share the page cache) or tensors already in memory (`from_tensors`). `get_batch` gathers a
batch of window indices with one `index_select` per shard over an overlapping (windows, K + 1, columns) view
of the rows, i.e. B block copies of K + 1 consecutive rows.
Windows are numbered game by game, in store order; a window never crosses a game boundary.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from melee_wm.data.augment import swap_players_where
from melee_wm.data.batch import Batch, Targets, build_batch
from melee_wm.data.config import DataConfig
from melee_wm.data.split import SPLITS, select_segments
from melee_wm.data.store import Store, open_store
from melee_wm.encoding.config import EncodingConfig
from melee_wm.encoding.layout import Layout
from melee_wm.encoding.missing import invalid_columns

ArrayLike = np.ndarray | Tensor


def as_tensor(array: ArrayLike) -> Tensor:
    """A tensor over the same memory (no copy); read-only memmaps are fine because nothing writes to them."""
    if isinstance(array, Tensor):
        return array
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "non-writable array": we only ever read
        return torch.from_numpy(array)


def check_arrays(floats: ArrayLike, ints: ArrayLike, layout: Layout, name: str) -> None:
    """Shapes and dtypes of one shard's columns against the layout."""
    if floats.ndim != 2 or floats.shape[1] != layout.num_floats:
        raise ValueError(
            f"{name}: floats must be (frames, {layout.num_floats}) per the layout, got {tuple(floats.shape)}"
        )
    if ints.ndim != 2 or ints.shape[1] != layout.num_ints:
        raise ValueError(f"{name}: ints must be (frames, {layout.num_ints}) per the layout, got {tuple(ints.shape)}")
    if floats.shape[0] != ints.shape[0]:
        raise ValueError(f"{name}: floats has {floats.shape[0]} frames but ints has {ints.shape[0]}")
    if as_tensor(floats).dtype != torch.float32:
        raise ValueError(f"{name}: floats must be float32, got {floats.dtype}")
    if as_tensor(ints).dtype not in (torch.int16, torch.int32, torch.int64):
        raise ValueError(f"{name}: ints must be an integer dtype (int16 in stores), got {ints.dtype}")


def check_offsets(
    offsets: np.ndarray, lengths: np.ndarray | None, num_games: int | None, frames: int, name: str
) -> None:
    """game_offsets: (G + 1,) from 0 up to `frames`, non-decreasing; lengths and num_games consistent with it."""
    if offsets.ndim != 1 or len(offsets) < 1:
        raise ValueError(f"{name}: game_offsets must be 1-D with num_games + 1 entries, got shape {offsets.shape}")
    if offsets[0] != 0 or offsets[-1] != frames:
        raise ValueError(
            f"{name}: game_offsets must start at 0 and end at the frame count {frames}, "
            f"got {int(offsets[0])} .. {int(offsets[-1])}"
        )
    bad = np.flatnonzero(np.diff(offsets) < 0)
    if len(bad):
        raise ValueError(f"{name}: game_offsets must be non-decreasing; first drop after game {int(bad[0])}")
    if num_games is not None and num_games != len(offsets) - 1:
        raise ValueError(f"{name}: num_games={num_games} but game_offsets describes {len(offsets) - 1} games")
    if lengths is not None:
        if lengths.shape != (len(offsets) - 1,):
            raise ValueError(f"{name}: game_lengths must have {len(offsets) - 1} entries, got shape {lengths.shape}")
        bad = np.flatnonzero(lengths != np.diff(offsets))
        if len(bad):
            g = int(bad[0])
            raise ValueError(
                f"{name}: game_lengths[{g}]={int(lengths[g])} but game_offsets give {int(offsets[g + 1] - offsets[g])}"
            )


def check_vocab(minimum: np.ndarray, maximum: np.ndarray, layout: Layout, name: str) -> None:
    """Per-int-column min/max inside [0, vocab)."""
    vocab = np.asarray(layout.int_vocabs)
    bad = np.flatnonzero((minimum < 0) | (maximum >= vocab))
    if len(bad):
        details = ", ".join(
            f"{layout.int_columns[c].name} in [{int(minimum[c])}, {int(maximum[c])}] (vocab {vocab[c]})" for c in bad
        )
        raise ValueError(f"{name}: categorical ids outside their vocabularies: {details}")


def _to_numpy(array: ArrayLike) -> np.ndarray:
    return array.detach().cpu().numpy() if isinstance(array, Tensor) else np.asarray(array)


def game_validity(layout: Layout, missing_fields: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
    """(G, num_floats) and (G, num_ints) bool: False for the columns of fields each game's format lacks."""
    invalid = [invalid_columns(layout, fields) for fields in missing_fields]
    return (
        np.array([~f.numpy() for f, _ in invalid], dtype=bool).reshape(len(invalid), layout.num_floats),
        np.array([~i.numpy() for _, i in invalid], dtype=bool).reshape(len(invalid), layout.num_ints),
    )


class MeleeDataset(torch.utils.data.Dataset):
    """Windows of `cfg.context_len + 1` frames from the selected games of one or more shards.

    Build it with `from_store` or `from_tensors`. shards: [(floats (N_s, num_floats), ints (N_s, num_ints))];
    game_shard, game_start, game_length: (G,) shard index, first row in that shard and frame count of each
    selected game; md5s: their md5s (empty strings when unknown); game_valid: (G, num_floats) and
    (G, num_ints) bool, False for columns whose field the game's replay format lacks (None: all valid).
    Inputs must already be validated.
    """

    def __init__(
        self,
        shards: Sequence[tuple[ArrayLike, ArrayLike]],
        game_shard: np.ndarray,
        game_start: np.ndarray,
        game_length: np.ndarray,
        md5s: Sequence[str],
        cfg: DataConfig,
        encoding: EncodingConfig,
        rebuild: tuple[Any, tuple, dict] | None = None,
        game_valid: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        self.cfg = cfg
        self.encoding = encoding
        self.layout = Layout(encoding)
        self.md5s = list(md5s)
        self.shards = [(as_tensor(f), as_tensor(i)) for f, i in shards]
        self._rebuild = rebuild
        k = cfg.context_len
        game_length = np.asarray(game_length, dtype=np.int64)
        counts = np.maximum(game_length - k, 0)  # starts s with s + K inside the game
        self.game_windows = counts
        self.device = self.shards[0][0].device if self.shards else torch.device("cpu")
        # The index tables stay on the host even when the arrays are device-resident: indices arrive from the
        # sampler as host lists, so locating windows never waits for the accelerator (no host sync per batch).
        self.game_shard = torch.as_tensor(np.asarray(game_shard, dtype=np.int64))
        self.game_start = torch.as_tensor(np.asarray(game_start, dtype=np.int64))
        self.game_length = torch.as_tensor(game_length)
        if game_valid is None:
            game_valid = game_validity(self.layout, [[]] * len(game_length))
        self.game_valid_floats = torch.as_tensor(game_valid[0], dtype=torch.bool, device=self.device)
        self.game_valid_ints = torch.as_tensor(game_valid[1], dtype=torch.bool, device=self.device)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.window_offsets = torch.as_tensor(offsets)
        self._windows = self._window_views()

    # Construction -------------------------------------------------------------------------------------------

    @classmethod
    def from_tensors(
        cls,
        floats: ArrayLike,
        ints: ArrayLike,
        game_offsets: ArrayLike,
        game_lengths: ArrayLike,
        num_games: int,
        cfg: DataConfig,
        encoding: EncodingConfig,
        md5s: Sequence[str] | None = None,
        missing_fields: Sequence[Sequence[str]] | None = None,
    ) -> MeleeDataset:
        """Every game of in-memory arrays: floats (N, num_floats) float32, ints (N, num_ints) int, game_offsets
        (G + 1,) and game_lengths (G,) (numpy or torch). md5s: (G,) optional, for bookkeeping only;
        missing_fields: (G,) lists of parsed fields each game's replay format lacks (None: all recorded).
        Tensors on an accelerator give a device-resident dataset."""
        layout = Layout(encoding)
        name = "MeleeDataset.from_tensors"
        check_arrays(floats, ints, layout, name)
        offsets = _to_numpy(game_offsets).astype(np.int64)
        lengths = _to_numpy(game_lengths).astype(np.int64)
        check_offsets(offsets, lengths, num_games, floats.shape[0], name)
        if floats.shape[0]:
            t = as_tensor(ints)
            check_vocab(t.amin(0).cpu().numpy(), t.amax(0).cpu().numpy(), layout, name)
        if md5s is not None and len(md5s) != num_games:
            raise ValueError(f"{name}: {len(md5s)} md5s for {num_games} games")
        if missing_fields is not None and len(missing_fields) != num_games:
            raise ValueError(f"{name}: {len(missing_fields)} missing_fields lists for {num_games} games")
        return cls(
            [(floats, ints)],
            np.zeros(num_games, dtype=np.int64),
            offsets[:-1],
            lengths,
            md5s if md5s is not None else [""] * num_games,
            cfg,
            encoding,
            rebuild=(
                cls.from_tensors,
                (floats, ints, game_offsets, game_lengths, num_games, cfg, encoding),
                {"md5s": md5s, "missing_fields": missing_fields},
            ),
            game_valid=None if missing_fields is None else game_validity(layout, missing_fields),
        )

    @classmethod
    def from_store(
        cls,
        store: str | Path | Store,
        split: str = "train",
        cfg: DataConfig | None = None,
        encoding: EncodingConfig | None = None,
    ) -> MeleeDataset:
        """The games of `split` ('train', 'val' or 'all') of a store, read through memory maps.

        store: a path or an opened `Store`. encoding: the config the caller expects; the store's must equal it
        (a `StoreConfigError` lists the differing fields). None takes the store's own config.
        """
        cfg = cfg or DataConfig()
        if split not in SPLITS:
            raise ValueError(f"MeleeDataset.from_store: split must be one of {SPLITS}, got {split!r}")
        if not isinstance(store, Store):
            store = open_store(store, expected_config=encoding)
        elif encoding is not None:
            store = open_store(store.path, expected_config=encoding)
        name = f"store {store.path}"
        layout = store.layout
        stats = store.manifest["column_stats"]
        missing = [n for n in layout.int_names if n not in stats]
        if missing:
            raise ValueError(f"{name}: manifest column_stats lacks int columns {missing}")
        if store.num_frames:  # shapes, dtypes and game rows were checked by open_store; ids by their min/max
            lo, hi = ([stats[n][k] for n in layout.int_names] for k in ("min", "max"))
            check_vocab(np.array(lo), np.array(hi), layout, name)
        games = store.games
        segments = select_segments(
            [g.md5 for g in games],
            [g.length for g in games],
            split,
            cfg.split,
            cfg.val_fraction,
            cfg.split_salt,
            cfg.tail_gap,
        )
        segments.sort(key=lambda s: (games[s[0]].shard, games[s[0]].offset))
        chosen = [games[i] for i, _, _ in segments]
        return cls(
            [(s.floats, s.ints) for s in store.shards],
            np.array([g.shard for g in chosen], dtype=np.int64),
            np.array([g.offset + first for g, (_, first, _) in zip(chosen, segments, strict=True)], dtype=np.int64),
            np.array([n for _, _, n in segments], dtype=np.int64),
            [g.md5 for g in chosen],
            cfg,
            store.config,
            rebuild=(cls.from_store, (str(store.path), split, cfg, store.config), {}),
            game_valid=game_validity(layout, [g.missing_fields for g in chosen]),
        )

    def __reduce__(self) -> tuple[Callable[..., MeleeDataset], tuple]:
        """Pickle as the recipe that built it (spawned workers reopen the memmaps instead of copying them)."""
        if self.device.type != "cpu":
            raise RuntimeError("a device-resident MeleeDataset cannot be pickled; use num_workers=0")
        if self._rebuild is None:
            raise RuntimeError("only a MeleeDataset built by from_store or from_tensors can be pickled")
        fn, args, kwargs = self._rebuild
        return _rebuild, (fn, args, kwargs)

    def to(self, device: torch.device | str, moved: dict | None = None) -> MeleeDataset:
        """Device-resident mode: move the arrays to `device` once; `get_batch` then gathers there.

        moved: a dict shared between datasets over the same arrays (train and val of one store), so each
        array is copied to the device once.
        """
        device = torch.device(device)
        moved = {} if moved is None else moved

        def move(t: Tensor) -> Tensor:
            key = (t.data_ptr(), tuple(t.shape), t.dtype, device)
            if key not in moved:
                moved[key] = t.to(device)
            return moved[key]

        self.shards = [(move(f), move(i)) for f, i in self.shards]
        for name in ("game_valid_floats", "game_valid_ints"):
            setattr(self, name, getattr(self, name).to(device))
        self.device = device
        self._windows = self._window_views()
        return self

    def _window_views(self) -> list[tuple[Tensor, Tensor]]:
        """Per shard, overlapping views (N_s - K, K + 1, columns) of floats and ints: view[s] = rows s..s+K."""
        n = self.cfg.window_len
        return [
            tuple(
                a.as_strided((max(len(a) - n + 1, 0), n, a.shape[1]), (a.stride(0), a.stride(0), a.stride(1)))
                for a in pair
            )
            for pair in self.shards
        ]

    # Access -------------------------------------------------------------------------------------------------

    @property
    def num_games(self) -> int:
        """Selected games (those of this split)."""
        return len(self.game_windows)

    @property
    def num_frames(self) -> int:
        """Frames in the selected games."""
        return int(self.game_length.sum())

    def game_frames(self, game: int) -> tuple[np.ndarray, np.ndarray]:
        """(length, num_floats) float64 and (length, num_ints) int64 arrays of selected game `game`, on the host
        (for statistics and fitted baselines, which read whole games once)."""
        floats, ints = self.shards[int(self.game_shard[game])]
        start, length = int(self.game_start[game]), int(self.game_length[game])
        rows = slice(start, start + length)
        return floats[rows].cpu().numpy().astype(np.float64), ints[rows].cpu().numpy().astype(np.int64)

    def __len__(self) -> int:
        """Number of windows."""
        return int(self.window_offsets[-1])

    def window_games(self, indices: ArrayLike) -> tuple[Tensor, Tensor]:
        """(window indices, game of each window), both (B,) long on the host (indices on an accelerator are
        copied to the host, which waits for it: pass host indices, as the sampler does)."""
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1).cpu()
        n = len(self)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise IndexError(f"window indices must be in [0, {n}), got [{int(idx.min())}, {int(idx.max())}]")
        return idx, torch.searchsorted(self.window_offsets[1:], idx, right=True)

    def window_starts(self, indices: ArrayLike) -> tuple[Tensor, Tensor]:
        """Shard index and first row of each window. indices: (B,) -> ((B,), (B,)) long, on the host."""
        idx, game = self.window_games(indices)
        return self.game_shard[game], self.game_start[game] + (idx - self.window_offsets[game])

    def _on_device(self, t: Tensor) -> Tensor:
        """A host tensor copied to the dataset's device without waiting for it (through pinned memory)."""
        if self.device.type == "cpu":
            return t
        return t.pin_memory().to(self.device, non_blocking=True)

    def gather(self, indices: ArrayLike) -> tuple[Tensor, Tensor]:
        """Raw windows: floats (B, K + 1, num_floats), ints (B, K + 1, num_ints), in the order of `indices`.

        Each shard's windows are copied by one `index_select` of whole (K + 1)-row blocks. When the indices
        are grouped by shard (the sampler sorts each batch) every block lands straight in the output;
        otherwise each shard's part is gathered, then scattered into place.
        """
        shard, start = self.window_starts(indices)
        rows = self._on_device(start)
        if len(self._windows) == 1:
            return tuple(v.index_select(0, rows) for v in self._windows[0])
        f0, i0 = self._windows[0]
        floats = torch.empty((len(start), *f0.shape[1:]), dtype=f0.dtype, device=self.device)
        ints = torch.empty((len(start), *i0.shape[1:]), dtype=i0.dtype, device=self.device)
        cuts = [0, *((shard[1:] != shard[:-1]).nonzero().squeeze(1) + 1).tolist(), len(shard)]
        if len(cuts) - 1 <= len(self._windows):  # few runs of one shard each (grouped): copy run by run
            for a, b in itertools.pairwise(cuts):
                views = self._windows[int(shard[a])]
                for view, out in zip(views, (floats, ints), strict=True):
                    torch.index_select(view, 0, rows[a:b], out=out[a:b])
            return floats, ints
        for s in torch.unique(shard).tolist():
            pick = (shard == s).nonzero().squeeze(1)
            at = self._on_device(pick)
            for view, out in zip(self._windows[s], (floats, ints), strict=True):
                out[at] = view.index_select(0, rows[at])
        return floats, ints

    def get_batch(self, indices: ArrayLike, swap: Tensor | None = None, counted: Tensor | None = None) -> Batch:
        """The `Batch` of the given window indices (B,), built on the dataset's device. swap: (B,) bool, the
        windows to see from the other port (`swap_players_where`), or None for none; counted: (B,) bool, False
        for the windows losses and metrics leave out (`Batch.counted`), or None when all count."""
        floats, ints = self.gather(indices)
        if swap is not None:
            floats, ints = swap_players_where(floats, ints, self.layout, swap)
        batch = build_batch(floats, ints, self.layout, self.cfg.num_positions)
        game = self._on_device(self.window_games(indices)[1])
        batch.valid_floats, batch.valid_ints = self.game_valid_floats[game], self.game_valid_ints[game]
        batch.counted = None if counted is None else self._on_device(counted)
        return batch

    def __getitem__(self, index: int) -> dict[str, Any]:
        """One window as a nested dict of unbatched tensors (the per-sample path; prefer `get_batch`)."""
        return _unbatch(self.get_batch([index]))


def _unbatch(obj: Tensor | dict | Batch | Targets) -> Tensor | dict[str, Any]:
    """Batch item 0 of a (nested) batch, with `Batch`/`Targets` turned into dicts (what default_collate takes)."""
    if obj is None or isinstance(obj, Tensor):
        return obj if obj is None else obj[0]
    if isinstance(obj, dict):
        return {k: _unbatch(v) for k, v in obj.items()}
    if isinstance(obj, (Batch, Targets)):
        return {k: _unbatch(v) for k, v in vars(obj).items()}
    raise TypeError(f"cannot unbatch {type(obj).__name__}")


def _rebuild(fn: Callable[..., MeleeDataset], args: tuple, kwargs: dict) -> MeleeDataset:
    """Unpickle a `MeleeDataset` by calling the constructor that built it."""
    return fn(*args, **kwargs)
