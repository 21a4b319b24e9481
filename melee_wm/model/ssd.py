"""Mamba-2 state-space-duality (SSD) scan: chunked (training), sequential (reference), one step (inference).

Conventions follow mamba_ssm: scalar decay ``A`` per head, ``B``/``C`` shared by the heads of a group (head
``h`` uses group ``h // (nheads // ngroups)``), ``dt`` already softplus'ed with its bias added. The recurrence is

    state_t = exp(dt_t * A) * state_{t-1} + dt_t * x_t ⊗ B_t,        y_t = state_t · C_t + D * x_t

The scan always runs in float32 or wider (autocast is switched off inside; float64 stays float64). ``y`` is
returned in ``x``'s dtype and the state in the scan dtype, so a long recurrent rollout keeps a float32 state.
The optional ``D: (nheads,)`` skip term is added in the scan dtype, as mamba_ssm's kernels do.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

RESCALE_BELOW = 1e-20  # ssd_step folds a carried scale into the state below this: 1 / scale must stay finite


def scan_dtype(*tensors: Tensor | None) -> torch.dtype:
    """The dtype the scan runs in: float32, or wider when an input is wider (float64 stays float64)."""
    dtype = torch.float32
    for t in tensors:
        if t is not None:
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _check_shapes(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, state: Tensor | None) -> None:
    """Raise a clear error when the (batch, [seqlen,] ...) shapes do not fit together."""
    *lead, nheads, headdim = x.shape
    ngroups, d_state = B.shape[-2:]
    expected = {
        "dt": (dt.shape, (*lead, nheads)),
        "A": (A.shape, (nheads,)),
        "B": (B.shape, (*lead, ngroups, d_state)),
        "C": (C.shape, (*lead, ngroups, d_state)),
    }
    if state is not None:
        expected["state"] = (state.shape, (lead[0], nheads, headdim, d_state))
    for name, (got, want) in expected.items():
        if tuple(got) != tuple(want):
            raise ValueError(f"ssd: {name} has shape {tuple(got)}, expected {tuple(want)} (from x {tuple(x.shape)})")
    if nheads % ngroups:
        raise ValueError(f"ssd: nheads={nheads} is not a multiple of ngroups={ngroups}")


def ssd_step(
    x_t: Tensor,
    dt_t: Tensor,
    A: Tensor,
    B_t: Tensor,
    C_t: Tensor,
    state: Tensor,
    D: Tensor | None = None,
    scale: Tensor | None = None,
    inplace: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """One recurrent step on the state ``state * scale[..., None, None]`` (``scale`` None means 1).

    ``state`` is not modified unless ``inplace`` (the caller gives it up and its memory becomes the new state; no
    autograd). In place on CPU the frame's decay goes into the returned ``scale`` instead of a pass over the
    state, so the state is read twice and written once per frame instead of three and two times; the scale is
    folded back in before it could underflow. Without ``inplace`` (or on CUDA, where the pass is cheap and the
    underflow check would synchronize) the returned scale is None.

    The new state is d_state-major in memory (as ``zero_ssm_state`` makes it): the update is then one
    outer-product add and the readout one vector-matrix product over contiguous rows, about twice as fast on CPU
    as head-major. Any memory order is accepted.

    x_t: (batch, nheads, headdim); dt_t: (batch, nheads); A: (nheads,); B_t, C_t: (batch, ngroups, d_state);
    state: (batch, nheads, headdim, d_state); scale: (batch, nheads). Returns y_t (x_t's dtype), the new state
    and its scale (scan dtype).
    """
    _check_shapes(x_t, dt_t, A, B_t, C_t, state)
    out_dtype = x_t.dtype
    with torch.autocast(x_t.device.type, enabled=False):
        cd = scan_dtype(x_t, dt_t, A, B_t, C_t, state, D)
        x, dt, A, B, C = (t.to(cd) for t in (x_t, dt_t, A, B_t, C_t))
        batch, nheads, headdim = x.shape
        ngroups, d_state = B.shape[1:]
        rows = nheads // ngroups * headdim  # the heads of a group share B and C: fold them into rows
        decay = torch.exp(dt * A)  # (batch, nheads)
        if scale is not None:
            decay = decay * scale
        old = state.permute(0, 3, 1, 2)  # (batch, d_state, nheads, headdim), a view
        reuse = inplace and old.is_contiguous() and old.dtype == cd
        if reuse and not old.is_cuda:
            new, scale = old, decay
            if bool((scale < RESCALE_BELOW).any()):
                new.mul_(scale[:, None, :, None])
                scale = None
        else:
            new = old.mul_(decay[:, None, :, None]) if reuse else (old.to(cd) * decay[:, None, :, None]).contiguous()
            scale = None
        xdt = (x * (dt if scale is None else dt / scale)[..., None]).view(batch, ngroups, 1, rows)
        by_group = new.view(batch, d_state, ngroups, rows)
        groups = [by_group[:, :, g] for g in range(ngroups)]  # (batch, d_state, rows) each
        for g, s in enumerate(groups):  # every update before any readout: autograd saves what bmm reads
            s.baddbmm_(B[:, g, :, None], xdt[:, g])
        ys = [torch.bmm(C[:, g, None], s) for g, s in enumerate(groups)]  # (batch, 1, rows) each
        y = (ys[0] if ngroups == 1 else torch.cat(ys, -1)).view(batch, nheads, headdim)
        if scale is not None:
            y = y * scale[..., None]
        if D is not None:
            y = y + D.to(cd)[:, None] * x
    return y.to(out_dtype), new.permute(0, 2, 3, 1), scale


def zero_ssm_state(batch: int, nheads: int, headdim: int, d_state: int, **factory) -> Tensor:
    """A zero SSM state (batch, nheads, headdim, d_state) laid out d_state-major in memory, as ``ssd_step``
    keeps it. ``factory``: ``device`` / ``dtype`` for ``torch.zeros``."""
    return torch.zeros(batch, d_state, nheads, headdim, **factory).permute(0, 2, 3, 1)


def ssd_sequential(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    initial_state: Tensor | None = None,
    D: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The exact recurrence, one ``ssd_step`` per position: the reference for ``ssd_chunked``.

    x: (batch, seqlen, nheads, headdim); dt: (batch, seqlen, nheads); B, C: (batch, seqlen, ngroups, d_state);
    initial_state: (batch, nheads, headdim, d_state) or None (zeros). Returns y like x and the final state.
    """
    _check_shapes(x, dt, A, B, C, initial_state)
    batch, _, nheads, headdim = x.shape
    state = initial_state
    if state is None:
        state = x.new_zeros(batch, nheads, headdim, B.shape[-1], dtype=scan_dtype(x, dt, A, B, C))
    ys = []
    for t in range(x.shape[1]):
        y_t, state, _ = ssd_step(x[:, t], dt[:, t], A, B[:, t], C[:, t], state, D)
        ys.append(y_t)
    return torch.stack(ys, dim=1), state


def ssd_chunked(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int,
    initial_state: Tensor | None = None,
    D: Tensor | None = None,
    single_chunk_max: int | None = None,
    final_state: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Chunked SSD for training: quadratic attention-like form inside chunks, recurrence between them.

    Same arguments and results as ``ssd_sequential``; any seqlen (the ragged tail is padded with dt = 0,
    which neither decays nor feeds the state, so results are exact). A sequence of at most
    ``single_chunk_max`` positions (default ``chunk_size + 2 * d_state``; 0 never) runs as one chunk: per head
    channel the quadratic form costs ~seqlen², state passing ~seqlen * (chunk_size + 2 * d_state) (chunk
    states, then their read-out). The chunk length changes the cost, never the result. ``final_state=False``
    skips the final state (returned as None): training never reads it.
    """
    _check_shapes(x, dt, A, B, C, initial_state)
    if chunk_size < 1:
        raise ValueError(f"ssd_chunked: chunk_size must be >= 1, got {chunk_size}")
    out_dtype = x.dtype
    seqlen, d_state = x.shape[1], B.shape[-1]
    if seqlen <= (chunk_size + 2 * d_state if single_chunk_max is None else single_chunk_max):
        chunk_size = max(seqlen, 1)
    with torch.autocast(x.device.type, enabled=False):
        cd = scan_dtype(x, dt, A, B, C, initial_state, D)
        y, final = _chunked(
            x.to(cd),
            dt.to(cd),
            A.to(cd),
            B.to(cd),
            C.to(cd),
            chunk_size,
            None if initial_state is None else initial_state.to(cd),
            None if D is None else D.to(cd),
            final_state,
        )
    return y.to(out_dtype), final


def _chunked(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int,
    initial_state: Tensor | None,
    D: Tensor | None,
    need_final: bool,
) -> tuple[Tensor, Tensor | None]:
    """The SSD algorithm on same-dtype tensors; see ``ssd_chunked``. The heavy products are batched matmuls:
    per head for the chunk outputs and states (B weighted per head, x head-major), with the heads of a group
    folded into the matrix rows for the read-out of entering states. State-sized tensors (batch, nheads,
    headdim, d_state) are the largest here: none is zero-filled, stacked or split in either direction."""
    batch, seqlen, nheads, headdim = x.shape
    ngroups, d_state = B.shape[-2:]
    per_group = nheads // ngroups
    q = chunk_size
    nchunks = max(1, math.ceil(seqlen / q))
    pad = nchunks * q - seqlen
    if pad:
        x, dt, B, C = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dt, B, C))

    xc = x.view(batch, nchunks, q, nheads, headdim)
    dtc = dt.view(batch, nchunks, q, nheads).transpose(2, 3)  # (b, c, h, q)
    Bc = B.view(batch, nchunks, q, ngroups, d_state).transpose(2, 3)  # (b, c, g, q, n)
    Cc = C.view(batch, nchunks, q, ngroups, d_state).transpose(2, 3)  # (b, c, g, q, n)
    a_cum = torch.cumsum(dtc * A[:, None], dim=-1)  # cumulative log-decay inside each chunk: (b, c, h, q)

    # 1. Within chunks: y_i = sum_{j<=i} (C_i·B_j) exp(a_i - a_j) dt_j x_j (+ D x_i, on the diagonal).
    causal = torch.ones(q, q, dtype=torch.bool, device=x.device).tril()
    seg = (a_cum[..., :, None] - a_cum[..., None, :]).masked_fill_(~causal, -math.inf)
    decay = (torch.exp(seg) * dtc[..., None, :]).view(batch, nchunks, ngroups, per_group, q, q)
    scores = (decay * (Cc @ Bc.transpose(-1, -2))[:, :, :, None]).view(batch, nchunks, nheads, q, q)
    if D is not None:  # in place on the diagonal alone (forward and backward touch q entries per head, not q²)
        scores.diagonal(dim1=-2, dim2=-1).add_(D[:, None])
    x_hm = xc.transpose(2, 3).contiguous()  # (b, c, h, q, p): head-major, as the products below read it
    y = (scores @ x_hm).transpose(2, 3).contiguous()  # (b, c, q, h, p)

    # 2. Each chunk's own contribution to the state at its end: (b, c', h, p, n) for the chunks in `part`,
    # x^T @ (B weighted per head by its decay to the chunk's end and dt): the product lands in state layout.
    to_end = (torch.exp(a_cum[..., -1:] - a_cum) * dtc).view(batch, nchunks, ngroups, per_group, q, 1)

    def chunk_states(part: slice) -> Tensor:
        Bw = (to_end[:, part] * Bc[:, part, :, None]).view(batch, -1, nheads, q, d_state)
        return x_hm[:, part].transpose(-1, -2) @ Bw

    # 3. Pass states between chunks: the state entering chunk k, for every chunk that has one. The last
    # chunk's contribution feeds only the final state, so it is computed apart, below, and only when asked for.
    chunk_decay = torch.exp(a_cum[..., -1])[..., None, None]  # (b, c, h, 1, 1)
    state = initial_state
    entering = [] if state is None else [state]
    if nchunks > 1:
        inner = chunk_states(slice(0, nchunks - 1))
        contributions = [inner.view(inner.shape[:1] + inner.shape[2:])] if nchunks == 2 else inner.unbind(1)
        for k, contribution in enumerate(contributions):
            state = contribution if state is None else torch.addcmul(contribution, state, chunk_decay[:, k])
            entering.append(state)
    final = None
    if need_final:  # the last chunk's contribution, d_state-major as `ssd_step` reads it (no reorder there)
        rows = per_group * headdim
        w = to_end[:, -1].reshape(batch, nheads, q).transpose(1, 2)[..., None]  # (b, q, h, 1)
        xw = (xc[:, -1] * w).view(batch, q, ngroups, rows).transpose(1, 2)  # (b, g, q, rows)
        last = (Bc[:, -1].transpose(-1, -2) @ xw).transpose(1, 2).contiguous()  # (b, n, g, rows)
        final = last.view(batch, d_state, nheads, headdim).permute(0, 2, 3, 1)
        if state is not None:
            final = final.addcmul_(state, chunk_decay[:, -1])

    # 4. Contribution of the entering state to each position: C_i · S_k * exp(a_i).
    if entering:
        first = nchunks - len(entering)
        starts = entering[0][:, None] if len(entering) == 1 else torch.stack(entering, dim=1)
        starts = starts.view(batch, len(entering), ngroups, per_group * headdim, d_state)
        y_off = (Cc[:, first:] @ starts.transpose(-1, -2)).transpose(2, 3)  # (b, c', q, g, per_group*p)
        y_off = y_off.reshape(batch, len(entering), q, nheads, headdim)
        y[:, first:] += y_off * torch.exp(a_cum[:, first:]).transpose(2, 3)[..., None]
    return y.view(batch, nchunks * q, nheads, headdim)[:, :seqlen], final
