"""Encode pipeline speed vs peppi alone, and peak memory of encoding N vs 4N game files.

Throughput: the same files, side by side and interleaved: peppi's `read_slippi` alone, then the whole
md5 -> parse -> encode -> shard write -> manifest pipeline (`build_store`, workers=1: one process, whose md5
runs on a helper thread beside peppi's read of the same file, and whose shard writes, each game's transpose and
file write, run on another thread while the next file is parsed and encoded). Both are counted in unique
(stored) frames per second; the summary ratio is pipeline / peppi (target >= 0.5), by median wall time. Each
build writes a fresh folder, deleted after its timing stops (no previous store is cleared in the timed region).
CPU times are reported beside: the main thread's (`time.thread_time`) and the process's (all threads); on a
machine whose other core is busy, the helper threads share the main thread's core and wall follows the latter.

Memory: a fresh subprocess per build reports its own peak RSS (`ru_maxrss`) after encoding N copies of the
samples, or 4N (distinct names, dedupe off, the same `shard_frames`); ratio 4N / N (target <= 1.10).
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import peppi_py

from melee_wm.data.store_writer import build_store
from melee_wm.encoding.config import EncodingConfig
from melee_wm.samples import sample_paths

from ._common import record, summary

RSS_SHARD_FRAMES = 20_000  # below one sample set's 39,188 frames, so N already fills a shard
RSS_CHILD = """
import json, resource, sys
from melee_wm.data.store_writer import build_store
from melee_wm.encoding.config import EncodingConfig
store = build_store([sys.argv[1]], sys.argv[2], EncodingConfig(), workers=1, shard_frames=int(sys.argv[3]),
                    dedupe=False, progress=False)
peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"games": store.num_games, "frames": store.num_frames, "peak_rss_mib": peak_kib / 1024}))
"""


def _clocks() -> tuple[float, float, float]:
    return time.perf_counter(), time.thread_time(), time.process_time()


def _since(start: tuple[float, float, float]) -> tuple[float, float, float]:
    """(wall, main-thread CPU, process CPU) seconds since `start`."""
    return tuple(now - then for now, then in zip(_clocks(), start, strict=True))


def _peppi_seconds(files: list[Path]) -> tuple[float, float, float]:
    start = _clocks()
    for path in files:
        peppi_py.read_slippi(str(path))
    return _since(start)


def _pipeline_seconds(files: list[Path], out: Path) -> tuple[tuple[float, float, float], int]:
    """((wall, main-thread CPU, process CPU) seconds, frames) of one build into the fresh folder `out`, which
    is deleted after the clocks stop."""
    start = _clocks()
    store = build_store(files, out, EncodingConfig(), workers=1, progress=False)
    seconds = _since(start)
    frames = store.num_frames
    del store  # drop the memory maps before the folder goes
    shutil.rmtree(out)
    return seconds, frames


def _copies(files: list[Path], folder: Path, copies: int) -> Path:
    folder.mkdir(parents=True)
    for i in range(copies):
        for path in files:
            shutil.copyfile(path, folder / f"{i:03d}_{path.name}")
    return folder


def _peak_rss(folder: Path, out: Path) -> dict:
    cmd = [sys.executable, "-c", RSS_CHILD, str(folder), str(out), str(RSS_SHARD_FRAMES)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    shutil.rmtree(out)
    return json.loads(result.stdout.strip().splitlines()[-1])


def run(quick: bool) -> Iterator[dict]:
    files = sample_paths()
    repeats = 5 if quick else 25
    base_copies = 1 if quick else 2
    with tempfile.TemporaryDirectory(prefix="melee_wm_bench_") as tmp:
        tmp = Path(tmp)
        small = _copies(files, tmp / "n", base_copies)
        large = _copies(files, tmp / "4n", 4 * base_copies)
        peaks: dict[str, list[float]] = {"n": [], "4n": []}
        for _ in range(3):
            for name, folder in (("n", small), ("4n", large)):
                peak = _peak_rss(folder, tmp / f"store_{name}")
                peaks[name].append(peak["peak_rss_mib"])
                yield record("peak_rss", files=name, **peak)
        rss_n, rss_4n = statistics.median(peaks["n"]), statistics.median(peaks["4n"])
        rss_ratio = rss_4n / rss_n
        yield record(
            "peak_rss_4n_over_n",
            shard_frames=RSS_SHARD_FRAMES,
            rss_n_mib=round(rss_n, 1),
            rss_4n_mib=round(rss_4n, 1),
            ratio=round(rss_ratio, 3),
            target=1.10,
            goal="<=",
            passed=rss_ratio <= 1.10,
        )

        _peppi_seconds(files)  # warm the page cache and imports for both sides
        _pipeline_seconds(files, tmp / "store_warm")
        peppi_s, pipeline_s = [], []
        frames = 0
        for i in range(repeats):
            peppi_s.append(_peppi_seconds(files))
            seconds, frames = _pipeline_seconds(files, tmp / f"store_{i}")
            pipeline_s.append(seconds)
        peppi_wall, peppi_thread, peppi_cpu = (statistics.median(s) for s in zip(*peppi_s, strict=True))
        wall, thread, cpu = (statistics.median(s) for s in zip(*pipeline_s, strict=True))
        ratio = peppi_wall / wall  # = pipeline frames/s over peppi frames/s
        yield record(
            "frames_per_s",
            files=len(files),
            frames=frames,
            repeats=repeats,
            workers=1,
            md5_thread=True,  # the pipeline hashes each file on a helper thread while peppi reads it
            shard_writer_thread=True,  # and writes each game into the shard on another, beside the next file
            peppi_ms={
                "wall": round(peppi_wall * 1e3, 1),
                "main_cpu": round(peppi_thread * 1e3, 1),
                "process_cpu": round(peppi_cpu * 1e3, 1),
            },
            pipeline_ms={
                "wall": round(wall * 1e3, 1),
                "main_cpu": round(thread * 1e3, 1),
                "process_cpu": round(cpu * 1e3, 1),
            },
            ratio_main_cpu=round(peppi_thread / thread, 3),
            peppi_fps=round(frames / peppi_wall),
            pipeline_fps=round(frames / wall),
            ratio=round(ratio, 3),
            target=0.5,
            goal=">=",
            passed=ratio >= 0.5,
        )
        yield summary(
            ratio=round(ratio, 3),
            target=0.5,
            passed=ratio >= 0.5 and rss_ratio <= 1.10,
            rss_4n_over_n=round(rss_ratio, 3),
            rss_target=1.10,
            checks={"pipeline_vs_peppi": ratio >= 0.5, "flat_memory": rss_ratio <= 1.10},
        )
