"""`build_model`: the world model a `ModelConfig` names."""

from __future__ import annotations

from melee_wm.encoding.layout import Layout
from melee_wm.model.config import ModelConfig
from melee_wm.model.interface import WorldModelInterface
from melee_wm.model.mlp import FrameStackMLP
from melee_wm.model.world_model import WorldModel


def build_model(cfg: ModelConfig, layout: Layout, context_len: int) -> WorldModelInterface:
    """The model `cfg.arch` names (an `nn.Module`); `context_len` (the data's K) bounds the MLP's frame stack."""
    if cfg.arch == "mamba2":
        return WorldModel(cfg, layout)
    if cfg.arch == "mlp":
        return FrameStackMLP(cfg, layout, context_len)
    raise ValueError(f"ModelConfig.arch: unknown {cfg.arch!r}")
