"""Writing one shard of the store: `.npy` files appended game by game under a temporary folder name, renamed
into place when the shard is complete (so a killed build never leaves half a shard under a shard's name)."""

from __future__ import annotations

import os
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from melee_wm.data.manifest import StoreError
from melee_wm.data.pipeline import EncodedFile
from melee_wm.data.store import FLOAT_DTYPE, INT_DTYPE
from melee_wm.encoding.layout import Layout

SHARD_PREFIX = "shard_"
TMP_PREFIX = ".tmp_"  # shards being written, and the manifest while it is replaced
WRITE_BLOCK_ROWS = 2048  # rows transposed per block when a shard is written; the buffer stays in cache


def shard_name(index: int) -> str:
    """The folder name of shard `index`."""
    return f"{SHARD_PREFIX}{index:05d}"


class NpyAppender:
    """A (rows, columns) .npy file written part by part: each part (columns, rows), one column per row, is
    transposed block by block through a small reused buffer. The header, first written for 0 rows, is rewritten
    with the final row count by `close` (both pad to the same 64-byte multiple)."""

    def __init__(self, path: Path, dtype: np.dtype, columns: int) -> None:
        self.path, self.dtype, self.columns, self.rows = path, dtype, columns, 0
        self.buffer = np.empty((WRITE_BLOCK_ROWS, columns), dtype=dtype)
        self.file = open(path, "wb")  # noqa: SIM115 (closed by `close`)
        self._write_header()
        self.data_start = self.file.tell()

    def _write_header(self) -> None:
        descr = np.lib.format.dtype_to_descr(self.dtype)
        header = {"descr": descr, "fortran_order": False, "shape": (self.rows, self.columns)}
        np.lib.format.write_array_header_1_0(self.file, header)

    def append(self, part: np.ndarray) -> None:
        if part.shape[0] != self.columns:
            raise ValueError(f"{self.path}: a game has {part.shape[0]} columns, expected {self.columns}")
        for start in range(0, part.shape[1], WRITE_BLOCK_ROWS):
            block = self.buffer[: min(WRITE_BLOCK_ROWS, part.shape[1] - start)]
            np.copyto(block, part[:, start : start + len(block)].T)
            self.file.write(memoryview(block).cast("B"))
        self.rows += part.shape[1]

    def close(self) -> None:
        self.file.seek(0)
        self._write_header()
        if self.file.tell() != self.data_start:
            raise StoreError(f"{self.path}: the header for {self.rows} rows outgrew the space written for it")
        self.file.close()


class OpenShard:
    """The next shard, written under its temporary name as games arrive. Each game is transposed and written on
    the `writer` thread (numpy copies and file writes release the GIL) while the caller encodes the next; at most
    one write is in flight, so two games at most are in memory."""

    def __init__(self, out: Path, index: int, layout: Layout, writer: ThreadPoolExecutor) -> None:
        self.index, self.name = index, shard_name(index)
        self.writer = writer
        self.writing: Future | None = None
        self.tmp = out / f"{TMP_PREFIX}{self.name}"
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir()
        self.floats = NpyAppender(self.tmp / "floats.npy", FLOAT_DTYPE, layout.num_floats)
        self.ints = NpyAppender(self.tmp / "ints.npy", INT_DTYPE, layout.num_ints)
        self.offsets = [0]

    def append(self, game: EncodedFile) -> int:
        """Start writing one game's columns (after the previous game's write ends); returns its row offset."""
        self._wait()
        self.writing = self.writer.submit(self._write, game.float_columns, game.int_columns)
        self.offsets.append(self.offsets[-1] + game.float_columns.shape[1])
        return self.offsets[-2]

    def _write(self, floats: np.ndarray, ints: np.ndarray) -> None:
        self.floats.append(floats)
        self.ints.append(ints)

    def _wait(self) -> None:
        """Wait for the write in flight, raising its error."""
        if self.writing is not None:
            writing, self.writing = self.writing, None
            writing.result()

    def commit(self, folder: Path) -> None:
        """Finish the files and rename the shard into place as `folder`."""
        self._wait()
        self.floats.close()
        self.ints.close()
        np.save(self.tmp / "game_offsets.npy", np.array(self.offsets, dtype=np.int64))
        os.rename(self.tmp, folder)
