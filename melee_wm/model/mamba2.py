"""Mamba-2 block in plain PyTorch, with mamba_ssm's parameter names and shapes so weights move both ways.

in_proj -> [z, xBC, dt]; xBC -> causal depthwise conv -> SiLU -> [x, B, C]; SSD scan with D skip;
gated RMSNorm of y * silu(z); out_proj. ``forward`` takes and returns the recurrent state (conv window and
SSM state, mamba_ssm's cache layout), so a sequence can be processed in pieces or frame by frame (``step``).
``backend="mamba_ssm"`` runs the same parameters on CUDA tensors through mamba_ssm's fused kernels (``fused.py``;
other devices use the PyTorch path, so its checkpoints load and run anywhere); the
pure-PyTorch path's autograd functions live in ``cpu_kernels.py``, the norms in ``norm.py``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from melee_wm.model.config import BACKENDS
from melee_wm.model.cpu_kernels import CausalConvSiluFn, SplitLinear
from melee_wm.model.fused import fused_chunk_size, load_mamba_ssm
from melee_wm.model.norm import RMSNormGated
from melee_wm.model.ssd import scan_dtype, ssd_chunked, ssd_step, zero_ssm_state


class Mamba2State(NamedTuple):
    """Recurrent state of one block (mamba_ssm's inference-cache layout).

    conv: (batch, conv_dim, d_conv), the last d_conv pre-conv xBC inputs, oldest first.
    ssm: (batch, nheads, headdim, d_state), float32 (or wider).
    ssm_scale: (batch, nheads) or None: the SSM state is ``ssm * ssm_scale[..., None, None]``; only an in-place
    ``step`` on CPU sets it. Use ``resolved()`` before reading ``ssm`` yourself. Any memory order is valid.
    """

    conv: Tensor  # init_state and step keep it time-major (a view of (batch, d_conv, conv_dim)): the step's order
    ssm: Tensor  # kept d_state-major (a view of (batch, d_state, nheads, headdim)): see ssd_step
    ssm_scale: Tensor | None = None  # the carried decay: no pass over the whole state every frame

    def resolved(self) -> Mamba2State:
        """The same state with ``ssm_scale`` folded into ``ssm`` (a copy when there is a scale to fold)."""
        if self.ssm_scale is None:
            return self
        return Mamba2State(conv=self.conv, ssm=self.ssm * self.ssm_scale[..., None, None])


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
        # Loaded where they can run; without CUDA a mamba_ssm block computes with the PyTorch path (same weights).
        self._kernels = load_mamba_ssm() if backend == "mamba_ssm" and torch.cuda.is_available() else None
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
            conv=torch.zeros(batch, self.d_conv, self.conv_dim, device=device, dtype=dtype).transpose(1, 2),
            ssm=zero_ssm_state(
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
        outs = CausalConvSiluFn.apply(xbc, head, weight, self.conv1d.bias, [self.d_inner, gs, gs])
        return outs, self._next_conv_state(xbc, conv_state)

    def _next_conv_state(self, xbc: Tensor, conv_state: Tensor | None) -> Tensor:
        """The last d_conv pre-conv inputs after `xbc` (batch, seqlen, conv_dim) followed `conv_state` (or zeros):
        (batch, conv_dim, d_conv), time-major memory, as `step` keeps it."""
        seqlen, k = xbc.shape[1], self.d_conv
        tail = xbc[:, -k:]  # (batch, <= d_conv, conv_dim)
        if seqlen < k:
            before = xbc.new_zeros(xbc.shape[0], k, self.conv_dim) if conv_state is None else conv_state.transpose(1, 2)
            tail = torch.cat([before[:, seqlen:].to(xbc.dtype), tail], dim=1)
        return tail.contiguous().transpose(1, 2)

    def forward(
        self, u: Tensor, state: Mamba2State | None = None, need_state: bool = True
    ) -> tuple[Tensor, Mamba2State | None]:
        """u: (batch, seqlen, d_model); state from ``init_state``/a previous call, or None (zeros).
        Returns (batch, seqlen, d_model) and the state after the last position (None unless ``need_state``:
        training never reads it, and the SSM state is the scan's largest output)."""
        z, xbc, dt = self.in_proj(u)
        state = None if state is None else state.resolved()
        if self.backend == "mamba_ssm" and u.is_cuda:
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

    def step(self, u_t: Tensor, state: Mamba2State, inplace: bool = False) -> tuple[Tensor, Mamba2State]:
        """One position. u_t: (batch, d_model) -> (batch, d_model) and a new state (``state`` is untouched unless
        ``inplace``: then its SSM state is updated in place, for inference loops that drop the old state).
        Pure PyTorch with every backend (it is the same math on CUDA). The new state is time-major / d_state-major
        in memory (see ``Mamba2State``), which makes the per-frame shift, conv and scan contiguous.
        """
        z, xbc, dt = F.linear(u_t, self.in_proj.weight, self.in_proj.bias).split(self.in_proj.sizes, -1)
        past = state.conv.transpose(1, 2)[:, 1:]  # (batch, d_conv - 1, conv_dim)
        window = torch.cat([past, xbc[:, None].to(past.dtype)], dim=1)  # (batch, d_conv, conv_dim)
        taps = self.conv1d.weight[:, 0].T.contiguous()  # (d_conv, conv_dim), oldest tap first
        bias = self.conv1d.bias
        conv = window[:, 0] * taps[0] if bias is None else torch.addcmul(bias, window[:, 0], taps[0])
        for j in range(1, self.d_conv):  # one fused multiply-add per tap: no (batch, d_conv, conv_dim) product
            conv = conv.addcmul_(window[:, j], taps[j])
        x, B, C = self._ssm_inputs(F.silu(conv).to(xbc.dtype))
        y, ssm, scale = ssd_step(
            x, self._dt(dt), self._A(), B, C, state.ssm, D=self.D, scale=state.ssm_scale, inplace=inplace
        )
        return self.out_proj(self.norm(y.flatten(-2), z)), Mamba2State(window.transpose(1, 2), ssm, scale)

    def _forward_mamba_ssm(
        self, z: Tensor, xbc: Tensor, dt: Tensor, state: Mamba2State | None, need_state: bool
    ) -> tuple[Tensor, Mamba2State | None]:
        """The same computation through mamba_ssm's kernels; returns y after the gated norm, and the state."""
        k = self._kernels
        if k is None:
            raise RuntimeError("Mamba2(backend='mamba_ssm') was built without CUDA, so its kernels were not loaded")
        prev = None if state is None else state.conv
        if k.causal_conv1d_fn is not None:
            initial = None
            if prev is not None:  # the last d_conv - 1 inputs, channel-last (stride 1 over channels) as it wants
                initial = prev[..., 1:].transpose(1, 2).to(xbc.dtype).contiguous().transpose(1, 2)
            conv_state = self._next_conv_state(xbc, prev)
            weight, bias = self.conv1d.weight[:, 0], self.conv1d.bias
            # xbc.transpose(1, 2): (batch, conv_dim, seqlen), channel-last in memory, which initial_states needs.
            xbc = k.causal_conv1d_fn(xbc.transpose(1, 2), weight, bias, initial_states=initial, activation="silu")
            xbc = xbc.transpose(1, 2)
        else:
            (x, B, C), conv_state = self._conv(xbc, prev)
            xbc = torch.cat([x, B, C], dim=-1)
        x, B, C = self._ssm_inputs(xbc)
        scan = k.mamba_chunk_scan_combined(
            x,
            dt,
            self._A(),
            B,
            C,
            chunk_size=fused_chunk_size(self.chunk_size),
            D=self.D,
            dt_bias=self.dt_bias,
            dt_softplus=True,
            initial_states=None if state is None else state.ssm.contiguous(),  # head-major, as the kernel writes it
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
