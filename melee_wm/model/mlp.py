"""Frame-stack MLP baseline: predict frame t+1 from the last `mlp_frames` frames (<= t), no recurrence.

Same embedding, heads and interface as `WorldModel`. Before the first frame the stack is zero-padded (in
feature space); `step` carries the previous `mlp_frames - 1` frame features as its state.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from melee_wm.encoding.layout import Layout
from melee_wm.model.config import ModelConfig
from melee_wm.model.embedding import FrameEmbedding
from melee_wm.model.heads import Prediction, PredictionHeads
from melee_wm.model.norm import RMSNorm
from melee_wm.model.summary import Summarized


class FrameStackMLP(Summarized, nn.Module):
    """Embedded frames t-K'+1..t, concatenated oldest first -> MLP -> RMSNorm -> heads (K' = cfg.mlp_frames)."""

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
        self.dropout = nn.Dropout(cfg.dropout)
        self.norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.heads = PredictionHeads(cfg, layout)

    def init_state(self, batch: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> Tensor:
        """(batch, mlp_frames - 1, frame_dim) zeros: the padding before the first frame."""
        p = self.layers[0].weight
        shape = (batch, self.frames - 1, self.embed.out_dim)
        return torch.zeros(shape, device=device or p.device, dtype=dtype or p.dtype)

    def _mlp(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.dropout(F.gelu(x))
        return self.norm(x)

    def forward(
        self, floats: Tensor, ints: Tensor, next_ctrl: Tensor, state: Tensor | None = None, need_state: bool = True
    ) -> tuple[Prediction, Tensor | None]:
        """floats: (B, L, num_floats); ints: (B, L, num_ints); next_ctrl: (B, L, num_ctrl).
        state: (B, mlp_frames - 1, frame_dim) features of the frames before frame 0 (None = zeros); the
        returned state is None unless `need_state` (same interface as `WorldModel`)."""
        e = self.embed(floats, ints)
        batch, seqlen = e.shape[:2]
        if state is None:
            state = self.init_state(batch, device=e.device, dtype=e.dtype)
        padded = torch.cat([state, e], dim=1)
        stacked = torch.cat([padded[:, k : k + seqlen] for k in range(self.frames)], dim=-1)
        new_state = padded[:, padded.shape[1] - (self.frames - 1) :]
        return self.heads(self._mlp(stacked), next_ctrl, ints), new_state if need_state else None

    def step(
        self, floats_t: Tensor, ints_t: Tensor, next_ctrl_t: Tensor, state: Tensor, inplace: bool = False
    ) -> tuple[Prediction, Tensor]:
        """One frame: floats_t (B, num_floats), ints_t (B, num_ints), next_ctrl_t (B, num_ctrl). `inplace` is
        accepted for the interface and changes nothing (the frame stack is small)."""
        window = torch.cat([state, self.embed(floats_t, ints_t).unsqueeze(1)], dim=1)
        return self.heads(self._mlp(window.flatten(1)), next_ctrl_t, ints_t), window[:, 1:]
