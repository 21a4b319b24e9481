"""Training against the drift of autoregressive rollouts (`TrainConfig.drift`; both options off by default).

**Context noise.** Gaussian noise is added to the context's columns of the configured groups (continuous,
velocity, dynamics; never the controller). The targets stay the true next frame: DELTA targets are re-expressed
from the noisy current frame (true next - noisy current), so the model learns to steer a perturbed state back,
as in learned physics simulators trained with input noise.

**Self-forcing.** On a share of batches the last N target positions are also predicted from the model's own
frames: the true context up to position K - N - 1 is run once (`forward`, need_state=True), its last prediction
is turned into frame K - N by `reconstruct_frame` (the rollout evaluation's function), and each of N `step`s
feeds the previous reconstruction back, with a loss at every step. Each step's targets are the true next frame
expressed from the fed-back frame (the delta that leads back to the truth). The unrolled loss is computed inside
`training_step` with one backward for all steps (no manual optimization): the fed-back frames are detached by
default, so gradients reach earlier steps only through the recurrent state, and the graph is one forward over
K - N frames plus N single-frame steps, never more than about one extra window whatever N is. Categorical ids
carry no gradient (argmax, embedding lookup); `feed_back_categorical=False` feeds the true ids instead.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from melee_wm.data.batch import Batch, ColumnMask, Targets
from melee_wm.encoding.layout import Layout, Target
from melee_wm.frames.frame import PreviousFrame, select_positions, true_next_frame
from melee_wm.frames.reconstruct import reconstruct_frame
from melee_wm.frames.targets import RESIDUALS, TargetCodec
from melee_wm.model.heads import Prediction
from melee_wm.model.interface import WorldModelInterface
from melee_wm.training.config import ContextNoiseConfig, DriftConfig, SelfForcingConfig
from melee_wm.training.loss import LossOutput, WorldModelLoss


def add_context_noise(batch: Batch, layout: Layout, cfg: ContextNoiseConfig) -> Batch:
    """A copy of `batch` whose context columns of `cfg.groups` carry N(0, cfg.std^2) noise (the batch itself when
    std is 0); the targets still decode to the true next frame (DELTA targets = true next - noisy current)."""
    if cfg.std == 0:
        return batch
    k, p = batch.floats.shape[1], batch.num_positions
    floats = batch.floats.clone()
    for g in cfg.groups:
        cols = layout.float_slice(g)
        floats[..., cols] += torch.randn_like(floats[..., cols]) * cfg.std
    t = batch.targets
    current, target_floats = dict(t.current_floats), dict(t.floats)
    for g in t.floats:
        noisy = floats[:, k - p :, layout.float_slice(g)]
        if layout.float_target(g) == Target.DELTA:
            target_floats[g] = t.floats[g] + (t.current_floats[g] - noisy)
        current[g] = noisy
    targets = Targets(target_floats, t.categorical, current, t.current_categorical)
    return dataclasses.replace(batch, floats=floats, targets=targets)


def stack_predictions(preds: list[Prediction]) -> Prediction:
    """N one-position predictions (B, ...) -> (B, N, ...)."""
    return Prediction(
        floats={g: torch.stack([p.floats[g] for p in preds], 1) for g in preds[0].floats},
        categorical={f: torch.stack([p.categorical[f] for p in preds], 1) for f in preds[0].categorical},
        unimix=preds[0].unimix,
    )


def self_forcing_loss(
    net: WorldModelInterface,
    codec: TargetCodec,
    loss_fn: WorldModelLoss,
    batch: Batch,
    steps: int,
    cfg: SelfForcingConfig,
) -> LossOutput:
    """Loss of the last `steps` target positions predicted from the model's own reconstructed frames (see the
    module docstring). Needs steps <= P and steps <= K - 2 (checked by `TrainConfig`)."""
    layout = codec.layout
    k, p = batch.floats.shape[1], batch.num_positions
    start = k - steps  # context index of the first fed-back frame
    floats, ints, ctrl = batch.floats, batch.ints, batch.next_ctrl
    valid = {"valid": batch.valid_floats, "valid_ints": batch.valid_ints}
    pred, state = net(floats[:, :start], ints[:, :start], ctrl[:, :start], need_state=True, **valid)
    step_pred = pred.at(-1)  # predicts frame `start`
    prev, cur_f, cur_i = (floats[:, start - 2], ints[:, start - 2]), floats[:, start - 1], ints[:, start - 1]
    preds, fed_f, fed_i, before_f, before_i = [], [], [], [], []
    for t in range(start, k):
        true_ints = None if cfg.feed_back_categorical else ints[:, t]
        next_f, next_i = reconstruct_frame(step_pred, codec, cur_f, cur_i, prev, ctrl[:, t - 1], true_ints, **valid)
        if cfg.detach_feedback:
            next_f = next_f.detach()
        step_pred, state = net.step(next_f, next_i, ctrl[:, t], state)
        preds.append(step_pred)
        fed_f.append(next_f)
        fed_i.append(next_i)
        before_f.append(cur_f)
        before_i.append(cur_i)
        prev, cur_f, cur_i = (cur_f, cur_i), next_f, next_i
    fed_f, fed_i = torch.stack(fed_f, 1), torch.stack(fed_i, 1)
    true = true_next_frame(select_positions(batch.targets, slice(p - steps, p)), layout)
    current = {g: fed_f[..., layout.float_slice(g)] for g in layout.target_float_groups}
    targets = Targets(
        floats={
            g: true.floats[g] - current[g] if layout.float_target(g) == Target.DELTA else true.floats[g]
            for g in layout.target_float_groups
        },
        categorical=true.categorical,
        current_floats=current,
        current_categorical={f: fed_i[..., layout.int_slice(f)].long() for f in layout.categorical_targets},
    )
    prev_delta = None
    if codec.parameterization in RESIDUALS:
        cols, actions = layout.float_slice(layout.position_group), layout.int_slice("action")
        before = PreviousFrame(torch.stack(before_f, 1)[..., cols], torch.stack(before_i, 1)[..., actions].long())
        prev_delta = codec.position_prior(targets, before, fed_i[..., layout.int_slice("character")].long())
    return loss_fn(
        stack_predictions(preds), codec.encode(targets, prev_delta), targets, ColumnMask.of_batch(batch, layout)
    )


class DriftTraining:
    """What `WorldModelModule.training_step` calls: `prepare` (context noise) and `self_forced` (the self-forcing
    loss on the batches the share selects, with the curriculum's N; None on the others)."""

    def __init__(self, cfg: DriftConfig, layout: Layout) -> None:
        self.cfg = cfg
        self.layout = layout

    def prepare(self, batch: Batch) -> Batch:
        return add_context_noise(batch, self.layout, self.cfg.context_noise)

    def steps_at(self, epoch: int) -> int:
        """N of the curriculum at `epoch`."""
        sf = self.cfg.self_forcing
        return sf.steps[min(epoch // sf.epochs_per_stage, len(sf.steps) - 1)]

    def selects(self, step: int) -> bool:
        """Whether training step `step` is self-forced: exactly `share` of the steps, evenly spread, no RNG."""
        share = self.cfg.self_forcing.share
        return math.floor((step + 1) * share) > math.floor(step * share)

    def self_forced(
        self, net: WorldModelInterface, codec: TargetCodec, loss_fn: WorldModelLoss, batch: Batch, epoch: int, step: int
    ) -> tuple[LossOutput, int] | None:
        """(self-forced loss, N) for a selected step, else None."""
        if not self.selects(step):
            return None
        n = self.steps_at(epoch)
        return self_forcing_loss(net, codec, loss_fn, batch, n, self.cfg.self_forcing), n
