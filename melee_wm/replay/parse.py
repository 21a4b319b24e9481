"""Parse one Slippi replay into per-player numpy arrays of the fields the encoder needs.

peppi-py returns every Frame event, rollback re-sends included; we keep the last row per frame id (the
finalized state). Ports are paired with `start.players` in order. Fields that a replay's Slippi version
predates are filled with the defaults in `FIELD_DEFAULTS` and named in `GameMeta.missing_fields`.
Player display names and connect codes are never read.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from melee_wm.constants import NUM_PLAYERS
from melee_wm.replay.plausibility import impossible_value

AIRBORNE_GROUND = 65535  # `post.ground` value peppi reports when a player stands on nothing

# Accessors from a peppi `Data` (pre + post of one player) to each parsed field. `None` anywhere on the path
# means the replay's format predates the field.
FIELD_ACCESSORS: dict[str, Callable[[Any], Any]] = {
    "joystick_x": lambda d: d.pre.joystick.x,
    "joystick_y": lambda d: d.pre.joystick.y,
    "cstick_x": lambda d: d.pre.cstick.x,
    "cstick_y": lambda d: d.pre.cstick.y,
    "trigger": lambda d: d.pre.triggers,
    "buttons": lambda d: d.pre.buttons,
    "character": lambda d: d.post.character,
    "state": lambda d: d.post.state,
    "x": lambda d: d.post.position.x,
    "y": lambda d: d.post.position.y,
    "direction": lambda d: d.post.direction,
    "percent": lambda d: d.post.percent,
    "shield": lambda d: d.post.shield,
    "last_attack_landed": lambda d: d.post.last_attack_landed,
    "combo_count": lambda d: d.post.combo_count,
    "stocks": lambda d: d.post.stocks,
    "state_age": lambda d: d.post.state_age,
    "state_flags": lambda d: d.post.state_flags,
    "misc_as": lambda d: d.post.misc_as,
    "airborne": lambda d: d.post.airborne,
    "ground": lambda d: d.post.ground,
    "jumps": lambda d: d.post.jumps,
    "l_cancel": lambda d: d.post.l_cancel,
    "hurtbox_state": lambda d: d.post.hurtbox_state,
    "vel_self_x_air": lambda d: d.post.velocities and d.post.velocities.self_x_air,
    "vel_self_y": lambda d: d.post.velocities and d.post.velocities.self_y,
    "vel_knockback_x": lambda d: d.post.velocities and d.post.velocities.knockback_x,
    "vel_knockback_y": lambda d: d.post.velocities and d.post.velocities.knockback_y,
    "vel_self_x_ground": lambda d: d.post.velocities and d.post.velocities.self_x_ground,
    "hitlag": lambda d: d.post.hitlag,
}

# Defaults for fields an old replay lacks (Slippi version that introduced them in the comment). Each value is
# what the game would show for a neutral, grounded, unhurt player; the field is listed in `missing_fields`.
FIELD_DEFAULTS: dict[str, float | int] = {
    "state_age": 0.0,  # 0.2
    "state_flags": 0,  # 2.0: no flags set
    "misc_as": 0.0,  # 2.0: so hitstun reads 0
    "airborne": 0,  # 2.0: grounded
    "ground": AIRBORNE_GROUND,  # 2.0: unknown ground, encoded like "no ground"
    "jumps": 0,  # 2.0
    "l_cancel": 0,  # 2.0: no l-cancel event
    "hurtbox_state": 0,  # 2.1: vulnerable
    "vel_self_x_air": 0.0,  # 3.5: no speed
    "vel_self_y": 0.0,
    "vel_knockback_x": 0.0,
    "vel_knockback_y": 0.0,
    "vel_self_x_ground": 0.0,
    "hitlag": 0.0,  # 3.8: no hitlag
}

# dtypes of parsed fields (state_flags is the 40-bit flag word).
FIELD_DTYPES: dict[str, type] = {
    "buttons": np.uint32,
    "character": np.uint8,
    "state": np.uint16,
    "last_attack_landed": np.uint8,
    "combo_count": np.uint8,
    "stocks": np.uint8,
    "state_flags": np.uint64,
    "airborne": np.uint8,
    "ground": np.uint16,
    "jumps": np.uint8,
    "l_cancel": np.uint8,
    "hurtbox_state": np.uint8,
}


class ReplayError(Exception):
    """A replay that cannot be used; `reason` is recorded in the store's skip list."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass
class GameMeta:
    """Per-game facts kept in the store manifest (no player names or codes)."""

    path: str
    md5: str
    slippi_version: str
    stage: int
    characters: tuple[int, int]  # external (character-select) ids, in port order
    ports: tuple[int, int]  # 0-based port numbers (P1 = 0)
    cpu_players: tuple[bool, bool]
    end_method: int | None  # None when the replay has no Game End event
    is_pal: bool | None
    num_frames: int  # unique frame ids, rollbacks removed
    first_frame: int
    missing_fields: list[str] = field(default_factory=list)


@dataclass
class ParsedGame:
    """One game: metadata plus, for each of the two players, {field: (num_frames,) array}."""

    meta: GameMeta
    players: tuple[dict[str, np.ndarray], dict[str, np.ndarray]]


def file_md5(path: str | Path) -> str:
    """md5 of a file's bytes (the game's identity for dedupe and the train/val split)."""
    return hashlib.md5(Path(path).read_bytes(), usedforsecurity=False).hexdigest()


class BackgroundMd5:
    """`file_md5`, overlapped: the file is opened and memory-mapped now (raising OSError if it cannot be), then
    hashed on a helper thread. hashlib releases the GIL for the whole call, so the hash runs on another core
    beside peppi's `read_slippi` of the same file, and the main thread never copies the bytes; `result()` waits
    for it. (As with any mapped file, one truncated while it is hashed would end the process with SIGBUS.)"""

    def __init__(self, path: str | Path) -> None:
        with open(path, "rb") as f:
            try:
                data: mmap.mmap | bytes = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except ValueError:  # an empty file cannot be mapped; it has no bytes to hash
                data = b""
        self._digest = hashlib.md5(usedforsecurity=False)
        # Thread.start returns once the thread runs; it keeps the GIL until hashlib releases it, so the hash is
        # already under way when the caller goes on. The thread drops the map when it ends.
        self._thread = threading.Thread(target=self._digest.update, args=(data,), daemon=True)
        self._thread.start()

    def result(self) -> str:
        self._thread.join()
        return self._digest.hexdigest()


def final_frame_indices(frame_ids: np.ndarray) -> np.ndarray:
    """Row index of the last occurrence of each frame id, in frame order.

    frame_ids: (rows,) as peppi returns them, rollback re-sends included. Raises ValueError if the ids left
    after dedupe are not one contiguous run.
    """
    reversed_ids = frame_ids[::-1]
    unique_ids, first_in_reversed = np.unique(reversed_ids, return_index=True)
    if len(unique_ids) and unique_ids[-1] - unique_ids[0] + 1 != len(unique_ids):
        raise ValueError(f"frame ids {unique_ids[0]}..{unique_ids[-1]} have gaps ({len(unique_ids)} unique)")
    return len(frame_ids) - 1 - first_in_reversed


def _final_rows(column: pa.Array, rows: np.ndarray | None) -> np.ndarray:
    """The finalized rows of one peppi column (`rows` None: the replay has no rollbacks, keep all).

    peppi's columns have no nulls, so `to_numpy` is a zero-copy view and numpy gathers the rows."""
    values = column.to_numpy()
    return values if rows is None else values[rows]


def _flag_word(parts: tuple[pa.Array, ...], rows: np.ndarray | None) -> np.ndarray:
    """Combine the 5 per-byte state-flag arrays into one uint64 word per frame."""
    word = np.zeros(len(parts[0]) if rows is None else len(rows), dtype=np.uint64)
    for byte_index, part in enumerate(parts):
        word |= _final_rows(part, rows).astype(np.uint64) << np.uint64(8 * byte_index)
    return word


def _player_arrays(data: Any, rows: np.ndarray | None, num_frames: int, missing: set[str]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, accessor in FIELD_ACCESSORS.items():
        dtype = FIELD_DTYPES.get(name, np.float32)
        column = accessor(data)
        if column is None:
            missing.add(name)
            out[name] = np.full(num_frames, FIELD_DEFAULTS[name], dtype=dtype)
        elif name == "state_flags":
            out[name] = _flag_word(column, rows)
        else:
            out[name] = _final_rows(column, rows).astype(dtype, copy=False)
    return out


@contextlib.contextmanager
def _stderr_into(sink: Any) -> Iterator[None]:
    """Point file descriptor 2 at the open file `sink` for the block. Rust's panic hook writes there directly:
    the panic's message and, with RUST_BACKTRACE set, a ~70-line backtrace per corrupt file."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(sink.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def read_quietly(path: Path) -> Any:
    """peppi's `read_slippi` with what it writes to stderr held back: dropped when it raises (a panic's message
    is in the exception, which becomes the skip reason), written out when it succeeds. Other threads writing to
    stderr meanwhile (a progress bar) are held back alike."""
    import peppi_py  # here, not at the top: importing the package's data types needs no replay parser

    with tempfile.TemporaryFile() as captured:
        with _stderr_into(captured):
            game = peppi_py.read_slippi(str(path))
        captured.seek(0)
        held = captured.read()
    if held:
        sys.stderr.write(held.decode(errors="replace"))
    return game


def parse_replay(path: str | Path, md5: str | BackgroundMd5 | None = None) -> ParsedGame:
    """Read a `.slp` file into a `ParsedGame`; raises `ReplayError` with a reason for unusable files.

    md5: the file's md5 when known; otherwise it is hashed in the background while peppi reads the file."""
    path = Path(path)
    if not path.is_file():
        raise ReplayError(path, "not a file")
    if md5 is None:
        with contextlib.suppress(OSError):  # an unreadable file is reported by peppi, just below
            md5 = BackgroundMd5(path)

    try:
        game = read_quietly(path)
    except OSError as err:
        raise ReplayError(path, f"unreadable by peppi: {err}") from None
    except BaseException as err:  # whatever else peppi raises on a malformed file, its Rust panics included
        if isinstance(err, (KeyboardInterrupt, SystemExit)) or not (
            isinstance(err, Exception) or type(err).__name__ == "PanicException"
        ):
            raise
        raise ReplayError(path, f"peppi failed: {type(err).__name__}: {err}") from None
    players = game.start.players
    if len(players) != NUM_PLAYERS:
        raise ReplayError(path, f"expected {NUM_PLAYERS} players, found {len(players)}")
    if game.frames is None or len(game.frames.id) == 0:
        raise ReplayError(path, "no frames")
    if len(game.frames.ports) != NUM_PLAYERS:
        raise ReplayError(path, f"expected frame data for {NUM_PLAYERS} ports, found {len(game.frames.ports)}")
    frame_ids = game.frames.id.to_numpy()
    try:
        rows_np = final_frame_indices(frame_ids)
    except ValueError as err:
        raise ReplayError(path, str(err)) from None
    has_rollbacks = not np.array_equal(rows_np, np.arange(len(frame_ids)))  # re-sent or reordered rows
    rows = rows_np if has_rollbacks else None
    missing: set[str] = set()
    arrays = tuple(_player_arrays(port.leader, rows, len(rows_np), missing) for port in game.frames.ports)
    first_frame = int(frame_ids[rows_np[0]])
    ports = (int(players[0].port), int(players[1].port))
    impossible = impossible_value(arrays, ports, first_frame)
    if impossible is not None:
        raise ReplayError(path, impossible)
    meta = GameMeta(
        path=str(path),
        md5=md5.result() if isinstance(md5, BackgroundMd5) else md5 or file_md5(path),
        slippi_version=".".join(str(v) for v in game.start.slippi.version),
        stage=int(game.start.stage),
        characters=(int(players[0].character), int(players[1].character)),
        ports=ports,
        cpu_players=tuple(int(p.type) == 1 for p in players),  # PlayerType.CPU
        end_method=None if game.end is None else int(game.end.method),
        is_pal=None if game.start.is_pal is None else bool(game.start.is_pal),
        num_frames=len(rows_np),
        first_frame=first_frame,
        missing_fields=sorted(missing),
    )
    return ParsedGame(meta=meta, players=arrays)  # type: ignore[arg-type]
