"""Merging stores encoded with the same config into one (`merge_stores`): how parallel encoding jobs combine.

Games are copied one at a time, in source order, into new shards written exactly as `build_store` writes
them (under a temporary name, renamed when complete, the manifest rewritten after each shard), so memory
holds about two games whatever the size of the stores. Merging sources that are consecutive slices of one
sorted file list gives the store a one-shot build of that list gives (same games, order, shards, counts).

What the manifest keeps and how it merges:
- games: deduplicated by md5 when the stores deduplicate (the first copy is kept, a later one becomes a
  duplicate record), else only the same file (md5 and path) stored twice is dropped;
- skip and duplicate records: kept, in source order;
- column statistics: the manifest keeps only mean/std/min/max, which do not combine exactly, so they are
  recomputed from the copied arrays, game by game, with the same moments `build_store` uses;
- repair counts (per column): a source's counts are committed with the first of its repaired games that is
  copied. Rows keep only per-game totals, so when some but not all of them are dropped as duplicates the
  per-column counts overcount; a warning then names the source.

Sources must share the encoding config, format and encoder versions, filters and dedupe (a StoreConfigError
names the differing fields). An existing store at `out` with the same config is resumed: games it holds are
not copied again, so an interrupted merge reruns to completion.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from melee_wm.data.manifest import GameRow, StoreConfigError
from melee_wm.data.pipeline import StoreFilters
from melee_wm.data.shard_writer import OpenShard
from melee_wm.data.store import STORE_FORMAT_VERSION, Store, check_config, open_store
from melee_wm.data.store_writer import _locked, _PendingGame, _prepare, _Writer
from melee_wm.data.summary import print_summary
from melee_wm.encoding.config import ENCODER_VERSION, config_diff, format_config_diff
from melee_wm.encoding.encoder import column_moments

__all__ = ["merge_stores"]


@dataclass
class _GameColumns:
    """What `OpenShard.append` reads of a game: its columns, one per row (F, T) and (I, T) (transposed views)."""

    float_columns: np.ndarray
    int_columns: np.ndarray


def _filters_and_dedupe(manifest: dict) -> dict:
    return {**manifest["filters"], "dedupe": manifest.get("dedupe")}


def check_compatible(stores: Sequence[Store]) -> None:
    """Every store must match the first in encoding config, format/encoder versions, filters and dedupe."""
    first = stores[0]
    for store in stores:
        m = store.manifest
        versions = (m.get("format_version"), m.get("encoder_version"))
        if versions != (STORE_FORMAT_VERSION, ENCODER_VERSION):
            raise StoreConfigError(
                f"store {store.path} has format_version / encoder_version {versions}, this code reads and writes "
                f"{(STORE_FORMAT_VERSION, ENCODER_VERSION)}; re-encode it"
            )
        if store is first:
            continue
        check_config(store.path, m, first.config, f"\n(expected = the first store, {first.path})")
        diff = config_diff(_filters_and_dedupe(first.manifest), _filters_and_dedupe(m))
        if diff:
            raise StoreConfigError(
                f"store {store.path} was built with different filters or dedupe than {first.path}; differing "
                "fields:\n" + format_config_diff(diff, "first", "this")
            )


class _MergeWriter(_Writer):
    """`build_store`'s writer, fed with games copied from other stores instead of freshly encoded files."""

    def add_game(self, row: GameRow, floats: np.ndarray, ints: np.ndarray, repairs: dict | None = None) -> str:
        """Copy one game (floats (T, F), ints (T, I)) with `repairs` ({nonfinite, clamped} per-column counts to
        commit with it). Returns "copied", "stored" (this file is already in the store, e.g. from an interrupted
        run of this merge) or "duplicate" (another file with its md5 is stored)."""
        known_paths = self.stored.get(row.md5, set())
        if row.path in known_paths or row.path in self.duplicates:
            return "stored"
        if self.dedupe and known_paths:
            self.duplicates[row.path] = {"path": row.path, "md5": row.md5}
            self.added["duplicates"] += 1
            return "duplicate"
        self.skipped.pop(row.path, None)
        self.stored.setdefault(row.md5, set()).add(row.path)
        if self.shard is None:
            self.shard = OpenShard(self.out, len(self.shards), self.layout, self.shard_writer)
        offset = self.shard.append(_GameColumns(floats.T, ints.T))
        placed = dataclasses.replace(row, shard=self.shard.index, offset=offset)
        float_moments = column_moments(np.ascontiguousarray(floats.T))
        int_moments = column_moments(np.ascontiguousarray(ints.T))
        repairs = repairs or {"nonfinite": {}, "clamped": {}}
        self.pending.append(_PendingGame(placed, repairs["nonfinite"], repairs["clamped"], float_moments, int_moments))
        self.pending_frames += row.length
        self.added["games"] += 1
        self.added["frames"] += row.length
        if self.pending_frames >= self.shard_frames:
            self.flush()
        return "copied"

    def add_store(self, store: Store, bar: Progress | None, task: int | None) -> None:
        """Copy a source's games, then its records. Its per-column repair counts travel with the first of its
        repaired games this merge holds (committed with that game's shard, so a resumed merge counts them once)."""
        attached, dropped = False, 0
        for index, row in enumerate(store.games):
            repaired = bool(row.nonfinite or row.clamped)
            floats, ints = store.game(index)
            status = self.add_game(row, floats, ints, store.manifest["repairs"] if repaired and not attached else None)
            if repaired:
                attached = attached or status != "duplicate"
                dropped += status == "duplicate"
            if bar is not None:
                bar.advance(task)
        if attached and dropped:
            warnings.warn(
                f"{store.path}: {dropped} of its games with repaired values were dropped as duplicates; the "
                "manifest's per-column repair counts include theirs (rows keep only per-game totals)",
                stacklevel=3,
            )
        self.add_records(store.manifest)

    def add_records(self, manifest: dict) -> None:
        """A source's skip and duplicate records (a path stored or recorded already is not added again)."""
        for record in manifest["skipped"]:
            stored = any(record["path"] in paths for paths in self.stored.values())
            if not stored and record["path"] not in self.skipped:
                self.skipped[record["path"]] = dict(record)
                self.added["skipped"] += 1
        for record in manifest["duplicates"]:
            if record["path"] not in self.duplicates and record["path"] not in self.stored.get(record["md5"], set()):
                self.duplicates[record["path"]] = dict(record)
                self.added["duplicates"] += 1


def _progress(enabled: bool, total: int) -> Progress | nullcontext:
    if not enabled:
        return nullcontext()
    columns = (TextColumn("merging"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    return Progress(*columns, console=Console(stderr=True))


def merge_stores(
    sources: Sequence[str | Path],
    out: str | Path,
    *,
    shard_frames: int = 1_000_000,
    overwrite: bool = False,
    progress: bool = True,
) -> Store:
    """Merge the complete stores `sources` (in this order) into the store at `out`; returns it opened.

    Raises FileNotFoundError naming a source that is missing or incomplete, StoreConfigError naming the
    fields where sources (or an existing store at `out`) differ, ValueError when `out` is one of the sources.
    """
    if not sources:
        raise ValueError("merge_stores needs at least one source store")
    if shard_frames < 1:
        raise ValueError(f"shard_frames must be >= 1, got {shard_frames}")
    out = Path(out)
    stores = [open_store(path) for path in sources]
    same = [str(s.path) for s in stores if out.exists() and s.path.resolve() == out.resolve()]
    if same:
        raise ValueError(f"the output store {out} is also a source ({same[0]}); merge into a new folder")
    check_compatible(stores)
    first = stores[0]
    filters = StoreFilters(**first.manifest["filters"])
    out.mkdir(parents=True, exist_ok=True)
    shard_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="melee_wm-shard-writer")
    writer = _MergeWriter(out, first.config, filters, shard_frames, bool(first.manifest["dedupe"]), shard_writer)
    total = sum(s.num_games for s in stores)
    with _locked(out), shard_writer, _progress(progress, total) as bar:
        _prepare(out, writer, overwrite)
        task = bar.add_task("merge", total=total) if progress else None
        for store in stores:
            writer.add_store(store, bar if progress else None, task)
        writer.flush(last=True)
        merged = writer.written_store(writer.write_manifest(complete=True))
    if progress:
        print_summary(merged.manifest, Console(), added=writer.added)
    return merged
