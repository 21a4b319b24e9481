"""Frame-stack MLP baseline: predict frame t+1 from the last `mlp_frames` frames (<= t), no recurrence.

Same embedding, heads and interface as `WorldModel`. Before the first frame the stack is zero-padded (in
feature space); `step` carries the previous `mlp_frames - 1` frame features and the window's missing-field
indicators (`melee_wm/model/missing_inputs.py`, added to the first hidden layer) as its state.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from melee_wm.encoding.layout import Layout
from melee_wm.model.config import ModelConfig
from melee_wm.model.embedding import FrameEmbedding
from melee_wm.model.heads import Prediction, PredictionHeads
from melee_wm.model.missing_inputs import MissingIndicators
from melee_wm.model.norm import RMSNorm
from melee_wm.model.summary import Summarized


@dataclass
class FrameStackState:
    """frames: (B, mlp_frames - 1, frame_dim) features of the frames before the next one (zeros before the
    first); missing: (B, groups) bool missing-field indicators of the window, None when every column is valid or
    the model takes no indicators."""

    frames: Tensor
    missing: Tensor | None = None


class FrameStackMLP(Summarized, nn.Module):
    """Embedded frames t-K'+1..t, concatenated oldest first -> MLP (the first layer's output plus the embedded
    missing-field indicators) -> RMSNorm -> heads (K' = cfg.mlp_frames)."""

    def __init__(self, cfg: ModelConfig, layout: Layout, context_len: int) -> None:
        super().__init__()
        if cfg.mlp_frames > context_len:
            raise ValueError(
                f"ModelConfig.mlp_frames = {cfg.mlp_frames} exceeds the data's context length {context_len}"
            )
        self.cfg = cfg
        self.frames = cfg.mlp_frames
        self.embed = FrameEmbedding(cfg, layout)
        widths = [self.frames * self.embed.out_dim, *cfg.mlp_hidden, cfg.d_model]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))
        self.missing = MissingIndicators(layout, widths[1]) if cfg.missing_inputs else None
        self.dropout = nn.Dropout(cfg.dropout)
        self.norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.heads = PredictionHeads(cfg, layout)

    def init_state(
        self, batch: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> FrameStackState:
        """(batch, mlp_frames - 1, frame_dim) zeros, every column valid: the padding before the first frame."""
        p = self.layers[0].weight
        shape = (batch, self.frames - 1, self.embed.out_dim)
        return FrameStackState(torch.zeros(shape, device=device or p.device, dtype=dtype or p.dtype))

    def _mlp(self, x: Tensor, missing: Tensor | None) -> Tensor:
        """x: (B, ..., mlp_frames * frame_dim) stacked frames; missing: (B, groups) bool or None."""
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i == 0 and missing is not None:
                embedded = self.missing(missing).to(x.dtype)
                x = x + embedded.view(embedded.shape[0], *[1] * (x.dim() - 2), -1)  # the same at every position
            if i < len(self.layers) - 1:
                x = self.dropout(F.gelu(x))
        return self.norm(x)

    def forward(
        self,
        floats: Tensor,
        ints: Tensor,
        next_ctrl: Tensor,
        state: FrameStackState | None = None,
        need_state: bool = True,
        valid: Tensor | None = None,
        valid_ints: Tensor | None = None,
    ) -> tuple[Prediction, FrameStackState | None]:
        """floats: (B, L, num_floats); ints: (B, L, num_ints); next_ctrl: (B, L, num_ctrl). state: the frames
        before frame 0 (None = zeros). valid: (B, num_floats), valid_ints: (B, num_ints) bool column validity of
        the window (None = all valid). The returned state is None unless `need_state` (same interface as
        `WorldModel`)."""
        missing = None if self.missing is None else self.missing.flags(valid, valid_ints)
        e = self.embed(floats, ints)
        batch, seqlen = e.shape[:2]
        before = self.init_state(batch, device=e.device, dtype=e.dtype) if state is None else state
        padded = torch.cat([before.frames, e], dim=1)
        stacked = torch.cat([padded[:, k : k + seqlen] for k in range(self.frames)], dim=-1)
        new_state = FrameStackState(padded[:, padded.shape[1] - (self.frames - 1) :], missing)
        return self.heads(self._mlp(stacked, missing), next_ctrl, ints), new_state if need_state else None

    def step(
        self, floats_t: Tensor, ints_t: Tensor, next_ctrl_t: Tensor, state: FrameStackState, inplace: bool = False
    ) -> tuple[Prediction, FrameStackState]:
        """One frame: floats_t (B, num_floats), ints_t (B, num_ints), next_ctrl_t (B, num_ctrl), with the
        indicators `state` carries. `inplace` is accepted for the interface and changes nothing (the frame stack is
        small)."""
        window = torch.cat([state.frames, self.embed(floats_t, ints_t).unsqueeze(1)], dim=1)
        pred = self.heads(self._mlp(window.flatten(1), state.missing), next_ctrl_t, ints_t)
        return pred, FrameStackState(window[:, 1:], state.missing)
