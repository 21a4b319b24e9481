"""The Mamba-2 world model: embed each frame, run a stack of residual Mamba-2 blocks, predict the next frame.

Position t sees frames <= t (the trunk is causal) plus the controller input of frame t+1 (added in the heads),
and predicts frame t+1. `forward` over a window and repeated `step` over the same frames give the same
predictions; both carry a `WorldModelState` (per-layer `Mamba2State`s, the last frame seen, whose motion
inputs need the frame before, and the window's missing-field indicators, which `forward` reads from the column
validity it is given and every later `step` reuses).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from melee_wm.encoding.layout import Layout
from melee_wm.model.config import ModelConfig
from melee_wm.model.embedding import FrameEmbedding
from melee_wm.model.fused import resolve_backend
from melee_wm.model.heads import Prediction, PredictionHeads
from melee_wm.model.mamba2 import Mamba2, Mamba2State
from melee_wm.model.missing_inputs import MissingIndicators
from melee_wm.model.motion import MotionFeatures
from melee_wm.model.norm import RMSNorm
from melee_wm.model.summary import Summarized


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: zero a residual branch per sample with probability p (train only), rescale the rest.

    x: (batch, ...) branch output.
    """
    if not training or p == 0.0:
        return x
    keep = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device, dtype=x.dtype).bernoulli_(1 - p)
    return x * keep / (1 - p)


class ResidualBlock(nn.Module):
    """x + drop(Mamba2(RMSNorm(x))), with the mixer's recurrent state passed through."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mixer = Mamba2(
            cfg.d_model,
            d_state=cfg.d_state,
            d_conv=cfg.d_conv,
            expand=cfg.expand,
            headdim=cfg.headdim,
            ngroups=cfg.ngroups,
            chunk_size=cfg.chunk_size,
            dt_min=cfg.dt_min,
            dt_max=cfg.dt_max,
            norm_eps=cfg.norm_eps,
            backend=resolve_backend(cfg.backend),
        )
        self.dropout = nn.Dropout(cfg.dropout)
        self.layer_dropout = cfg.layer_dropout

    def _add(self, x: Tensor, branch: Tensor) -> Tensor:
        return x + drop_path(self.dropout(branch), self.layer_dropout, self.training)

    def forward(
        self, x: Tensor, state: Mamba2State | None, need_state: bool = True
    ) -> tuple[Tensor, Mamba2State | None]:
        """x: (batch, seqlen, d_model)."""
        y, state = self.mixer(self.norm(x), state, need_state)
        return self._add(x, y), state

    def step(self, x: Tensor, state: Mamba2State, inplace: bool = False) -> tuple[Tensor, Mamba2State]:
        """x: (batch, d_model)."""
        y, state = self.mixer.step(self.norm(x), state, inplace)
        return self._add(x, y), state


@dataclass
class WorldModelState:
    """layers: one `Mamba2State` per block; previous: (floats (B, num_floats), ints (B, num_ints)) of the last
    frame seen, or None before the first; missing: (B, groups) bool missing-field indicators of the window
    (`MissingIndicators.flags`), None when every column is valid or the model takes no indicators."""

    layers: list[Mamba2State]
    previous: tuple[Tensor, Tensor] | None = None
    missing: Tensor | None = None


class WorldModel(Summarized, nn.Module):
    """Frame embedding (+ motion inputs) -> input projection (+ missing-field indicators) -> n_layers residual
    Mamba-2 blocks -> final norm -> heads."""

    def __init__(self, cfg: ModelConfig, layout: Layout) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = FrameEmbedding(cfg, layout)
        self.motion = MotionFeatures(layout) if cfg.motion_inputs else None
        self.in_proj = nn.Linear(self.embed.out_dim + (MotionFeatures.width if self.motion else 0), cfg.d_model)
        self.missing = MissingIndicators(layout, cfg.d_model) if cfg.missing_inputs else None
        self.in_dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(ResidualBlock(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.heads = PredictionHeads(cfg, layout)

    def init_state(
        self, batch: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> WorldModelState:
        """Zero recurrent state (one `Mamba2State` per layer, no previous frame, every column valid): the state
        before the first frame."""
        p = self.in_proj.weight
        return WorldModelState(
            [b.mixer.init_state(batch, device=device or p.device, dtype=dtype or p.dtype) for b in self.blocks]
        )

    def _frame_features(
        self, floats: Tensor, ints: Tensor, previous: tuple[Tensor, Tensor] | None, missing: Tensor | None
    ) -> Tensor:
        """(B, L, d_model) inputs of the trunk: embedded frames and, when configured, their motion inputs and the
        window's missing-field indicators (missing: (B, groups) bool, or None)."""
        x = self.embed(floats, ints)
        if self.motion is not None:
            x = torch.cat([x, self.motion(floats, ints, previous).to(x.dtype)], -1)
        x = self.in_proj(x)
        if missing is not None:
            x = x + self.missing(missing)[:, None].to(x.dtype)
        return self.in_dropout(x)

    def forward(
        self,
        floats: Tensor,
        ints: Tensor,
        next_ctrl: Tensor,
        state: WorldModelState | None = None,
        need_state: bool = True,
        valid: Tensor | None = None,
        valid_ints: Tensor | None = None,
    ) -> tuple[Prediction, WorldModelState | None]:
        """floats: (B, L, num_floats); ints: (B, L, num_ints); next_ctrl: (B, L, num_ctrl), row t = the
        controller columns of frame t+1. state: per-layer state before frame 0 (None = zeros). valid:
        (B, num_floats) and valid_ints: (B, num_ints) bool, the window's column validity (True = holds data;
        None = every column of that kind valid), read into the missing-field indicators.
        Returns predictions of frame t+1 at every position t, and the state after the last frame, carrying the
        indicators for `step` (None when not `need_state`, as in training, which skips computing it)."""
        missing = None if self.missing is None else self.missing.flags(valid, valid_ints)
        x = self._frame_features(floats, ints, None if state is None else state.previous, missing)
        states = [None] * len(self.blocks) if state is None else state.layers
        new_states = []
        for block, s in zip(self.blocks, states, strict=True):
            x, s = block(x, s, need_state)
            new_states.append(s)
        pred = self.heads(self.norm(x), next_ctrl, ints)
        return pred, WorldModelState(new_states, (floats[:, -1], ints[:, -1]), missing) if need_state else None

    def step(
        self,
        floats_t: Tensor,
        ints_t: Tensor,
        next_ctrl_t: Tensor,
        state: WorldModelState,
        inplace: bool = False,
    ) -> tuple[Prediction, WorldModelState]:
        """One frame: floats_t (B, num_floats), ints_t (B, num_ints), next_ctrl_t (B, num_ctrl), with the
        missing-field indicators `state` carries. inplace: reuse `state`'s memory for the new state (inference
        loops that drop the old one; not under autograd)."""
        x = self._frame_features(floats_t[:, None], ints_t[:, None], state.previous, state.missing)[:, 0]
        new_states = []
        for block, s in zip(self.blocks, state.layers, strict=True):
            x, s = block.step(x, s, inplace)
            new_states.append(s)
        next_state = WorldModelState(new_states, (floats_t, ints_t), state.missing)
        return self.heads(self.norm(x), next_ctrl_t, ints_t), next_state
