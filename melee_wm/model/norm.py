"""RMSNorm layers (mamba_ssm's formulas and parameter names), computed in float32 or wider, returned in the
input's dtype, with the hand-written backwards of `cpu_kernels.py`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from melee_wm.model.cpu_kernels import GatedRMSNormFn, RMSNormFn
from melee_wm.model.ssd import scan_dtype


class RMSNorm(nn.Module):
    """RMSNorm over the last dim, a drop-in for ``nn.RMSNorm(hidden_size, eps)`` (same parameter, output in x's
    dtype) with a fused backward. Computed in float32 (or wider)."""

    def __init__(self, hidden_size: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., hidden_size) -> (..., hidden_size)."""
        cd = scan_dtype(x, self.weight)
        out = RMSNormFn.apply(x.to(cd), self.weight.to(cd), self.eps)
        return out.to(x.dtype)


class RMSNormGated(nn.Module):
    """RMSNorm of ``x * silu(z)`` over groups of ``group_size`` channels (mamba_ssm, norm_before_gate=False).
    Computed in float32, returned in x's dtype."""

    def __init__(self, hidden_size: int, group_size: int, eps: float = 1e-5):
        super().__init__()
        if hidden_size % group_size:
            raise ValueError(f"RMSNormGated: hidden_size={hidden_size} is not a multiple of group_size={group_size}")
        self.eps = eps
        self.group_size = group_size
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        """x, z: (..., hidden_size) -> (..., hidden_size)."""
        cd = scan_dtype(x, z)
        out = GatedRMSNormFn.apply(x.to(cd), z.to(cd), self.weight.to(cd), self.group_size, self.eps)
        return out.to(x.dtype)
