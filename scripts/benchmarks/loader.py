"""Batch loading from a memory-mapped store: `get_batch` against memcpy, per-sample loading and a train step.

On a store of ~2M frames (hard-linked copies of the sample replays, dedupe off; built once into a cache
folder, `MELEE_WM_BENCH_CACHE` or the temp dir) it measures, interleaved and repeated (medians of per-round
ratios):
- the bytes/s `get_batch` gathers (batch 512, K = 30; sorted batches on one thread, as a DataLoader worker
  runs it) as a share of single-threaded `numpy.copyto` bandwidth: the summary ratio, target >= 0.3; the
  rate with all of torch's threads (on a busy 2-core machine torch's parallel copy loses more to contention
  than it gains) and that of a plain advanced-index gather of raw rows (no targets) are reported beside it;
- samples/s of `get_batch` against per-sample `__getitem__` + default collation: target >= 5x;
- the private (anonymous) memory of two DataLoader workers while they gather from the memmaps: flat after
  warm-up (memmap pages are shared page cache; copies would be private and grow with what was read);
- batch assembly time as a share of one mamba2_base training step (target <= 5%).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import torch
from torch.utils.data import DataLoader, default_collate

from melee_wm.data.batch import Batch
from melee_wm.data.config import DataConfig
from melee_wm.data.datamodule import BatchItems
from melee_wm.data.dataset import MeleeDataset
from melee_wm.data.sampler import WindowBatchSampler
from melee_wm.data.store import open_store
from melee_wm.data.store_writer import build_store
from melee_wm.encoding.config import EncodingConfig
from melee_wm.encoding.layout import Layout
from melee_wm.model.build import build_model
from melee_wm.model.config import load_model_config
from melee_wm.paths import config_dir
from melee_wm.samples import sample_dir

from ._common import median_time, record, stand_in_loss, summary

BATCH = 512
CONTEXT = 30
TARGET = 0.3
SPEEDUP_TARGET = 5.0
STEP_SHARE_TARGET = 0.05
PRESET = config_dir() / "model" / "mamba2_base.yaml"


def cache_root() -> Path:
    return Path(os.environ.get("MELEE_WM_BENCH_CACHE", Path(tempfile.gettempdir()) / "melee_wm_bench"))


MMAP_THRESHOLD_ENV = "MALLOC_MMAP_THRESHOLD_"


def cached_store(frames: int, cfg: EncodingConfig) -> Path:
    """A store of >= `frames` frames of repeated sample games (dedupe off), built once and reused."""
    root = cache_root()
    out = root / f"loader_store_{frames}"
    try:
        open_store(out, expected_config=cfg)
        return out
    except (FileNotFoundError, ValueError):
        shutil.rmtree(out, ignore_errors=True)
    base = root / "replays" / "copy_0000"
    base.mkdir(parents=True, exist_ok=True)
    for p in sorted(sample_dir().glob("*.slp")):
        if not (base / p.name).exists():
            shutil.copyfile(p, base / p.name)
    per_copy = build_store([base], root / "base_store", cfg, overwrite=True, progress=False).num_frames
    copies = math.ceil(frames / per_copy)
    folders = []
    for c in range(copies):
        folder = root / "replays" / f"copy_{c:04d}"
        folder.mkdir(exist_ok=True)
        for p in base.iterdir():
            if not (folder / p.name).exists():
                os.link(p, folder / p.name)  # a distinct path to the same bytes: kept, since dedupe is off
        folders.append(folder)
    build_store(folders, out, cfg, workers=2, dedupe=False, overwrite=True, progress=False)
    return out


def private_and_file_mib(pid: int) -> tuple[float, float]:
    """(Private_Dirty, Pss_File) of a process in MiB: its own anonymous pages, and its share of file pages."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":")
        fields[key] = int(value.split()[0]) / 1024
    return fields["Private_Dirty"], fields["Pss_File"]


def worker_memory(ds: MeleeDataset, batches: int, window_bytes: int) -> dict:
    """Private (anonymous, dirty) memory of 2 DataLoader workers after a warm-up, half-way and at the end of
    `batches` batches. Memmap pages are file pages shared through the page cache, so gathering must leave the
    private memory flat once the allocator has warmed up (a copy of the arrays would add the store's size)."""
    sampler = WindowBatchSampler(len(ds), BATCH, seed=1)
    loader = DataLoader(
        BatchItems(ds),
        batch_size=None,
        sampler=sampler,
        num_workers=2,
        persistent_workers=True,
        multiprocessing_context="fork",  # Linux's default, which the DataModule gets
    )
    others = {p.pid for p in psutil.Process().children(recursive=True)}
    it = iter(loader)
    marks = []
    for step in range(batches + 1):
        next(it)
        if step == 0:
            workers = [p.pid for p in psutil.Process().children() if p.pid not in others]
        if step in (batches // 5, batches // 2, batches):
            marks.append([private_and_file_mib(w) for w in workers])
    del it, loader
    warm, half, end = ([m[0] for m in mark] for mark in marks)
    return {
        "workers": len(workers),
        "batches": batches,
        "gathered_mib_per_worker": batches / len(workers) * BATCH * window_bytes / 2**20,
        "worker_private_mib_warm_half_end": [warm, half, end],
        "worker_pss_file_mib_end": [m[1] for m in marks[-1]],
        "growth_second_half_mib": max(e - h for e, h in zip(end, half, strict=True)),
        "growth_warm_to_end_mib": max(e - w for e, w in zip(end, warm, strict=True)),
    }


def worker_memory_fresh(store: str, batches: int, window_bytes: int) -> dict:
    """`worker_memory` in a freshly spawned process. Fresh, because forked workers of a large parent dirty (copy
    on write) the parent's free heap pages as they allocate. With glibc's mmap threshold pinned low, each
    batch's buffers go back to the system when freed instead of fragmenting the heap, so what remains in a
    worker's private memory is only what it keeps — a copy of the store would show there in full."""
    ctx = multiprocessing.get_context("spawn")
    saved = os.environ.get(MMAP_THRESHOLD_ENV)
    os.environ[MMAP_THRESHOLD_ENV] = str(1 << 20)
    try:
        with ProcessPoolExecutor(1, mp_context=ctx) as pool:
            return pool.submit(_worker_memory_of_store, store, batches, window_bytes).result()
    finally:
        if saved is None:
            del os.environ[MMAP_THRESHOLD_ENV]
        else:
            os.environ[MMAP_THRESHOLD_ENV] = saved


def _worker_memory_of_store(store: str, batches: int, window_bytes: int) -> dict:
    return worker_memory(MeleeDataset.from_store(store, "all", DataConfig(store=store)), batches, window_bytes)


def train_step_share(ds: MeleeDataset, layout: Layout, batch: int, reps: int) -> dict:
    """Median get_batch time over the median time of one mamba2_base training step on such a batch."""
    model = build_model(load_model_config(PRESET), layout, CONTEXT).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rng = np.random.default_rng(2)

    def step(b: Batch) -> None:
        pred, _ = model(b.floats, b.ints, b.next_ctrl, need_state=False, valid=b.valid_floats, valid_ints=b.valid_ints)
        loss = stand_in_loss(pred, b.targets, layout)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    fixed = ds.get_batch(rng.integers(0, len(ds), batch))
    step(fixed)  # warm-up
    step_s = median_time(lambda: step(fixed), reps)
    batch_s = median_time(lambda: ds.get_batch(rng.integers(0, len(ds), batch)), 20)
    return {"batch": batch, "step_s": step_s, "get_batch_s": batch_s, "share": batch_s / step_s}


def run(quick: bool) -> Iterator[dict]:
    torch.manual_seed(0)
    enc = EncodingConfig()
    layout = Layout(enc)
    frames = 300_000 if quick else 2_000_000
    start = time.perf_counter()
    path = cached_store(frames, enc)
    cfg = DataConfig(store=str(path), context_len=CONTEXT, multi_position=True, batch_size=BATCH)
    ds = MeleeDataset.from_store(path, "all", cfg)
    row_bytes = layout.num_floats * 4 + layout.num_ints * 2
    window_bytes = cfg.window_len * row_bytes
    yield record(
        "setup",
        store=str(path),
        frames=ds.num_frames,
        games=ds.num_games,
        shards=len(ds.shards),
        windows=len(ds),
        store_mib=ds.num_frames * row_bytes / 2**20,
        setup_s=time.perf_counter() - start,
        threads=torch.get_num_threads(),
    )

    rng = np.random.default_rng(0)
    src = np.random.default_rng(1).random((64 if quick else 256) * 2**20 // 8)
    dst = np.empty_like(src)
    for p in range(0, len(ds), 4096):  # fault the memmaps in, so every method reads the page cache
        ds.gather(torch.arange(p, min(p + 4096, len(ds))))
    rounds = 3 if quick else 7
    gathers_per_round = 10 if quick else 30
    threads = torch.get_num_threads()
    memcpy, gather, gather_all_threads, single, reference = [], [], [], [], []
    shard_floats, shard_ints = ds.shards[0]
    steps = torch.arange(cfg.window_len)
    shard_windows = len(shard_floats) - cfg.window_len
    for _ in range(rounds):
        memcpy.append(src.nbytes / median_time(lambda: np.copyto(dst, src), 5))
        # Sorted batches, as WindowBatchSampler yields them; one thread, as in a DataLoader worker.
        idx = [np.sort(rng.integers(0, len(ds), BATCH)) for _ in range(gathers_per_round)]
        torch.set_num_threads(1)
        start = time.perf_counter()
        for i in idx:
            ds.get_batch(i)
        gather.append(BATCH * gathers_per_round / (time.perf_counter() - start))
        # Reference: plain advanced indexing of a (B, K + 1) row index into one shard, no targets.
        rows = [torch.from_numpy(np.sort(rng.integers(0, shard_windows, BATCH)))[:, None] + steps for _ in idx]
        start = time.perf_counter()
        for r in rows:
            shard_floats[r], shard_ints[r]
        reference.append(BATCH * len(rows) / (time.perf_counter() - start))
        one = rng.integers(0, len(ds), BATCH)
        start = time.perf_counter()
        default_collate([ds[int(i)] for i in one])
        single.append(BATCH / (time.perf_counter() - start))
        torch.set_num_threads(threads)
        start = time.perf_counter()
        for i in idx[:5]:
            ds.get_batch(i)
        gather_all_threads.append(BATCH * 5 / (time.perf_counter() - start))
    memcpy_bps = statistics.median(memcpy)
    gather_sps = statistics.median(gather)
    single_sps = statistics.median(single)
    gather_bps = gather_sps * window_bytes
    ratio = statistics.median(g * window_bytes / m for g, m in zip(gather, memcpy, strict=True))  # per round
    speedup = statistics.median(g / s for g, s in zip(gather, single, strict=True))
    yield record("memcpy", gib_s=memcpy_bps / 2**30, samples=[m / 2**30 for m in memcpy])
    yield record(
        "get_batch",
        batch=BATCH,
        context=CONTEXT,
        samples_per_s=gather_sps,
        gib_s=gather_bps / 2**30,
        share_of_memcpy=ratio,
        threads=1,
        samples=gather,
        samples_per_s_all_threads=statistics.median(gather_all_threads),
        reference_share_of_memcpy=statistics.median(
            r * window_bytes / m for r, m in zip(reference, memcpy, strict=True)
        ),
        all_threads=threads,
    )
    yield record("per_sample_getitem", samples_per_s=single_sps, get_batch_speedup=speedup)

    mem = worker_memory_fresh(str(path), 100 if quick else 400, window_bytes)
    store_mib = ds.num_frames * row_bytes / 2**20
    yield record("workers_memory", store_mib=store_mib, **mem)

    step = train_step_share(ds, layout, 64 if quick else BATCH, 1 if quick else 3)
    yield record("train_step_share", **step)

    checks = {
        "gather_vs_memcpy": ratio >= TARGET,
        "batch_vs_per_sample": speedup >= SPEEDUP_TARGET,
        # While each worker gathers more than the whole store, its private memory grows by far less than the
        # store: what it reads stays shared page cache (a copy per worker would add the store's size).
        "workers_share_memmaps": mem["growth_warm_to_end_mib"] < 0.25 * store_mib
        and mem["gathered_mib_per_worker"] > store_mib,
        "assembly_vs_step": step["share"] <= STEP_SHARE_TARGET,
    }
    yield summary(
        ratio=ratio,
        target=TARGET,
        passed=all(checks.values()),
        get_batch_speedup=speedup,
        speedup_target=SPEEDUP_TARGET,
        assembly_share_of_step=step["share"],
        step_share_target=STEP_SHARE_TARGET,
        worker_private_mib=max(mem["worker_private_mib_warm_half_end"][2]),
        store_mib=store_mib,
        checks=checks,
    )
