"""The per-file half of store building: find replay files, then md5 -> parse -> filter -> encode one of them
(the md5 is hashed on a helper thread while peppi reads the file).

`FileProcessor` is what each worker process runs (one file per task); the store writer in
`melee_wm.data.store_writer` only collects its results, so nothing here touches the store on disk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from melee_wm.encoding.config import EncodingConfig
from melee_wm.encoding.encoder import ColumnMoments, encode_columns
from melee_wm.encoding.layout import Layout
from melee_wm.replay.parse import BackgroundMd5, GameMeta, ReplayError, parse_replay

REPLAY_SUFFIX = ".slp"


@dataclass
class StoreFilters:
    """Which games `build_store` keeps; recorded in the manifest. Character ids are external (CSS) ids."""

    stages: list[int] | None = None  # Slippi stage ids; None = all
    characters: list[int] | None = None  # both players must be in the set
    end_methods: list[int] | None = None
    min_frames: int = 0
    allow_cpu: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    def reason(self, meta: GameMeta) -> str | None:
        """Why `meta`'s game is filtered out (naming the filter and the value), or None when it is kept."""
        if self.stages is not None and meta.stage not in self.stages:
            return f"filtered: stage {meta.stage} not in stages {sorted(self.stages)}"
        if self.characters is not None and not all(c in self.characters for c in meta.characters):
            return f"filtered: characters {list(meta.characters)} not all in characters {sorted(self.characters)}"
        if self.end_methods is not None and meta.end_method not in self.end_methods:
            return f"filtered: end_method {meta.end_method} not in end_methods {sorted(self.end_methods)}"
        if meta.num_frames < self.min_frames:
            return f"filtered: {meta.num_frames} frames < min_frames {self.min_frames}"
        if not self.allow_cpu and any(meta.cpu_players):
            return f"filtered: CPU player in ports {list(meta.cpu_players)} (allow_cpu is false)"
        return None


@dataclass
class EncodedFile:
    """A kept game: its metadata (the store adds its position to make the manifest row); its columns, one per
    row (the store transposes them while writing): float_columns (F, T) float32, int_columns (I, T) int16; and
    their moments."""

    path: str
    md5: str
    meta: GameMeta
    float_columns: np.ndarray
    int_columns: np.ndarray
    float_moments: ColumnMoments
    int_moments: ColumnMoments
    nonfinite: dict[str, int] = field(default_factory=dict)
    clamped: dict[str, int] = field(default_factory=dict)


@dataclass
class SkippedFile:
    """A file that is not stored, with the reason (peppi's error, the filter that dropped it, ...)."""

    path: str
    md5: str | None
    reason: str


@dataclass
class KnownFile:
    """A file whose md5 the store already holds (stored earlier, or a duplicate when deduplicating)."""

    path: str
    md5: str


FileResult = EncodedFile | SkippedFile | KnownFile


def find_replays(paths: Sequence[str | Path]) -> list[Path]:
    """Absolute replay paths: files as given, folders searched recursively for `*.slp` (sorted).

    Raises FileNotFoundError naming every path that does not exist, before anything is read. A file reached
    twice is listed once.
    """
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise FileNotFoundError("replay path not found: " + ", ".join(missing))
    found: dict[Path, None] = {}
    for p in paths:
        p = Path(p).resolve()
        if p.is_dir():
            found.update((f, None) for f in sorted(p.rglob(f"*{REPLAY_SUFFIX}")) if f.is_file())
        else:
            found[p] = None
    return list(found)


class FileProcessor:
    """md5 -> (known?) -> parse -> filter -> encode for one file; picklable, so it can ship to workers.

    known: md5 -> paths of games already in the store. A file whose md5 is known is not parsed again when
    deduplicating, or when it is the same path (without dedupe, a copy under another name is a new game).
    """

    def __init__(self, cfg: EncodingConfig, filters: StoreFilters, known: dict[str, set[str]], dedupe: bool) -> None:
        self.cfg = cfg
        self.layout = Layout(cfg)
        self.filters = filters
        self.known = known
        self.dedupe = dedupe

    def __call__(self, path: str) -> FileResult:
        try:
            md5 = BackgroundMd5(path)  # hashed on a helper thread while peppi reads the file
        except OSError as err:
            return SkippedFile(path, None, f"unreadable: {err.strerror or err}")
        if self.known:  # settle the md5 first, so a file the store already holds is not parsed again
            digest = md5.result()
            if digest in self.known and (self.dedupe or path in self.known[digest]):
                return KnownFile(path, digest)
        try:
            parsed = parse_replay(path, md5=md5)
            reason = self.filters.reason(parsed.meta)
            if reason is not None:
                return SkippedFile(path, parsed.meta.md5, reason)
            encoded = encode_columns(parsed, self.cfg, self.layout)
        except ReplayError as err:  # a bad replay is skipped and recorded; a bug in our own code stops the build
            return SkippedFile(path, md5.result(), err.reason)
        return EncodedFile(
            path=path,
            md5=parsed.meta.md5,
            meta=parsed.meta,
            float_columns=encoded.floats,
            int_columns=encoded.ints,
            float_moments=encoded.float_moments,
            int_moments=encoded.int_moments,
            nonfinite=dict(encoded.stats.nonfinite),
            clamped=dict(encoded.stats.clamped),
        )


_worker_processor: FileProcessor | None = None


def init_worker(processor: FileProcessor) -> None:
    """Pool initializer: keep the processor in the worker so each task ships only a path."""
    global _worker_processor
    _worker_processor = processor


def process_in_worker(path: str) -> FileResult:
    assert _worker_processor is not None, "init_worker was not called in this process"
    return _worker_processor(path)
