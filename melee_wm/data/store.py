"""The encoded store on disk, and reading it: `manifest.json` + shards of memory-mappable arrays.

Layout: `STORE/manifest.json`, `STORE/shard_00000/{floats.npy, ints.npy, game_offsets.npy}`, ... The manifest
lists only complete shards, and `open_store` reads only those. Writing lives in `store_writer.py`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from melee_wm.data.manifest import GameRow, StoreConfigError, StoreError
from melee_wm.encoding.config import EncodingConfig, config_diff, format_config_diff
from melee_wm.encoding.layout import Layout

__all__ = [
    "MANIFEST",
    "STORE_FORMAT_VERSION",
    "GameRow",
    "Shard",
    "Store",
    "StoreConfigError",
    "StoreError",
    "open_store",
]

STORE_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FLOAT_DTYPE = np.dtype(np.float32)
INT_DTYPE = np.dtype(np.int16)


@dataclass
class Shard:
    """floats: (frames, num_floats) float32 memmap; ints: (frames, num_ints) int16 memmap;
    game_offsets: (games + 1,) int64, from 0 to frames."""

    floats: np.ndarray
    ints: np.ndarray
    game_offsets: np.ndarray


@dataclass
class Store:
    """An opened store. `games` are the manifest's game rows in store order; `manifest` is its parsed JSON."""

    path: Path
    manifest: dict
    config: EncodingConfig
    layout: Layout
    shards: list[Shard]
    games: list[GameRow]

    @property
    def num_games(self) -> int:
        """Games in the store, across all shards."""
        return len(self.games)

    @property
    def num_frames(self) -> int:
        """Frames in the store, across all shards."""
        return sum(len(s.floats) for s in self.shards)

    def game(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(floats (length, F), ints (length, I)) views of game `index` in store order."""
        row = self.games[index]
        shard = self.shards[row.shard]
        rows = slice(row.offset, row.offset + row.length)
        return shard.floats[rows], shard.ints[rows]


def read_manifest(path: Path) -> dict:
    """The parsed manifest.json of the store at `path` (a StoreError names the file if it is not JSON)."""
    try:
        return json.loads((path / MANIFEST).read_text())
    except json.JSONDecodeError as err:
        raise StoreError(f"{path / MANIFEST}: not valid JSON ({err})") from None


def load_shard(folder: Path, entry: dict, layout: Layout) -> Shard:
    """Memory-map one shard and check its arrays against the manifest entry and the layout."""
    try:
        floats = np.load(folder / "floats.npy", mmap_mode="r")
        ints = np.load(folder / "ints.npy", mmap_mode="r")
        offsets = np.load(folder / "game_offsets.npy")
    except (OSError, ValueError) as err:
        raise StoreError(f"{folder}: unreadable shard ({err})") from None
    frames, games = entry["frames"], entry["games"]
    expected = {
        "floats": ((frames, layout.num_floats), FLOAT_DTYPE, floats),
        "ints": ((frames, layout.num_ints), INT_DTYPE, ints),
        "game_offsets": ((games + 1,), np.dtype(np.int64), offsets),
    }
    for name, (shape, dtype, array) in expected.items():
        if array.shape != shape or array.dtype != dtype:
            raise StoreError(
                f"{folder / name}.npy: shape {array.shape} {array.dtype}, manifest expects {shape} {dtype}"
            )
    if offsets[0] != 0 or offsets[-1] != frames or (np.diff(offsets) < 0).any():
        raise StoreError(f"{folder}/game_offsets.npy: must rise from 0 to {frames}, got {offsets.tolist()[:8]}...")
    return Shard(floats=floats, ints=ints, game_offsets=offsets)


def _check_games(path: Path, games: list[GameRow], shards: list[Shard]) -> None:
    """Every game row must match its shard's game_offsets, shard by shard, in order."""
    by_shard: dict[int, list[GameRow]] = {}
    for row in games:
        by_shard.setdefault(row.shard, []).append(row)
    for index, shard in enumerate(shards):
        rows = by_shard.pop(index, [])
        starts = [r.offset for r in rows]
        lengths = [r.length for r in rows]
        if starts != shard.game_offsets[:-1].tolist() or lengths != np.diff(shard.game_offsets).tolist():
            raise StoreError(f"{path / MANIFEST}: game rows of shard {index} disagree with its game_offsets.npy")
    if by_shard:
        raise StoreError(f"{path / MANIFEST}: game rows name shards {sorted(by_shard)} that are not listed")


def check_config(path: Path, manifest: dict, expected: EncodingConfig, hint: str = "") -> None:
    """Raise a StoreConfigError listing every field where the store's encoding config differs from `expected`."""
    diff = config_diff(expected, manifest["encoding_config"])
    if diff:
        raise StoreConfigError(
            f"store {path} was encoded with a different EncodingConfig; differing fields:\n"
            + format_config_diff(diff, "expected", "store")
            + hint
        )


def map_shard(folder: Path) -> Shard:
    """Memory-map one shard this process has just written (no checks: the writer made it from its own state)."""
    return Shard(
        floats=np.load(folder / "floats.npy", mmap_mode="r"),
        ints=np.load(folder / "ints.npy", mmap_mode="r"),
        game_offsets=np.load(folder / "game_offsets.npy"),
    )


def open_store(path: str | Path, expected_config: EncodingConfig | None = None) -> Store:
    """Open a complete store, memory-mapping its listed shards.

    Raises FileNotFoundError naming the path when there is no complete manifest, StoreConfigError listing
    the differing fields when `expected_config` differs from the store's, StoreError when arrays and
    manifest disagree.
    """
    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise FileNotFoundError(f"{path}: no {MANIFEST}, not an encoded store (build one with `melee-wm encode`)")
    manifest = read_manifest(path)
    if not manifest.get("complete"):
        raise FileNotFoundError(
            f"{path}: the store is incomplete (its build was interrupted); rerun the same build to finish it"
        )
    if manifest.get("format_version") != STORE_FORMAT_VERSION:
        raise StoreError(
            f"{path / MANIFEST}: format_version {manifest.get('format_version')}, expected {STORE_FORMAT_VERSION}"
        )
    if expected_config is not None:
        check_config(path, manifest, expected_config)
    config = EncodingConfig.from_dict(manifest["encoding_config"])
    layout = Layout(config)
    for kind, names in (("float_columns", layout.float_names), ("int_columns", layout.int_names)):
        if manifest[kind] != names:
            raise StoreError(f"{path / MANIFEST}: {kind} differ from the layout of its own encoding_config")
    shards = [load_shard(path / entry["name"], entry, layout) for entry in manifest["shards"]]
    games = [GameRow.from_dict(row, path) for row in manifest["games"]]
    _check_games(path, games, shards)
    return Store(path=path, manifest=manifest, config=config, layout=layout, shards=shards, games=games)
