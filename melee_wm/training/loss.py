"""The world-model loss: a weighted sum of one term per target group of the layout.

Regression groups (standardized targets, see `targets.py`) use the configured loss per group, the binary
group BCE on logits, each categorical field cross-entropy on `Prediction.log_probs`. Every term is a mean
over both players and every valid entry: fields a game's replay format lacks are masked out, never learned
from their defaults. The action term weighs frames whose true next action differs from the current one by
`action_change_weight` (a weighted mean, so the term keeps its scale).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from melee_wm.data.batch import ColumnMask, Targets
from melee_wm.encoding.layout import Layout
from melee_wm.model.heads import Prediction
from melee_wm.training.config import POSITION_TERM, ObjectiveConfig, loss_groups

DEFAULT_REGRESSION_LOSS = "l1"


def symlog(x: Tensor) -> Tensor:
    """sign(x) * log(1 + |x|): compresses large values, identity near 0."""
    return torch.sign(x) * torch.log1p(x.abs())


def regression_loss(kind: str, pred: Tensor, target: Tensor, huber_delta: float) -> Tensor:
    """Elementwise loss of standardized predictions and targets (same shape)."""
    if kind == "mse":
        return (pred - target).square()
    if kind == "l1":
        return (pred - target).abs()
    if kind == "huber":
        return F.huber_loss(pred, target, reduction="none", delta=huber_delta)
    if kind == "symlog_mse":
        return (symlog(pred) - symlog(target)).square()
    raise ValueError(f"unknown regression loss {kind!r}")


def masked_mean(values: Tensor, mask: Tensor | None, weight: Tensor | None = None) -> Tensor:
    """Mean of `values` over entries where `mask` (broadcastable bool) holds, optionally weighted."""
    w = torch.ones_like(values) if weight is None else weight.expand_as(values).to(values.dtype)
    if mask is not None:
        w = w * mask.to(values.dtype)
    return (values * w).sum() / w.sum().clamp_min(1e-12)


@dataclass
class LossOutput:
    """total: scalar weighted sum; terms: name -> scalar (unweighted) per group, for logging."""

    total: Tensor
    terms: dict[str, Tensor]


class WorldModelLoss(nn.Module):
    """Weighted sum over the layout's target groups (weights and regression losses from `ObjectiveConfig`)."""

    def __init__(self, layout: Layout, objective: ObjectiveConfig) -> None:
        super().__init__()
        self.layout = layout
        regression, weighted = loss_groups(layout)
        self.regression = regression
        self.kinds = {g: objective.regression_loss.get(g, DEFAULT_REGRESSION_LOSS) for g in regression}
        self.weights = {name: objective.weights.get(name, 1.0) for name in weighted}
        self.huber_delta = objective.huber_delta
        self.action_change_weight = objective.action_change_weight
        self.binary_groups = [g for g in layout.target_float_groups if g not in regression]
        xy = layout.position_offsets
        others = [c for c in range(layout.float_width(layout.position_group)) if c not in xy]
        self.register_buffer("xy", torch.tensor(xy, dtype=torch.long), persistent=False)
        self.register_buffer("not_xy", torch.tensor(others, dtype=torch.long), persistent=False)

    def forward(
        self, pred: Prediction, standardized: dict[str, Tensor], targets: Targets, valid: ColumnMask | None
    ) -> LossOutput:
        """pred: predictions cut to the loss positions ((B, P', ...)); standardized: group -> (B, P', width)
        regression targets from `TargetCodec.encode`; targets: the raw targets at the same positions."""
        terms = {}
        for g in self.regression:
            values = regression_loss(self.kinds[g], pred.floats[g].float(), standardized[g], self.huber_delta)
            mask = None if valid is None else valid.floats[g]
            if g != self.layout.position_group:
                terms[g] = masked_mean(values, mask)
                continue
            for name, cols in ((POSITION_TERM, self.xy), (g, self.not_xy)):  # x/y weigh apart from percent, shield
                terms[name] = masked_mean(values[..., cols], None if mask is None else mask[..., cols])
        for g in self.binary_groups:
            values = F.binary_cross_entropy_with_logits(pred.floats[g].float(), targets.floats[g], reduction="none")
            terms[g] = masked_mean(values, None if valid is None else valid.floats[g])
        for f in self.layout.categorical_targets:
            logp = pred.log_probs(f).float()  # (B, P', 2, vocab)
            nll = -logp.gather(-1, targets.categorical[f].unsqueeze(-1)).squeeze(-1)  # (B, P', 2)
            weight = None
            if f == "action" and self.action_change_weight != 1.0:
                changed = targets.categorical[f] != targets.current_categorical[f]
                weight = 1.0 + (self.action_change_weight - 1.0) * changed.to(nll.dtype)
            terms[f] = masked_mean(nll, None if valid is None else valid.categorical[f], weight)
        total = sum(self.weights[name] * term for name, term in terms.items())
        return LossOutput(total=total, terms=terms)
