"""Prediction heads shared by every trunk, and the `Prediction` they return.

The trunk's feature at position t summarises frames <= t. The controller input of frame t+1 is projected to
d_model and added to it; a pre-norm residual MLP then mixes the two (so the controller's effect can depend on
the game state), and one linear layer produces every head's output at once, split by the layout's widths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from melee_wm.encoding.layout import NUM_PLAYERS, Layout
from melee_wm.model.config import ModelConfig
from melee_wm.model.norm import RMSNorm


@dataclass
class Prediction:
    """Predictions for the next frame at every position (or one position, from `step`).

    floats: group -> (..., width) for each `layout.target_float_groups` group, columns in layout order:
        DELTA groups predict next - current, ABSOLUTE groups the next value, `binary` holds logits.
    categorical: field -> (..., 2, vocab) unnormalised logits, player 0 first.
    unimix: share of the uniform distribution mixed into the categorical distributions; use `log_probs`
        (never raw logits) for losses and metrics so the mixing is always applied.
    """

    floats: dict[str, Tensor]
    categorical: dict[str, Tensor]
    unimix: float = 0.0

    def at(self, index: int | slice) -> Prediction:
        """Predictions (B, L, ...) at one position `index` -> (B, ...), or at the positions of a slice ->
        (B, L', ...)."""
        return Prediction(
            floats={g: v[:, index] for g, v in self.floats.items()},
            categorical={f: v[:, index] for f, v in self.categorical.items()},
            unimix=self.unimix,
        )

    def log_probs(self, field: str) -> Tensor:
        """(..., 2, vocab) log of (1 - unimix) * softmax(logits) + unimix / vocab."""
        logp = F.log_softmax(self.categorical[field], dim=-1)
        if self.unimix == 0.0:
            return logp
        vocab = logp.shape[-1]
        return torch.logaddexp(logp + math.log1p(-self.unimix), torch.full_like(logp, math.log(self.unimix / vocab)))


class PredictionHeads(nn.Module):
    """Controller injection, a residual MLP, and one fused output layer split into per-target heads."""

    def __init__(self, cfg: ModelConfig, layout: Layout) -> None:
        super().__init__()
        d = cfg.d_model
        ctrl = layout.float_slice("controller")
        self.num_ctrl = ctrl.stop - ctrl.start
        self.unimix = cfg.unimix
        self.ctrl_proj = nn.Linear(self.num_ctrl, d)
        self.norm = RMSNorm(d, eps=cfg.norm_eps)
        self.fc1 = nn.Linear(d, cfg.head_hidden)
        self.fc2 = nn.Linear(cfg.head_hidden, d)
        self.dropout = nn.Dropout(cfg.dropout)
        self.out_norm = RMSNorm(d, eps=cfg.norm_eps)
        # Output layout: float groups (width = both players' columns), then categorical fields (2 * vocab).
        self.float_widths = {g: layout.float_width(g) for g in layout.target_float_groups}
        self.float_kinds = {g: layout.float_target(g).value for g in layout.target_float_groups}
        self.vocabs = {f: layout.int_vocab(f) for f in layout.categorical_targets}
        self.widths = [*self.float_widths.values(), *(NUM_PLAYERS * v for v in self.vocabs.values())]
        self.out = nn.Linear(d, sum(self.widths))
        # Copy prior: a learnable logit per categorical field added to the current frame's id, so about 96 % of
        # frames (which keep their action) need no effort; with the other logits at 0 the next id stays the
        # current one with probability `cfg.copy_prior`.
        self.int_slices = {f: layout.int_slice(f) for f in self.vocabs}
        self.copy_logit = None
        if cfg.copy_prior > 0:
            p = cfg.copy_prior
            init = [math.log(p * (v - 1) / (1 - p)) for v in self.vocabs.values()]
            self.copy_logit = nn.Parameter(torch.tensor(init))
            self.copy_logit._no_weight_decay = True

    def forward(self, h: Tensor, next_ctrl: Tensor, ints: Tensor) -> Prediction:
        """h: (..., d_model) trunk features; next_ctrl: (..., num_ctrl) controller of the predicted frame;
        ints: (..., num_ints) the current frame's ids (for the copy prior)."""
        if next_ctrl.shape[-1] != self.num_ctrl:
            raise ValueError(
                f"PredictionHeads: next_ctrl must have the layout's {self.num_ctrl} controller columns, "
                f"got shape {tuple(next_ctrl.shape)}"
            )
        z = h + self.ctrl_proj(next_ctrl)
        z = z + self.dropout(self.fc2(F.gelu(self.fc1(self.norm(z)))))
        parts = self.out(self.out_norm(z)).split(self.widths, dim=-1)
        n = len(self.float_widths)
        floats = dict(zip(self.float_widths, parts[:n], strict=True))
        categorical = {
            f: p.unflatten(-1, (NUM_PLAYERS, v)) for (f, v), p in zip(self.vocabs.items(), parts[n:], strict=True)
        }
        if self.copy_logit is not None:
            for i, (f, logits) in enumerate(categorical.items()):
                current = ints[..., self.int_slices[f]].long().unsqueeze(-1)  # (..., 2, 1)
                bonus = self.copy_logit[i].to(logits.dtype).expand(current.shape)
                categorical[f] = logits.scatter_add(-1, current, bonus)
        return Prediction(floats=floats, categorical=categorical, unimix=self.unimix)

    def describe(self) -> list[str]:
        """One line per head: name, kind and output shape per position."""
        lines = [f"float {g} ({self.float_kinds[g]}): width {w}" for g, w in self.float_widths.items()]
        lines += [f"categorical {f}: {NUM_PLAYERS} x {v}" for f, v in self.vocabs.items()]
        return lines
