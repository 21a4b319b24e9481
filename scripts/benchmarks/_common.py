"""Helpers shared by the benchmarks (not a benchmark itself: the runner skips modules starting with "_")."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from melee_wm.data.batch import Targets
from melee_wm.encoding.layout import Layout, Target
from melee_wm.model.heads import Prediction


def stand_in_loss(pred: Prediction, targets: Targets, layout: Layout) -> Tensor:
    """A loss touching every head, standing in for the training code's: BCE on logits for BINARY float groups,
    MSE for the other float groups, NLL of `log_probs` for categorical fields.

    pred: (B, K, ...) outputs at every position; targets: (B, P, ...) for the last P of them (P <= K).
    """
    losses = []
    for g in layout.target_float_groups:
        target = targets.floats[g]
        out = pred.floats[g][:, -target.shape[1] :]
        if layout.float_target(g) == Target.BINARY:
            losses.append(F.binary_cross_entropy_with_logits(out, target))
        else:
            losses.append(F.mse_loss(out, target))
    for f in layout.categorical_targets:
        target = targets.categorical[f]
        logp = pred.log_probs(f)[:, -target.shape[1] :]
        losses.append(F.nll_loss(logp.flatten(0, -2), target.flatten()))
    return sum(losses)
