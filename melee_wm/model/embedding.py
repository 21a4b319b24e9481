"""Turn one frame's float and int columns into a feature vector, with sizes read from the `Layout`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from melee_wm.encoding.layout import Layout
from melee_wm.model.config import ModelConfig


class FrameEmbedding(nn.Module):
    """Embed every int field (one table per field, shared by both players) and concatenate the float columns.

    Output width `out_dim` = num_floats + sum over int columns of that field's embedding width.
    """

    def __init__(self, cfg: ModelConfig, layout: Layout) -> None:
        super().__init__()
        unknown = sorted(set(cfg.embed_dims) - set(layout.int_fields))
        if unknown:
            raise ValueError(f"ModelConfig.embed_dims: unknown int fields {unknown}; fields are {layout.int_fields}")
        self.slices = {f: layout.int_slice(f) for f in layout.int_fields}
        self.tables = nn.ModuleDict(
            {f: nn.Embedding(layout.int_vocab(f), cfg.embed_dim_of(f)) for f in layout.int_fields}
        )
        self.num_ints = layout.num_ints
        self.num_floats = layout.num_floats
        int_width = sum((s.stop - s.start) * cfg.embed_dim_of(f) for f, s in self.slices.items())
        self.out_dim = self.num_floats + int_width

    def forward(self, floats: Tensor, ints: Tensor) -> Tensor:
        """floats: (..., num_floats); ints: (..., num_ints) any int dtype -> (..., out_dim)."""
        if floats.shape[-1] != self.num_floats or ints.shape[-1] != self.num_ints:
            raise ValueError(
                f"FrameEmbedding: expected floats (..., {self.num_floats}) and ints (..., {self.num_ints}) "
                f"from the layout, got {tuple(floats.shape)} and {tuple(ints.shape)}"
            )
        ids = ints.long()
        parts = [floats]
        for f, table in self.tables.items():
            parts.append(table(ids[..., self.slices[f]]).flatten(-2))
        return torch.cat(parts, dim=-1)
