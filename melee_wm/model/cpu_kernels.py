"""The CPU path's kernels: hand-written autograd Functions of the pure-PyTorch Mamba-2 (`backend="torch"`, the
only backend on a CPU; the same code also runs on CUDA).

Each computes what a short chain of PyTorch ops would (the tests compare them with that chain and with
gradcheck), with a backward that makes a few full-size passes instead of autograd's chain of elementwise ops
and intermediate tensors. `backend="mamba_ssm"` replaces the conv, the scan and the gated norm with
mamba_ssm's fused CUDA kernels (`fused.py`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_CACHE_ELEMENTS = 1 << 20  # block size (elements) for reductions that should stay in cache


class SplitLinearFn(torch.autograd.Function):
    """x @ weight.T + bias, returned as one output per block of ``sizes`` output features, each its own matmul.

    Same values as ``F.linear(...).split(sizes, -1)``, but neither the full output nor its gradient is ever one
    tensor: no cat of the gradients in backward, and no full-width allocation (fresh large blocks are costly:
    glibc maps blocks over 32 MB afresh, page faults and all, at every call).
    x: (..., in_features); weight: (sum(sizes), in_features); bias: (sum(sizes),) or None.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, sizes: list[int]) -> tuple[Tensor, ...]:
        x2 = x.reshape(-1, x.shape[-1])
        biases = [None] * len(sizes) if bias is None else bias.split(sizes)
        outs = tuple(
            (torch.mm(x2, w.t()) if b is None else torch.addmm(b, x2, w.t())).view(*x.shape[:-1], w.shape[0])
            for w, b in zip(weight.split(sizes), biases, strict=True)
        )
        ctx.save_for_backward(x, weight)
        ctx.sizes, ctx.has_bias = sizes, bias is not None
        ctx.set_materialize_grads(False)
        return outs

    @staticmethod
    def backward(ctx, *grads: Tensor | None) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        x, weight = ctx.saved_tensors
        sizes = ctx.sizes
        used = [g for g in grads if g is not None]
        if not used:
            return None, None, None, None
        cd = used[0].dtype  # under autocast the outputs (and their gradients) are narrower than x and weight
        x2 = x.reshape(-1, x.shape[-1]).to(cd)
        grads2 = [None if g is None else g.reshape(-1, g.shape[-1]).to(cd) for g in grads]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            for g, w in zip(grads2, weight.to(cd).split(sizes), strict=True):
                if g is not None:
                    grad_x = torch.mm(g, w) if grad_x is None else grad_x.addmm_(g, w)
            grad_x = grad_x.view(x.shape).to(x.dtype)
        if ctx.needs_input_grad[1]:
            grad_w = weight.new_empty(weight.shape, dtype=cd)
            for g, out in zip(grads2, grad_w.split(sizes), strict=True):
                if g is None:
                    out.zero_()
                else:
                    torch.mm(g.t(), x2, out=out)
            grad_w = grad_w.to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = torch.cat([x2.new_zeros(n) if g is None else g.sum(0) for g, n in zip(grads2, sizes, strict=True)])
        return grad_x, grad_w, grad_b, None


class SplitLinear(nn.Linear):
    """``nn.Linear(in_features, sum(sizes))`` (same parameters and initialisation) whose forward returns the
    output split into blocks of ``sizes`` features, each computed by its own matmul (see ``SplitLinearFn``)."""

    def __init__(self, in_features: int, sizes: list[int], bias: bool = True):
        super().__init__(in_features, sum(sizes), bias=bias)
        self.sizes = list(sizes)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """x: (..., in_features) -> one (..., size) tensor per entry of ``sizes``."""
        return SplitLinearFn.apply(x, self.weight, self.bias, self.sizes)


class RMSNormFn(torch.autograd.Function):
    """x * rsqrt(mean(x², -1) + eps) * weight, with a hand-written backward (a few full-size passes instead of
    autograd's chain of elementwise ops). x: (..., d); weight: (d,); both in one dtype."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        rstd = torch.rsqrt(torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(x.shape[-1]).add_(eps))
        ctx.save_for_backward(x, weight, rstd)
        return (x * rstd).mul_(weight)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        x, weight, rstd = ctx.saved_tensors
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_n = grad_out * weight
            dot = torch.linalg.vecdot(grad_n, x, dim=-1).unsqueeze(-1)
            grad_x = grad_n.mul_(rstd).addcmul_(x, rstd.pow(3).mul_(dot).div_(-x.shape[-1]))
        if ctx.needs_input_grad[1]:  # sum over rows of grad_out * x * rstd, as one (1, rows) @ (rows, d) product
            grad_weight = rstd.flatten()[None].mm((grad_out * x).flatten(0, -2))[0]
        return grad_x, grad_weight, None


class GatedRMSNormFn(torch.autograd.Function):
    """out = RMSNorm over groups of (x * silu(z)) * weight, with a hand-written backward that makes a few
    full-size passes instead of autograd's chain of elementwise ops (all tensors in one dtype)."""

    @staticmethod
    def forward(ctx, x: Tensor, z: Tensor, weight: Tensor, group_size: int, eps: float) -> Tensor:
        silu_z = F.silu(z)
        gated = x * silu_z
        groups = gated.unflatten(-1, (-1, group_size))
        rstd = torch.rsqrt(torch.linalg.vector_norm(groups, dim=-1, keepdim=True).square_().div_(group_size) + eps)
        out = (groups * rstd).flatten(-2).mul_(weight)
        ctx.save_for_backward(x, z, weight, silu_z, gated, rstd)
        ctx.group_size = group_size
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None]:
        x, z, weight, silu_z, gated, rstd = ctx.saved_tensors
        gs = ctx.group_size
        groups = gated.unflatten(-1, (-1, gs))
        grad_weight = None
        if ctx.needs_input_grad[2]:
            weighted = (grad_out * gated).unflatten(-1, (-1, gs)).flatten(0, -3)  # (rows, ngroups, gs)
            grad_weight = torch.einsum("rgs,rg->gs", weighted, rstd.flatten(0, -3)[..., 0]).flatten()
        grad_n = (grad_out * weight).unflatten(-1, (-1, gs))
        dot = torch.linalg.vecdot(grad_n, groups, dim=-1).unsqueeze(-1)  # (..., ngroups, 1)
        grad_g = grad_n.mul_(rstd).addcmul_(groups, rstd.pow(3).mul_(dot).div_(-gs)).flatten(-2)
        grad_x = grad_g * silu_z if ctx.needs_input_grad[0] else None
        grad_z = torch.ops.aten.silu_backward(grad_g.mul_(x), z) if ctx.needs_input_grad[1] else None
        return grad_x, grad_z, grad_weight, None, None


def depthwise_conv(x: Tensor, weight: Tensor, bias: Tensor | None, padding: int) -> Tensor:
    """out[:, t] = bias + sum_s weight[:, s] * x[:, t + s - padding], x taken as zero outside its positions.
    x: (batch, positions, channels) -> (batch, positions + 2 * padding - d_conv + 1, channels); weight:
    (channels, d_conv). One depthwise conv2d over the channels-last view of x (no layout copy)."""
    out = F.conv2d(
        x.transpose(1, 2).unsqueeze(2), weight[:, None, None, :], bias, padding=(0, padding), groups=x.shape[2]
    )
    return out.squeeze(2).transpose(1, 2)


class CausalConvSiluFn(torch.autograd.Function):
    """silu(causal depthwise conv(x) + bias + head), over the (batch, seqlen, channels) layout.

    x: (batch, seqlen, channels), zero history before position 0; head: (batch, h <= d_conv - 1, channels),
    added before the SiLU to the first h positions (the contribution of a carried conv state), or None;
    weight: (channels, d_conv); bias: (channels,) or None. Returns one output per entry of ``splits`` (the
    channel blocks the caller needs separately), so no split/cat runs in either direction.
    """

    @staticmethod
    def forward(
        ctx, x: Tensor, head: Tensor | None, weight: Tensor, bias: Tensor | None, splits: list[int]
    ) -> tuple[Tensor, ...]:
        pre = depthwise_conv(x, weight, bias, weight.shape[1] - 1)[:, : x.shape[1]]  # causal: the first seqlen
        if head is not None:
            pre[:, : head.shape[1]] += head
        ctx.save_for_backward(x, weight, pre)
        ctx.splits, ctx.has_head, ctx.has_bias = splits, head is not None, bias is not None
        return tuple(F.silu(p).to(x.dtype) for p in pre.split(splits, dim=-1))

    @staticmethod
    def backward(ctx, *grads: Tensor | None) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None, None]:
        x, weight, pre = ctx.saved_tensors
        seqlen, k = x.shape[1], weight.shape[1]
        # grad_pre is stored zero-padded after its last position: the transposed conv for grad_x reads it as is.
        padded = pre.new_empty(pre.shape[0], seqlen + k - 1, pre.shape[2])
        padded[:, seqlen:].zero_()
        grad_pre = padded[:, :seqlen]
        for g, p, out in zip(grads, pre.split(ctx.splits, -1), grad_pre.split(ctx.splits, -1), strict=True):
            if g is None:
                out.zero_()
            else:
                torch.ops.aten.silu_backward.grad_input(g.to(p.dtype), p, grad_input=out)
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:  # the transposed conv: flipped taps, padded after instead of before
            grad_x = depthwise_conv(padded, weight.flip(-1).to(padded.dtype), None, 0)
        if ctx.needs_input_grad[2]:
            grad_weight = torch.zeros_like(weight)
            step = max(1, _CACHE_ELEMENTS // (seqlen * x.shape[2]))  # batch rows per cache-sized block
            for b in range(0, x.shape[0], step):
                gp, xb = grad_pre[b : b + step], x[b : b + step]
                for shift in range(min(k, seqlen)):
                    grad_weight[:, k - 1 - shift] += (gp[:, shift:] * xb[:, : seqlen - shift]).sum((0, 1))
        grad_head = grad_pre[:, : min(k - 1, seqlen)] if ctx.has_head and ctx.needs_input_grad[1] else None
        grad_bias = padded.sum((0, 1)) if ctx.has_bias and ctx.needs_input_grad[3] else None  # padding adds 0
        return None if grad_x is None else grad_x.to(x.dtype), grad_head, grad_weight, grad_bias, None
