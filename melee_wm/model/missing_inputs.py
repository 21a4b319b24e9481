"""Missing-field indicators: which column groups of a window's game hold a format's defaults instead of data.

Old Slippi formats lack some parsed fields (`melee_wm.encoding.missing`). Their columns reach the model as
constant defaults that look like data: on the sample store about 65 % of the training frames show zero velocity
because their replays predate the velocity fields. Each window gets one flag per `missing_groups` group of the
layout (True = the game lacks it), read from the per-window column validity that batches carry
(`Batch.valid_floats` / `valid_ints`); a bias-free linear map embeds the flags and the trunk adds the result to
every frame's features. With every column valid the flags are all False and the embedding adds exactly 0.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from melee_wm.encoding.layout import Layout
from melee_wm.encoding.missing import missing_groups


class MissingIndicators(nn.Module):
    """`flags(valid, valid_ints)`: (B, num_groups) bool; `forward(flags)`: their (B, width) embedding."""

    def __init__(self, layout: Layout, width: int) -> None:
        super().__init__()
        groups = missing_groups(layout)
        self.names = tuple(g.name for g in groups)
        # member_*[c, g]: column c belongs to group g (a column belongs to at most one group).
        member_f = torch.zeros(layout.num_floats, len(groups))
        member_i = torch.zeros(layout.num_ints, len(groups))
        for g, group in enumerate(groups):
            member_f[list(group.float_columns), g] = 1.0
            member_i[list(group.int_columns), g] = 1.0
        self.register_buffer("member_floats", member_f, persistent=False)
        self.register_buffer("member_ints", member_i, persistent=False)
        self.embed = nn.Linear(len(groups), width, bias=False)

    @property
    def num_groups(self) -> int:
        return len(self.names)

    def flags(self, valid: Tensor | None, valid_ints: Tensor | None = None) -> Tensor | None:
        """valid: (B, num_floats) bool, valid_ints: (B, num_ints) bool, True where a column holds data (None: every
        column of that kind valid). Returns (B, num_groups) bool, True where one of the group's columns holds a
        default; None when both are None."""
        if valid is None and valid_ints is None:
            return None
        lacking = []
        for columns, member in ((valid, self.member_floats), (valid_ints, self.member_ints)):
            if columns is not None:
                lacking.append((~columns.bool()).to(member.dtype) @ member > 0)  # invalid columns per group
        return lacking[0] if len(lacking) == 1 else lacking[0] | lacking[1]

    def forward(self, flags: Tensor) -> Tensor:
        """flags: (B, num_groups) bool -> (B, width) features; exactly 0 for a window that lacks nothing."""
        return self.embed(flags.to(self.embed.weight.dtype))
