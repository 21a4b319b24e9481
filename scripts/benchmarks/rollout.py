"""Recurrent rollout (`melee_wm.eval.rollout.rollout`: the context once, then one `step` per frame) against
re-running the last K = 30 frames before every frame (`rollout_by_rerun(window=30)`), same `mamba2_base` model
(random weights), same synthetic starts, side by side; and the cost of a self-forced training step (N = 3) as a
multiple of a teacher-forced one.

The shape is rollout evaluation's: 256 starts at once (`RolloutConfig.batch_size`; 16 with --quick). Whole
rollouts of 20 and 60 frames are timed, the implementations alternating per round (medians; the machine is
shared and noisy). The summary's ratio is the steady-state frames/s, what each further predicted frame costs:
(time at h60 - time at h20) / 40 frames, reconstruction included. The end-to-end ratios at h20 (the evaluation's
horizon) and h60 are reported beside it: they also count the context pass, which costs one window in both
methods and bounds the h20 ratio below 20 whatever the step costs. `per_frame` times one carried in-place `step`
against one window `forward`, without reconstruction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from omegaconf import OmegaConf

from melee_wm.encoding import EncodingConfig, Layout
from melee_wm.eval.rollout import rollout, rollout_by_rerun
from melee_wm.training.compose import to_container, train_config_from_dict
from melee_wm.training.config import RolloutConfig, SelfForcingConfig
from melee_wm.training.drift import self_forcing_loss
from melee_wm.training.module import WorldModelModule

from ._common import alternating_medians, record, summary
from .model import PRESET, synthetic_batch

CONTEXT = 30
TARGET = 10.0
SHORT, LONG = 20, 60  # rollout horizons timed end to end; their difference gives the steady state
SELF_FORCING_STEPS = 3
TRAIN_BATCH = 64  # the training step's batch for the self-forcing cost (`bench.py train` uses the same)


def unit_stats(layout: Layout) -> dict:
    """Target statistics of centre 0 and scale 1 (the timing does not depend on them)."""
    widths = {g: layout.float_width(g) for g in layout.regression_groups}
    return {"center": {g: [0.0] * w for g, w in widths.items()}, "scale": {g: [1.0] * w for g, w in widths.items()}}


def run(quick: bool) -> Iterator[dict]:
    torch.manual_seed(0)
    starts = 16 if quick else RolloutConfig().batch_size
    rounds = 1 if quick else 3
    layout = Layout(EncodingConfig())
    model = OmegaConf.to_container(OmegaConf.load(PRESET))
    cfg = train_config_from_dict({"run_name": "bench", "data": {"context_len": CONTEXT}, "model": model})
    module = WorldModelModule(to_container(cfg), unit_stats(layout))
    net, codec = module.net, module.codec
    windows = synthetic_batch(layout, starts, CONTEXT + LONG - 1)
    floats = torch.cat([windows.floats, windows.floats[:, -1:]], 1)  # (starts, CONTEXT + LONG, ...)
    ints = torch.cat([windows.ints, windows.ints[:, -1:]], 1)
    valid = {"valid": windows.valid_floats, "valid_ints": windows.valid_ints}  # half the starts lack old fields
    yield record(
        "setup",
        preset=PRESET.stem,
        params=net.num_parameters(),
        starts=starts,
        context=CONTEXT,
        threads=torch.get_num_threads(),
    )

    # Self-forcing: one training step (forward, loss, backward) with and without the N-step unroll. Timed first:
    # after the 256-start rollouts the same self-forced step measured ~1.5 s instead of ~1.0 s.
    train_batch = synthetic_batch(layout, TRAIN_BATCH, CONTEXT)
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
    sf = alternating_medians({"teacher": teacher_step, "forced": forced_step}, 2 * rounds)
    teacher_s, forced_s = sf["teacher"], sf["forced"]
    yield record(
        "self_forcing_step",
        steps=SELF_FORCING_STEPS,
        batch=TRAIN_BATCH,
        teacher_forced_s=teacher_s,
        self_forced_s=forced_s,
        cost_multiple=forced_s / teacher_s,
    )

    net.eval()

    def timed(horizon: int, rerun: bool) -> Callable[[], object]:
        f, i = floats[:, : CONTEXT + horizon], ints[:, : CONTEXT + horizon]
        if rerun:
            return lambda: rollout_by_rerun(net, codec, f, i, CONTEXT, window=CONTEXT, **valid)
        return lambda: rollout(net, codec, f, i, CONTEXT, **valid)

    rollout(net, codec, floats[:, : CONTEXT + 2], ints[:, : CONTEXT + 2], CONTEXT, **valid)  # warm-up
    t = alternating_medians({(h, rerun): timed(h, rerun) for h in (SHORT, LONG) for rerun in (False, True)}, rounds)
    for h in (SHORT, LONG):
        yield record(
            f"rollout_h{h}",
            recurrent_frames_per_s=starts * h / t[h, False],
            rerun_k30_frames_per_s=starts * h / t[h, True],
            ratio=t[h, True] / t[h, False],
        )
    frames = starts * (LONG - SHORT)
    recurrent_s, rerun_s = (t[LONG, rerun] - t[SHORT, rerun] for rerun in (False, True))
    steady = rerun_s / recurrent_s
    yield record(
        "steady_state",
        recurrent_frames_per_s=frames / recurrent_s,
        rerun_k30_frames_per_s=frames / rerun_s,
        ratio=steady,
    )

    with torch.no_grad():
        ctx = floats[:, :CONTEXT], ints[:, :CONTEXT], floats[:, 1 : CONTEXT + 1, layout.float_slice("controller")]
        _, state = net(*ctx, need_state=True, **valid)
        frame = floats[:, CONTEXT], ints[:, CONTEXT], ctx[2][:, -1]

        def step() -> None:
            nonlocal state
            _, state = net.step(*frame, state, inplace=True)

        step()  # warm-up

        def window() -> None:
            net(*ctx, need_state=False, **valid)

        per = alternating_medians({"step": step, "window": window}, 10 * rounds)
    yield record("per_frame", step_s=per["step"], window_k30_forward_s=per["window"], ratio=per["window"] / per["step"])

    yield summary(
        ratio=steady,
        target=TARGET,
        passed=steady >= TARGET,
        starts=starts,
        measure=f"steady-state frames/s (h{LONG} - h{SHORT})",
        ratio_h20=t[SHORT, True] / t[SHORT, False],
        ratio_h60=t[LONG, True] / t[LONG, False],
        ratio_per_frame=per["window"] / per["step"],
        recurrent_frames_per_s=frames / recurrent_s,
        self_forcing_cost_multiple=forced_s / teacher_s,
    )
