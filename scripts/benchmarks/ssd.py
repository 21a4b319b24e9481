"""Chunked SSD vs the sequential recurrence, forward + backward, at the `mamba2_base` training shape.

Shape: batch 256, seqlen K = 30, d_model 384 with expand 2 and headdim 64 (12 heads), d_state 64, ngroups 1,
chunk 15. One timed call = both outputs (y and the final state) forward, then backward from fixed random
output gradients. The implementations alternate, and the medians are compared. `ssd_chunked` runs a window
this short as one chunk (`auto`, what the model does); `chunked` forces chunks of 15 (the summary's ratio).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from melee_wm.model.ssd import ssd_chunked, ssd_sequential

from ._common import record, summary

TARGET = 8.0
D_MODEL, EXPAND, HEADDIM, D_STATE, NGROUPS, SEQLEN, CHUNK = 384, 2, 64, 64, 1, 30, 15


def make_inputs(batch: int, seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Leaf inputs (x, dt, A, B, C) needing grad, and gradients for the outputs (y, final_state)."""
    g = torch.Generator().manual_seed(seed)
    nheads = EXPAND * D_MODEL // HEADDIM
    x = torch.randn(batch, SEQLEN, nheads, HEADDIM, generator=g)
    dt = F.softplus(torch.randn(batch, SEQLEN, nheads, generator=g) - 3)
    A = -torch.empty(nheads).uniform_(1, 16, generator=g)
    B = torch.randn(batch, SEQLEN, NGROUPS, D_STATE, generator=g)
    C = torch.randn(batch, SEQLEN, NGROUPS, D_STATE, generator=g)
    grads = [torch.randn(x.shape, generator=g), torch.randn(batch, nheads, HEADDIM, D_STATE, generator=g)]
    return [t.requires_grad_() for t in (x, dt, A, B, C)], grads


def time_fwd_bwd(fn: Callable, inputs: list[torch.Tensor], grads: list[torch.Tensor]) -> float:
    """Seconds for one forward + backward of `fn(*inputs)` -> (y, final_state)."""
    for t in inputs:
        t.grad = None
    start = time.perf_counter()
    outputs = fn(*inputs)
    torch.autograd.backward(outputs, grads)
    return time.perf_counter() - start


def run(quick: bool) -> Iterator[dict]:
    batch, repeats = (32, 3) if quick else (256, 5)
    inputs, grads = make_inputs(batch)
    impls = {
        "chunked": lambda *a: ssd_chunked(*a, chunk_size=CHUNK, single_chunk_max=0),
        "auto": lambda *a: ssd_chunked(*a, chunk_size=CHUNK),
        "sequential": ssd_sequential,
    }
    for fn in impls.values():  # warm-up
        time_fwd_bwd(fn, inputs, grads)
    times: dict[str, list[float]] = {name: [] for name in impls}
    for rep in range(repeats):
        for name, fn in impls.items():
            times[name].append(time_fwd_bwd(fn, inputs, grads))
        yield record("repeat", repeat=rep, **{f"{name}_s": round(ts[-1], 4) for name, ts in times.items()})
    chunk_s, auto_s, seq_s = (statistics.median(times[name]) for name in ("chunked", "auto", "sequential"))
    ratio = seq_s / chunk_s
    yield summary(
        ratio=round(ratio, 2),
        target=TARGET,
        passed=ratio >= TARGET and seq_s / auto_s >= TARGET,
        batch=batch,
        seqlen=SEQLEN,
        chunk=CHUNK,
        threads=torch.get_num_threads(),
        chunked_s=round(chunk_s, 4),
        sequential_s=round(seq_s, 4),
        auto_single_chunk_s=round(auto_s, 4),
        auto_ratio=round(seq_s / auto_s, 2),
        paired_ratio_median=round(
            statistics.median(s / c for s, c in zip(times["sequential"], times["chunked"], strict=True)), 2
        ),
    )
