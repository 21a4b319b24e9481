"""Recurrent rollout (`melee_wm.eval.rollout.rollout`: the context once, then one `step` per frame) against
re-running the last K = 30 frames before every frame (`rollout_by_rerun(window=30)`), same `mamba2_base` model
(random weights), same synthetic starts, side by side; and the cost of a self-forced training step (N = 3) as a
multiple of a teacher-forced one.

frames/s counts predicted frames (starts x horizon) over the whole rollout, the context included. The summary's
ratio is at a horizon of 60 frames (one second of game); the horizon-20 ratio (the evaluation's shape) and the
steady-state ratio (per frame, context excluded) are reported beside it. Implementations alternate per round and
the medians are compared (the machine is shared and noisy).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from omegaconf import OmegaConf

from melee_wm.encoding import EncodingConfig, Layout
from melee_wm.eval.rollout import rollout, rollout_by_rerun
from melee_wm.training.config import SelfForcingConfig, regression_groups
from melee_wm.training.drift import self_forcing_loss
from melee_wm.training.module import WorldModelModule
from melee_wm.training.schema import to_container, train_config_from_dict

from ._common import median_time, record, summary
from .model import PRESET, synthetic_batch

CONTEXT = 30
TARGET = 10.0
SUMMARY_HORIZON = 60
SELF_FORCING_STEPS = 3


def unit_stats(layout: Layout) -> dict:
    """Target statistics of centre 0 and scale 1 (the timing does not depend on them)."""
    widths = {g: layout.float_width(g) for g in regression_groups(layout)}
    return {"center": {g: [0.0] * w for g, w in widths.items()}, "scale": {g: [1.0] * w for g, w in widths.items()}}


def run(quick: bool) -> Iterator[dict]:
    torch.manual_seed(0)
    batch = 16 if quick else 64
    reps = 1 if quick else 3
    layout = Layout(EncodingConfig())
    model = OmegaConf.to_container(OmegaConf.load(PRESET))
    cfg = train_config_from_dict({"run_name": "bench", "data": {"context_len": CONTEXT}, "model": model})
    module = WorldModelModule(to_container(cfg), unit_stats(layout))
    net, codec = module.net.eval(), module.codec
    windows = synthetic_batch(layout, batch, CONTEXT + SUMMARY_HORIZON - 1)
    floats = torch.cat([windows.floats, windows.floats[:, -1:]], 1)  # (B, CONTEXT + SUMMARY_HORIZON, ...)
    ints = torch.cat([windows.ints, windows.ints[:, -1:]], 1)
    yield record(
        "setup",
        preset=PRESET.stem,
        params=net.num_parameters(),
        starts=batch,
        context=CONTEXT,
        threads=torch.get_num_threads(),
    )

    results = {}
    for horizon in (20, SUMMARY_HORIZON):
        f, i = floats[:, : CONTEXT + horizon], ints[:, : CONTEXT + horizon]
        rollout(net, codec, f[:, : CONTEXT + 2], i[:, : CONTEXT + 2], CONTEXT)  # warm-up
        recurrent = median_time(lambda f=f, i=i: rollout(net, codec, f, i, CONTEXT), reps)
        rerun = median_time(lambda f=f, i=i: rollout_by_rerun(net, codec, f, i, CONTEXT, window=CONTEXT), reps)
        results[horizon] = (recurrent, rerun)
        frames = batch * horizon
        yield record(
            f"rollout_h{horizon}",
            recurrent_frames_per_s=frames / recurrent,
            rerun_k30_frames_per_s=frames / rerun,
            ratio=rerun / recurrent,
        )

    with torch.no_grad():
        ctx = floats[:, :CONTEXT], ints[:, :CONTEXT], floats[:, 1 : CONTEXT + 1, layout.float_slice("controller")]
        _, state = net(*ctx, need_state=True)
        step_s = median_time(lambda: net.step(floats[:, CONTEXT], ints[:, CONTEXT], ctx[2][:, -1], state), 5 * reps)
        window_s = median_time(lambda: net(*ctx, need_state=False), 5 * reps)
    yield record("per_frame", step_s=step_s, window_k30_forward_s=window_s, ratio=window_s / step_s)

    # Self-forcing: one training step (forward, loss, backward) with and without the N-step unroll.
    module.train()
    train_batch = synthetic_batch(layout, batch, CONTEXT)
    sf_cfg = SelfForcingConfig(share=1.0, steps=[SELF_FORCING_STEPS])

    def teacher_step() -> None:
        module.zero_grad()
        module.forward_loss(train_batch).total.backward()

    def forced_step() -> None:
        module.zero_grad()
        loss = module.forward_loss(train_batch).total
        sf = self_forcing_loss(module.net, codec, module.loss_fn, train_batch, SELF_FORCING_STEPS, sf_cfg)
        (loss + sf.total).backward()

    teacher_step(), forced_step()  # warm-up
    teacher_s, forced_s = median_time(teacher_step, 2 * reps), median_time(forced_step, 2 * reps)
    yield record(
        "self_forcing_step",
        steps=SELF_FORCING_STEPS,
        batch=batch,
        teacher_forced_s=teacher_s,
        self_forced_s=forced_s,
        cost_multiple=forced_s / teacher_s,
    )

    recurrent, rerun = results[SUMMARY_HORIZON]
    ratio = rerun / recurrent
    yield summary(
        ratio=ratio,
        target=TARGET,
        passed=ratio >= TARGET,
        horizon=SUMMARY_HORIZON,
        ratio_h20=results[20][1] / results[20][0],
        ratio_per_frame=window_s / step_s,
        recurrent_frames_per_s=batch * SUMMARY_HORIZON / recurrent,
        self_forcing_cost_multiple=forced_s / teacher_s,
    )
