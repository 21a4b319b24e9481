"""Writing the encoded store, streaming and resumably (`build_store`): the worker pool, resuming, the manifest.

A shard is written under a temporary name, game by game as they arrive (on a helper thread, so only about two
games are in memory; `shard_writer.py`), and renamed when complete; the manifest, rewritten atomically after
each shard, lists only complete shards. A rerun of the same build skips the games the manifest holds, so a
killed run resumes where its last shard ended.
"""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import shutil
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from multiprocessing.pool import AsyncResult, Pool
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from melee_wm.data.column_stats import ColumnStats
from melee_wm.data.manifest import GameRow, StoreConfigError, StoreError
from melee_wm.data.pipeline import (
    FileProcessor,
    FileResult,
    KnownFile,
    SkippedFile,
    StoreFilters,
    find_replays,
    init_worker,
    process_in_worker,
)
from melee_wm.data.shard_writer import SHARD_PREFIX, TMP_PREFIX, OpenShard
from melee_wm.data.store import (
    MANIFEST,
    STORE_FORMAT_VERSION,
    Store,
    check_config,
    load_shard,
    map_shard,
    read_manifest,
)
from melee_wm.data.summary import print_summary
from melee_wm.encoding.config import ENCODER_VERSION, EncodingConfig, config_diff, format_config_diff
from melee_wm.encoding.encoder import ColumnMoments
from melee_wm.encoding.layout import Layout

LOCK_FILE = ".lock"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_json_atomic(path: Path, data: dict) -> str:
    """Write to a temporary file beside `path`, then rename over it (readers never see half a file); returns
    the text written. Compact JSON: only the unindented form uses json's C encoder (large game lists)."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}")
    text = json.dumps(data, separators=(",", ":"))  # dumps, not dump: only dumps uses the C encoder
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return text


@dataclass
class _PendingGame:
    """A game written into the open shard, kept until the shard is committed: its manifest row, repairs and
    column moments (its columns are already on disk)."""

    row: GameRow
    nonfinite: dict[str, int]
    clamped: dict[str, int]
    float_moments: ColumnMoments
    int_moments: ColumnMoments


def _is_store_entry(name: str) -> bool:
    return name in (MANIFEST, LOCK_FILE) or name.startswith((SHARD_PREFIX, TMP_PREFIX))


def _remove_unlisted(out: Path, listed: set[str]) -> None:
    """Delete temporary files and shard folders the manifest does not list (left by a killed run)."""
    for entry in out.iterdir():
        if entry.name.startswith(TMP_PREFIX) or (entry.name.startswith(SHARD_PREFIX) and entry.name not in listed):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def _clear_store(out: Path) -> None:
    """Remove a store: the manifest first (so nothing half-deleted is ever readable), then its shards."""
    (out / MANIFEST).unlink(missing_ok=True)
    _remove_unlisted(out, set())


@contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on the store folder so two builds cannot write it at once."""
    with open(out / LOCK_FILE, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(f"{out}: another build is writing this store") from None
        yield


class _Writer:
    """Main-process side of a build: collects worker results, writes shards, keeps the manifest current."""

    def __init__(
        self,
        out: Path,
        cfg: EncodingConfig,
        filters: StoreFilters,
        shard_frames: int,
        dedupe: bool,
        shard_writer: ThreadPoolExecutor,
    ):
        self.out = out
        self.shard_writer = shard_writer  # the thread that writes games into the open shard
        self.cfg = cfg
        self.layout = Layout(cfg)
        self.filters = filters
        self.shard_frames = shard_frames
        self.dedupe = dedupe
        self.created = _now()
        self.games: list[GameRow] = []  # committed (listed in the manifest)
        self.shards: list[dict] = []
        self.skipped: dict[str, dict] = {}  # path -> {path, md5, reason}
        self.duplicates: dict[str, dict] = {}  # path -> {path, md5}
        self.nonfinite: Counter = Counter()
        self.clamped: Counter = Counter()
        self.float_stats = ColumnStats(self.layout.num_floats)
        self.int_stats = ColumnStats(self.layout.num_ints)
        self.shard: OpenShard | None = None
        self.pending: list[_PendingGame] = []  # written into `shard`, not yet committed
        self.pending_frames = 0
        self.stored: dict[str, set[str]] = {}  # md5 -> paths, committed and pending
        self.added = Counter()  # what this run did: games, frames, skipped, duplicates

    def resume(self, manifest: dict) -> None:
        """Take over a previous build's committed state (its listed shards are re-read for the stats)."""
        self.created = manifest.get("created", self.created)
        self.games = [GameRow.from_dict(row, self.out) for row in manifest["games"]]
        self.shards = list(manifest["shards"])
        self.skipped = {r["path"]: r for r in manifest["skipped"]}
        self.duplicates = {r["path"]: r for r in manifest["duplicates"]}
        self.nonfinite.update(manifest["repairs"]["nonfinite"])
        self.clamped.update(manifest["repairs"]["clamped"])
        for row in self.games:
            self.stored.setdefault(row.md5, set()).add(row.path)
        for entry in self.shards:
            shard = load_shard(self.out / entry["name"], entry, self.layout)
            for start, end in zip(shard.game_offsets[:-1], shard.game_offsets[1:], strict=True):
                self.float_stats.update(shard.floats[start:end])
                self.int_stats.update(shard.ints[start:end])

    def add(self, result: FileResult) -> None:
        path = result.path
        if isinstance(result, SkippedFile):
            self.skipped[path] = {"path": path, "md5": result.md5, "reason": result.reason}
            self.added["skipped"] += 1
            return
        self.skipped.pop(path, None)
        known_paths = self.stored.get(result.md5, set())
        if path in known_paths or path in self.duplicates:
            return  # stored or counted by an earlier run
        if isinstance(result, KnownFile) or (self.dedupe and known_paths):
            self.duplicates[path] = {"path": path, "md5": result.md5}
            self.added["duplicates"] += 1
            return
        self.stored.setdefault(result.md5, set()).add(path)
        if self.shard is None:
            self.shard = OpenShard(self.out, len(self.shards), self.layout, self.shard_writer)
        offset = self.shard.append(result)
        row = GameRow.from_meta(
            result.meta,
            shard=self.shard.index,
            offset=offset,
            nonfinite=sum(result.nonfinite.values()),
            clamped=sum(result.clamped.values()),
        )
        self.pending.append(
            _PendingGame(row, result.nonfinite, result.clamped, result.float_moments, result.int_moments)
        )
        frames = result.float_columns.shape[1]
        self.pending_frames += frames
        self.added["games"] += 1
        self.added["frames"] += frames
        if self.pending_frames >= self.shard_frames:
            self.flush()

    def flush(self, last: bool = False) -> None:
        """Commit the open shard: finish its files, rename it into place, then list it and its games in the
        manifest (`last`: the caller writes the complete manifest next, so the interim one is skipped)."""
        if self.shard is None:
            return
        self.shard.commit(self.out / self.shard.name)
        for game in self.pending:
            self.games.append(game.row)
            self.nonfinite.update(game.nonfinite)
            self.clamped.update(game.clamped)
            self.float_stats.merge(game.float_moments)
            self.int_stats.merge(game.int_moments)
        self.shards.append({"name": self.shard.name, "frames": self.shard.offsets[-1], "games": len(self.pending)})
        self.shard = None
        self.pending = []
        self.pending_frames = 0
        if not last:
            self.write_manifest(complete=False)

    def manifest(self, complete: bool) -> dict:
        stats = self.float_stats.to_dict(self.layout.float_names)
        stats.update(self.int_stats.to_dict(self.layout.int_names))
        return {
            "format_version": STORE_FORMAT_VERSION,
            "encoder_version": ENCODER_VERSION,
            "encoding_config": self.cfg.to_dict(),
            "config_hash": self.cfg.config_hash(),
            "float_columns": self.layout.float_names,
            "int_columns": self.layout.int_names,
            "filters": self.filters.to_dict(),
            "dedupe": self.dedupe,
            "counts": {
                "games": len(self.games),
                "frames": sum(s["frames"] for s in self.shards),
                "skipped": len(self.skipped),
                "duplicates": len(self.duplicates),
                "shards": len(self.shards),
            },
            "column_stats": stats,
            "repairs": {
                "nonfinite": dict(sorted(self.nonfinite.items())),
                "clamped": dict(sorted(self.clamped.items())),
            },
            "games": [row.to_dict() for row in self.games],
            "skipped": list(self.skipped.values()),
            "duplicates": list(self.duplicates.values()),
            "shards": self.shards,
            "complete": complete,
            "created": self.created,
            "updated": _now(),
        }

    def write_manifest(self, complete: bool) -> str:
        """Write the manifest; returns its JSON text."""
        return _write_json_atomic(self.out / MANIFEST, self.manifest(complete))

    def written_store(self, manifest_text: str) -> Store:
        """The store as `open_store` would return it, from the manifest text just written and the shards this
        writer made or resumed (it knows they agree, so nothing is re-read or re-checked but the arrays' maps)."""
        manifest = json.loads(manifest_text)  # what the file holds, so `store.manifest` equals it exactly
        return Store(
            path=self.out,
            manifest=manifest,
            config=EncodingConfig.from_dict(manifest["encoding_config"]),
            layout=self.layout,
            shards=[map_shard(self.out / entry["name"]) for entry in self.shards],
            games=[GameRow.from_dict(row, self.out) for row in manifest["games"]],
        )


def _prepare(out: Path, writer: _Writer, overwrite: bool) -> None:
    """Make `out` ready: fresh, overwritten, or resumed from its manifest (refusing a different config)."""
    if (out / MANIFEST).is_file() and not overwrite:
        manifest = read_manifest(out)
        check_config(out, manifest, writer.cfg, "\nuse overwrite (--overwrite) to rebuild it")
        if manifest.get("format_version") != STORE_FORMAT_VERSION or manifest.get("encoder_version") != ENCODER_VERSION:
            raise StoreConfigError(
                f"store {out} has format_version {manifest.get('format_version')} / encoder_version "
                f"{manifest.get('encoder_version')}, this code writes {STORE_FORMAT_VERSION} / {ENCODER_VERSION}; "
                "use overwrite (--overwrite) to rebuild it"
            )
        diff = config_diff(
            {**writer.filters.to_dict(), "dedupe": writer.dedupe},
            {**manifest["filters"], "dedupe": manifest.get("dedupe")},
        )
        if diff:
            raise StoreConfigError(
                f"store {out} was built with different filters or dedupe; differing fields:\n"
                + format_config_diff(diff, "requested", "store")
                + "\nuse overwrite (--overwrite) to rebuild it"
            )
        _remove_unlisted(out, {s["name"] for s in manifest["shards"]})
        writer.resume(manifest)
        return
    foreign = sorted(e.name for e in out.iterdir() if not _is_store_entry(e.name))
    if foreign:
        raise StoreError(f"{out} exists and is not an encoded store (it holds {foreign[:5]}); refusing to write there")
    _clear_store(out)  # no manifest until the first shard is committed: there is nothing to list or resume yet


def _bounded_in_order(pool: Pool, files: list[str], in_flight: int) -> Iterator[FileResult]:
    """Results of `process_in_worker` over `files`, in order, with at most `in_flight` files submitted and not
    yet consumed: fast workers wait for the writer instead of piling encoded games up in memory."""
    pending: deque[AsyncResult] = deque()
    for path in files:
        if len(pending) == in_flight:
            yield pending.popleft().get()
        pending.append(pool.apply_async(process_in_worker, (path,)))
    while pending:
        yield pending.popleft().get()


def _progress(enabled: bool, console: Console) -> Progress | nullcontext:
    if not enabled:
        return nullcontext()
    columns = (TextColumn("encoding"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    return Progress(*columns, console=console)


def build_store(
    replays: Sequence[str | Path],
    out: str | Path,
    cfg: EncodingConfig,
    filters: StoreFilters | None = None,
    *,
    workers: int = 1,
    shard_frames: int = 1_000_000,
    overwrite: bool = False,
    dedupe: bool = True,
    progress: bool = True,
) -> Store:
    """Encode replay files and folders (searched recursively for `*.slp`) into the store at `out`.

    Memory stays flat in the number of games (one shard of `shard_frames` frames is buffered). A rerun resumes
    an interrupted or finished build with the same config and filters; a different config is refused
    (StoreConfigError naming the fields) unless `overwrite`. Unusable and filtered files become skip
    records with a reason. Returns the opened store.
    """
    if shard_frames < 1 or workers < 1:
        raise ValueError(f"shard_frames and workers must be >= 1, got {shard_frames} and {workers}")
    files = [str(p) for p in find_replays(replays)]
    if not files:
        raise FileNotFoundError(f"no *.slp replay files under {[str(p) for p in replays]}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    filters = filters or StoreFilters()
    shard_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="melee_wm-shard-writer")
    writer = _Writer(out, cfg, filters, shard_frames, dedupe, shard_writer)
    with _locked(out), shard_writer:
        _prepare(out, writer, overwrite)
        processor = FileProcessor(cfg, filters, {m: set(p) for m, p in writer.stored.items()}, dedupe)
        if workers == 1:
            pool = None
            results = map(processor, files)
        else:
            context = multiprocessing.get_context("spawn")
            pool = context.Pool(min(workers, len(files)), initializer=init_worker, initargs=(processor,))
            results = _bounded_in_order(pool, files, 2 * workers)
        try:
            with _progress(progress, Console(stderr=True)) as bar:
                task = bar.add_task("encode", total=len(files)) if progress else None
                for result in results:
                    writer.add(result)
                    if progress:
                        bar.advance(task)
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
        writer.flush(last=True)
        store = writer.written_store(writer.write_manifest(complete=True))
    if progress:
        print_summary(store.manifest, Console(), added=writer.added)
    return store
