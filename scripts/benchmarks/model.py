"""Training-step throughput of `mamba2_base` on CPU, and its FLOP rate relative to this machine's fp32 matmul.

One step = forward, loss, backward, AdamW update on a (batch, K) window of synthetic frames in the layout's
shapes. FLOPs counted = 2 x multiply-adds of every `nn.Linear` the forward runs (hooks count them), x3 for
forward + backward. The matmul rate is a large square `torch.mm`, measured interleaved with the steps.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch
from torch import nn

from melee_wm.data.batch import Batch, build_batch
from melee_wm.encoding import EncodingConfig, Layout, Target
from melee_wm.encoding.missing import MISSING_FIELD_COLUMNS, invalid_columns
from melee_wm.model.build import build_model
from melee_wm.model.config import load_model_config
from melee_wm.paths import config_dir

from ._common import record, stand_in_loss, summary

PRESET = config_dir() / "model" / "mamba2_base.yaml"
CONTEXT = 30
TARGET = 0.5


def synthetic_batch(layout: Layout, batch: int, seqlen: int, seed: int = 0) -> Batch:
    """A `Batch` of random windows in the layout's shapes (B, seqlen + 1 frames; targets at every position):
    normal floats (0/1 in BINARY groups, so they are valid BCE targets), int16 ids within each vocab; every
    other window lacks every field a replay format can lack (its `valid_floats` / `valid_ints`), so the
    missing-field indicators and masks run as on a store with old replays."""
    g = torch.Generator().manual_seed(seed)
    floats = torch.randn(batch, seqlen + 1, layout.num_floats, generator=g)
    for group in layout.target_float_groups:
        if layout.float_target(group) == Target.BINARY:
            cols = layout.float_slice(group)
            floats[..., cols] = (floats[..., cols] > 0).float()
    ints = (torch.rand(batch, seqlen + 1, layout.num_ints, generator=g) * torch.tensor(layout.int_vocabs)).long()
    b = build_batch(floats, ints.to(torch.int16), layout, num_positions=seqlen)
    invalid_f, invalid_i = invalid_columns(layout, MISSING_FIELD_COLUMNS)
    old = torch.arange(batch)[:, None] % 2 == 1
    valid_f, valid_i = ~(old & invalid_f), ~(old & invalid_i)
    return Batch(b.floats.contiguous(), b.ints.contiguous(), b.next_ctrl.contiguous(), b.targets, valid_f, valid_i)


def count_linear_macs(model: nn.Module, *inputs: torch.Tensor) -> int:
    """Multiply-adds of every nn.Linear call in one forward over `inputs`."""
    total = 0

    def hook(module: nn.Linear, args, _output) -> None:
        nonlocal total
        total += args[0].numel() // module.in_features * module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        model(*inputs)
    for h in handles:
        h.remove()
    return total


def matmul_flops_per_s(n: int, reps: int) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    start = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def run(quick: bool) -> Iterator[dict]:
    torch.manual_seed(0)
    batch = 32 if quick else 256
    rounds = 2 if quick else 5
    steps_per_round = 1 if quick else 2
    layout = Layout(EncodingConfig())
    cfg = load_model_config(PRESET)
    model = build_model(cfg, layout, CONTEXT).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # fused: one kernel for all parameters
    data = synthetic_batch(layout, batch, CONTEXT)
    floats, ints, next_ctrl = data.floats, data.ints, data.next_ctrl
    macs = count_linear_macs(model, floats, ints, next_ctrl)
    flops_per_step = 2 * macs * 3
    yield record(
        "setup",
        preset=PRESET.stem,
        params=model.num_parameters(),
        batch=batch,
        context=CONTEXT,
        threads=torch.get_num_threads(),
        linear_macs_forward=macs,
        flops_per_step=flops_per_step,
    )

    def train_step() -> None:
        pred, _ = model(floats, ints, next_ctrl, need_state=False, valid=data.valid_floats, valid_ints=data.valid_ints)
        loss = stand_in_loss(pred, data.targets, layout)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    # The Mamba-2 mixers alone (forward + backward on inputs of the same shape), to split the step's time.
    mixer_inputs = [torch.randn(batch, CONTEXT, cfg.d_model) for _ in model.blocks]
    mixer_macs = sum(count_linear_macs(b.mixer, x) for b, x in zip(model.blocks, mixer_inputs, strict=True))

    def mixers_step() -> None:
        for block, x in zip(model.blocks, mixer_inputs, strict=True):
            y, _ = block.mixer(x.detach().requires_grad_())
            y.backward(torch.ones_like(y))

    train_step()  # warm-up (allocations, AdamW state)
    mixers_step()
    # Rounds of [matmul rate, steps, mixers]: the machine is shared and noisy, so each round's steps are
    # compared with the matmul rate measured next to them, and the summary takes the median round.
    rounds_out = []
    for _ in range(rounds):
        mm = matmul_flops_per_s(1024 if quick else 2048, 3 if quick else 10)
        steps = []
        for _ in range(steps_per_round):
            start = time.perf_counter()
            train_step()
            steps.append(time.perf_counter() - start)
        start = time.perf_counter()
        mixers_step()
        rounds_out.append({"matmul": mm, "step_s": min(steps), "mixers_s": time.perf_counter() - start})
    for r in rounds_out:
        r["ratio"] = flops_per_step / r["step_s"] / r["matmul"]
    yield record(
        "rounds",
        rounds=[
            {"matmul_gflop_s": r["matmul"] / 1e9, "step_s": r["step_s"], "mixers_s": r["mixers_s"], "ratio": r["ratio"]}
            for r in rounds_out
        ],
    )
    median = sorted(rounds_out, key=lambda r: r["ratio"])[len(rounds_out) // 2]
    step_s, mixers_s, mm = median["step_s"], median["mixers_s"], median["matmul"]
    achieved = flops_per_step / step_s
    yield record("matmul_fp32", gflop_s=mm / 1e9)
    yield record(
        "train_step",
        step_s=step_s,
        samples_per_s=batch / step_s,
        frames_per_s=batch * CONTEXT / step_s,
        gflop_s=achieved / 1e9,
    )
    rest_flops = flops_per_step - 6 * mixer_macs
    yield record(
        "breakdown",
        mixers_s=mixers_s,
        mixers_ideal_s=6 * mixer_macs / mm,
        mixers_ratio=6 * mixer_macs / mixers_s / mm,
        rest_s=step_s - mixers_s,
        rest_ideal_s=rest_flops / mm,
        rest_ratio=rest_flops / max(step_s - mixers_s, 1e-9) / mm,
        note="mixers = the n_layers Mamba2 blocks fwd+bwd; rest = embedding, norms, heads, loss, AdamW",
    )

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        train_step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total_us = sum(e.self_cpu_time_total for e in events)
    top = [
        {
            "op": e.key,
            "self_ms": round(e.self_cpu_time_total / 1e3, 1),
            "share": round(e.self_cpu_time_total / total_us, 3),
        }
        for e in events[:12]
    ]
    yield record("profile_top_ops", total_ms=round(total_us / 1e3, 1), ops=top)

    ratio = median["ratio"]
    yield summary(
        ratio=ratio,
        target=TARGET,
        passed=ratio >= TARGET,
        samples_per_s=batch / step_s,
        achieved_gflop_s=achieved / 1e9,
        matmul_gflop_s=mm / 1e9,
        best_round_ratio=max(r["ratio"] for r in rounds_out),
    )
