"""Mamba-2 block in plain PyTorch, with mamba_ssm's parameter names and shapes so weights move both ways.

in_proj -> [z, xBC, dt]; xBC -> causal depthwise conv -> SiLU -> [x, B, C]; SSD scan with D skip;
gated RMSNorm of y * silu(z); out_proj. ``forward`` takes and returns the recurrent state (conv window and
SSM state, mamba_ssm's cache layout), so a sequence can be processed in pieces or frame by frame (``step``).
``backend="mamba_ssm"`` runs the same parameters through mamba_ssm's fused CUDA kernels.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from melee_wm.model.ssd import scan_dtype, ssd_chunked, ssd_step

BACKENDS = ("torch", "mamba_ssm")
_CACHE_ELEMENTS = 1 << 20  # block size (elements) for reductions that should stay in cache


class _SplitLinearFn(torch.autograd.Function):
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
    output split into blocks of ``sizes`` features, each computed by its own matmul (see ``_SplitLinearFn``)."""

    def __init__(self, in_features: int, sizes: list[int], bias: bool = True):
        super().__init__(in_features, sum(sizes), bias=bias)
        self.sizes = list(sizes)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """x: (..., in_features) -> one (..., size) tensor per entry of ``sizes``."""
        return _SplitLinearFn.apply(x, self.weight, self.bias, self.sizes)


class _RMSNormFn(torch.autograd.Function):
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
        out = _RMSNormFn.apply(x.to(cd), self.weight.to(cd), self.eps)
        return out.to(x.dtype)


class _GatedRMSNormFn(torch.autograd.Function):
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


def _depthwise_conv(x: Tensor, weight: Tensor, bias: Tensor | None, padding: int) -> Tensor:
    """out[:, t] = bias + sum_s weight[:, s] * x[:, t + s - padding], x taken as zero outside its positions.
    x: (batch, positions, channels) -> (batch, positions + 2 * padding - d_conv + 1, channels); weight:
    (channels, d_conv). One depthwise conv2d over the channels-last view of x (no layout copy)."""
    out = F.conv2d(
        x.transpose(1, 2).unsqueeze(2), weight[:, None, None, :], bias, padding=(0, padding), groups=x.shape[2]
    )
    return out.squeeze(2).transpose(1, 2)


class _CausalConvSiluFn(torch.autograd.Function):
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
        pre = _depthwise_conv(x, weight, bias, weight.shape[1] - 1)[:, : x.shape[1]]  # causal: the first seqlen
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
            grad_x = _depthwise_conv(padded, weight.flip(-1), None, 0)
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


class Mamba2State(NamedTuple):
    """Recurrent state of one block (mamba_ssm's inference-cache layout).

    conv: (batch, conv_dim, d_conv), the last d_conv pre-conv xBC inputs, oldest first.
    ssm: (batch, nheads, headdim, d_state), float32 (or wider).
    """

    conv: Tensor
    ssm: Tensor


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
        out = _GatedRMSNormFn.apply(x.to(cd), z.to(cd), self.weight.to(cd), self.group_size, self.eps)
        return out.to(x.dtype)


class Mamba2(nn.Module):
    """The Mamba-2 block. u: (batch, seqlen, d_model) -> (batch, seqlen, d_model), plus the new state."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        chunk_size: int = 64,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        A_init_range: tuple[float, float] = (1, 16),
        bias: bool = False,
        conv_bias: bool = True,
        norm_eps: float = 1e-5,
        backend: str = "torch",
    ):
        super().__init__()
        self.d_model, self.d_state, self.d_conv, self.headdim, self.ngroups = d_model, d_state, d_conv, headdim, ngroups
        self.chunk_size = chunk_size
        self.d_inner = expand * d_model
        if self.d_inner % headdim:
            raise ValueError(
                f"Mamba2: d_inner = expand*d_model = {self.d_inner} is not a multiple of headdim={headdim}"
            )
        self.nheads = self.d_inner // headdim
        if self.nheads % ngroups:
            raise ValueError(f"Mamba2: nheads={self.nheads} is not a multiple of ngroups={ngroups}")
        if not 0 < A_init_range[0] <= A_init_range[1]:
            raise ValueError(f"Mamba2: A_init_range={A_init_range} must satisfy 0 < low <= high")
        if backend not in BACKENDS:
            raise ValueError(f"Mamba2: backend={backend!r}, expected one of {BACKENDS}")
        self.backend = backend
        self._kernels = _load_mamba_ssm() if backend == "mamba_ssm" else None
        self.conv_dim = self.d_inner + 2 * ngroups * d_state

        self.in_proj = SplitLinear(d_model, [self.d_inner, self.conv_dim, self.nheads], bias=bias)  # z, xBC, dt
        self.conv1d = nn.Conv1d(
            self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim, padding=d_conv - 1, bias=conv_bias
        )
        log_dt = torch.rand(self.nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        dt = torch.exp(log_dt).clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus(dt_bias) == dt
        self.A_log = nn.Parameter(torch.log(torch.empty(self.nheads).uniform_(*A_init_range)))
        self.D = nn.Parameter(torch.ones(self.nheads))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True
        self.norm = RMSNormGated(self.d_inner, group_size=self.d_inner // ngroups, eps=norm_eps)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def init_state(
        self, batch: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> Mamba2State:
        """Zero state; conv in ``dtype`` (default: the parameters'), ssm in float32 or wider."""
        device = self.in_proj.weight.device if device is None else device
        dtype = self.in_proj.weight.dtype if dtype is None else dtype
        return Mamba2State(
            conv=torch.zeros(batch, self.conv_dim, self.d_conv, device=device, dtype=dtype),
            ssm=torch.zeros(
                batch,
                self.nheads,
                self.headdim,
                self.d_state,
                device=device,
                dtype=torch.promote_types(torch.float32, dtype),
            ),
        )

    def _ssm_inputs(self, xbc: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Post-conv xBC (..., conv_dim) -> x (..., nheads, headdim), B and C (..., ngroups, d_state)."""
        x, B, C = xbc.split([self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        return x.unflatten(-1, (self.nheads, self.headdim)), *(t.unflatten(-1, (self.ngroups, -1)) for t in (B, C))

    def _dt(self, dt: Tensor) -> Tensor:
        """softplus(dt + dt_bias) in float32 (or wider)."""
        cd = scan_dtype(dt, self.dt_bias)
        return F.softplus(dt.to(cd) + self.dt_bias.to(cd))

    def _A(self) -> Tensor:
        return -torch.exp(self.A_log.to(scan_dtype(self.A_log)))

    def _conv(self, xbc: Tensor, conv_state: Tensor | None) -> tuple[tuple[Tensor, Tensor, Tensor], Tensor]:
        """Causal depthwise conv + SiLU continuing from ``conv_state``, split into the SSM inputs.
        xbc: (batch, seqlen, conv_dim) -> x (batch, seqlen, d_inner), B and C (batch, seqlen, ngroups*d_state),
        and the new conv state (batch, conv_dim, d_conv)."""
        seqlen, k = xbc.shape[1], self.d_conv
        weight = self.conv1d.weight[:, 0]  # (conv_dim, d_conv)
        head = None
        if conv_state is not None and k > 1:  # the carried inputs' share of the first min(d_conv - 1, seqlen) outputs
            prev = conv_state[..., 1:].to(xbc.dtype)  # (batch, conv_dim, d_conv - 1), oldest first
            head = torch.stack([(prev[..., t:] * weight[:, : k - 1 - t]).sum(-1) for t in range(min(k - 1, seqlen))], 1)
        gs = self.ngroups * self.d_state
        outs = _CausalConvSiluFn.apply(xbc, head, weight, self.conv1d.bias, [self.d_inner, gs, gs])
        tail = xbc[:, -k:].transpose(1, 2)
        if seqlen < k:
            before = xbc.new_zeros(xbc.shape[0], self.conv_dim, k) if conv_state is None else conv_state
            tail = torch.cat([before[..., seqlen:].to(xbc.dtype), tail], dim=-1)
        return outs, tail.contiguous()

    def forward(
        self, u: Tensor, state: Mamba2State | None = None, need_state: bool = True
    ) -> tuple[Tensor, Mamba2State | None]:
        """u: (batch, seqlen, d_model); state from ``init_state``/a previous call, or None (zeros).
        Returns (batch, seqlen, d_model) and the state after the last position (None unless ``need_state``:
        training never reads it, and the SSM state is the scan's largest output)."""
        z, xbc, dt = self.in_proj(u)
        if self.backend == "mamba_ssm":
            y, new_state = self._forward_mamba_ssm(z, xbc, dt, state, need_state)
        else:
            (x, B, C), conv_state = self._conv(xbc, None if state is None else state.conv)
            x, B, C = (
                x.unflatten(-1, (self.nheads, self.headdim)),
                *(t.unflatten(-1, (self.ngroups, -1)) for t in (B, C)),
            )
            y, ssm_state = ssd_chunked(
                x,
                self._dt(dt),
                self._A(),
                B,
                C,
                self.chunk_size,
                initial_state=None if state is None else state.ssm,
                D=self.D,
                final_state=need_state,
            )
            y = self.norm(y.flatten(-2), z)
            new_state = Mamba2State(conv=conv_state, ssm=ssm_state) if need_state else None
        return self.out_proj(y), new_state

    def step(self, u_t: Tensor, state: Mamba2State) -> tuple[Tensor, Mamba2State]:
        """One position. u_t: (batch, d_model) -> (batch, d_model) and a new state (``state`` is untouched).
        Pure PyTorch with every backend (it is the same math on CUDA)."""
        z, xbc, dt = self.in_proj(u_t)
        window = torch.cat([state.conv[..., 1:], xbc[..., None].to(state.conv.dtype)], dim=-1)
        conv = (window * self.conv1d.weight[:, 0]).sum(-1)
        if self.conv1d.bias is not None:
            conv = conv + self.conv1d.bias
        x, B, C = self._ssm_inputs(F.silu(conv).to(xbc.dtype))
        y, ssm_state = ssd_step(x, self._dt(dt), self._A(), B, C, state.ssm, D=self.D)
        return self.out_proj(self.norm(y.flatten(-2), z)), Mamba2State(conv=window, ssm=ssm_state)

    def _forward_mamba_ssm(
        self, z: Tensor, xbc: Tensor, dt: Tensor, state: Mamba2State | None, need_state: bool
    ) -> tuple[Tensor, Mamba2State | None]:
        """The same computation through mamba_ssm's kernels; returns y after the gated norm, and the state."""
        if not z.is_cuda:
            raise RuntimeError(
                f"Mamba2(backend='mamba_ssm') runs only on CUDA tensors, got device {z.device}; "
                "use backend='torch' on CPU"
            )
        k = self._kernels
        if state is None and k.causal_conv1d_fn is not None:
            conv_state = F.pad(xbc.transpose(1, 2), (self.d_conv - xbc.shape[1], 0))
            xbc = k.causal_conv1d_fn(
                xbc.transpose(1, 2), self.conv1d.weight[:, 0], self.conv1d.bias, activation="silu"
            ).transpose(1, 2)
        else:  # carrying a conv state in: the plain conv (causal_conv1d's state API wants channel-last input)
            (x, B, C), conv_state = self._conv(xbc, None if state is None else state.conv)
            xbc = torch.cat([x, B, C], dim=-1)
        x, B, C = self._ssm_inputs(xbc)
        scan = k.mamba_chunk_scan_combined(
            x,
            dt,
            self._A(),
            B,
            C,
            chunk_size=self.chunk_size,
            D=self.D,
            dt_bias=self.dt_bias,
            dt_softplus=True,
            initial_states=None if state is None else state.ssm,
            return_final_states=need_state,
        )
        y, ssm_state = scan if need_state else (scan, None)  # upstream returns a pair only with final states
        y = k.rmsnorm_fn(
            y.flatten(-2),
            self.norm.weight,
            None,
            z=z,
            eps=self.norm.eps,
            group_size=self.norm.group_size,
            norm_before_gate=False,
        )
        return y, (Mamba2State(conv=conv_state, ssm=ssm_state) if need_state else None)


class _MambaSsmKernels(NamedTuple):
    mamba_chunk_scan_combined: object
    rmsnorm_fn: object
    causal_conv1d_fn: object | None


def _load_mamba_ssm() -> _MambaSsmKernels:
    """Import mamba_ssm's kernels (and causal_conv1d's, when installed), or raise saying what is missing."""
    try:
        from mamba_ssm.ops.triton.layernorm_gated import rmsnorm_fn
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except Exception as err:  # mamba_ssm fails with ImportError, or OSError/RuntimeError from its CUDA extension
        raise RuntimeError(
            "Mamba2(backend='mamba_ssm') needs the mamba_ssm package with its CUDA kernels "
            "(pip install 'melee_wm[cuda]' on a CUDA machine); importing it failed: "
            f"{type(err).__name__}: {err}. Use backend='torch' otherwise."
        ) from err
    try:
        from causal_conv1d import causal_conv1d_fn
    except ImportError:
        causal_conv1d_fn = None
    return _MambaSsmKernels(mamba_chunk_scan_combined, rmsnorm_fn, causal_conv1d_fn)
