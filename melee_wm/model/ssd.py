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
from typing import NamedTuple

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
    autograd). In place on CPU the frame's decay is returned as ``scale``; otherwise the returned scale is None.
    The new state is d_state-major in memory (as ``zero_ssm_state`` makes it); any memory order is accepted.

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
        # d_state-major: the update is one outer-product add and the readout one vector-matrix product over
        # contiguous rows, about twice as fast on CPU as head-major.
        old = state.permute(0, 3, 1, 2)  # (batch, d_state, nheads, headdim), a view
        reuse = inplace and old.is_contiguous() and old.dtype == cd
        if reuse and not old.is_cuda:
            # Carry the decay as a scale instead of a pass over the state: read twice and written once per frame
            # instead of three and two times. On CUDA the pass is cheap and the underflow check would synchronize.
            new, scale = old, decay
            if bool((scale < RESCALE_BELOW).any()):  # fold the scale in before 1 / scale could overflow
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


class _Chunks(NamedTuple):
    """The scan's inputs cut into `nchunks` chunks of `q` positions (a ragged tail padded with dt = 0)."""

    x: Tensor  # (b, c, q, h, p)
    x_hm: Tensor  # (b, c, h, q, p): head-major, as the batched products read it
    dt: Tensor  # (b, c, h, q)
    B: Tensor  # (b, c, g, q, n)
    C: Tensor  # (b, c, g, q, n)
    a_cum: Tensor  # (b, c, h, q): cumulative log-decay inside each chunk


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
    """The SSD algorithm on same-dtype tensors (see ``ssd_chunked``) in four named steps, as mamba_ssm's reference
    splits it: outputs within each chunk, each chunk's own state, states passed between chunks, and the entering
    states' read-out. State-sized tensors (batch, nheads, headdim, d_state) are the largest here: none is
    zero-filled, stacked or split in either direction."""
    seqlen = x.shape[1]
    ch = _split_chunks(x, dt, A, B, C, chunk_size)
    y = _chunk_outputs(ch, D)
    entering, final = _state_passing(ch, initial_state, need_final)
    if entering:
        _add_entering_states(y, ch, entering)
    batch, nchunks, q, nheads, headdim = y.shape
    return y.view(batch, nchunks * q, nheads, headdim)[:, :seqlen], final


def _split_chunks(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, q: int) -> _Chunks:
    """Pad the sequence to whole chunks of `q` (dt = 0 neither decays nor feeds the state) and view it per chunk."""
    batch, seqlen, nheads, headdim = x.shape
    ngroups, d_state = B.shape[-2:]
    nchunks = max(1, math.ceil(seqlen / q))
    pad = nchunks * q - seqlen
    if pad:
        x, dt, B, C = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dt, B, C))
    xc = x.view(batch, nchunks, q, nheads, headdim)
    dtc = dt.view(batch, nchunks, q, nheads).transpose(2, 3)
    return _Chunks(
        x=xc,
        x_hm=xc.transpose(2, 3).contiguous(),
        dt=dtc,
        B=B.view(batch, nchunks, q, ngroups, d_state).transpose(2, 3),
        C=C.view(batch, nchunks, q, ngroups, d_state).transpose(2, 3),
        a_cum=torch.cumsum(dtc * A[:, None], dim=-1),
    )


def _chunk_outputs(ch: _Chunks, D: Tensor | None) -> Tensor:
    """Within chunks: y_i = sum_{j<=i} (C_i·B_j) exp(a_i - a_j) dt_j x_j (+ D x_i on the diagonal).
    Returns (b, c, q, h, p)."""
    batch, nchunks, nheads, q, _ = ch.x_hm.shape
    ngroups = ch.B.shape[2]
    causal = torch.ones(q, q, dtype=torch.bool, device=ch.x.device).tril()
    seg = (ch.a_cum[..., :, None] - ch.a_cum[..., None, :]).masked_fill_(~causal, -math.inf)
    decay = (torch.exp(seg) * ch.dt[..., None, :]).view(batch, nchunks, ngroups, nheads // ngroups, q, q)
    scores = (decay * (ch.C @ ch.B.transpose(-1, -2))[:, :, :, None]).view(batch, nchunks, nheads, q, q)
    if D is not None:
        # In place on the diagonal alone: forward and backward touch q entries per head, not q².
        scores.diagonal(dim1=-2, dim2=-1).add_(D[:, None])
    return (scores @ ch.x_hm).transpose(2, 3).contiguous()


def _state_weights(ch: _Chunks) -> Tensor:
    """(b, c, g, per_group, q, 1): each position's decay to its chunk's end times its dt."""
    batch, nchunks, nheads, q = ch.dt.shape
    ngroups = ch.B.shape[2]
    to_end = torch.exp(ch.a_cum[..., -1:] - ch.a_cum) * ch.dt
    return to_end.view(batch, nchunks, ngroups, nheads // ngroups, q, 1)


def _chunk_states(ch: _Chunks, to_end: Tensor, part: slice) -> Tensor:
    """Each chunk's own contribution to the state at its end, (b, c', h, p, n) for the chunks in `part`:
    x^T @ (B weighted per head by `to_end`), so the product lands in state layout."""
    batch, _, nheads, q, _ = ch.x_hm.shape
    Bw = (to_end[:, part] * ch.B[:, part, :, None]).view(batch, -1, nheads, q, ch.B.shape[-1])
    return ch.x_hm[:, part].transpose(-1, -2) @ Bw


def _state_passing(ch: _Chunks, initial_state: Tensor | None, need_final: bool) -> tuple[list[Tensor], Tensor | None]:
    """The state entering chunk k, for every chunk that has one (a list, first chunk first), and the final state
    (None unless `need_final`). The last chunk's own state feeds only the final state, so it is computed apart."""
    batch, nchunks, nheads, q, headdim = ch.x_hm.shape
    ngroups, d_state = ch.B.shape[2], ch.B.shape[-1]
    to_end = _state_weights(ch)
    chunk_decay = torch.exp(ch.a_cum[..., -1])[..., None, None]  # (b, c, h, 1, 1)
    state = initial_state
    entering = [] if state is None else [state]
    if nchunks > 1:
        inner = _chunk_states(ch, to_end, slice(0, nchunks - 1))
        contributions = [inner.view(inner.shape[:1] + inner.shape[2:])] if nchunks == 2 else inner.unbind(1)
        for k, contribution in enumerate(contributions):
            state = contribution if state is None else torch.addcmul(contribution, state, chunk_decay[:, k])
            entering.append(state)
    if not need_final:
        return entering, None
    # The last chunk's contribution, d_state-major as `ssd_step` reads it (no reorder there).
    rows = nheads // ngroups * headdim
    w = to_end[:, -1].reshape(batch, nheads, q).transpose(1, 2)[..., None]  # (b, q, h, 1)
    xw = (ch.x[:, -1] * w).view(batch, q, ngroups, rows).transpose(1, 2)  # (b, g, q, rows)
    last = (ch.B[:, -1].transpose(-1, -2) @ xw).transpose(1, 2).contiguous()  # (b, n, g, rows)
    final = last.view(batch, d_state, nheads, headdim).permute(0, 2, 3, 1)
    if state is not None:
        final = final.addcmul_(state, chunk_decay[:, -1])
    return entering, final


def _add_entering_states(y: Tensor, ch: _Chunks, entering: list[Tensor]) -> None:
    """Add each entering state's read-out to its chunk's outputs in place: y_i += C_i · S_k * exp(a_i).
    y: (b, c, q, h, p); the heads of a group are folded into the matrix rows."""
    batch, nchunks, q, nheads, headdim = y.shape
    ngroups, d_state = ch.C.shape[2], ch.C.shape[-1]
    first = nchunks - len(entering)
    starts = entering[0][:, None] if len(entering) == 1 else torch.stack(entering, dim=1)
    starts = starts.view(batch, len(entering), ngroups, nheads // ngroups * headdim, d_state)
    y_off = (ch.C[:, first:] @ starts.transpose(-1, -2)).transpose(2, 3)  # (b, c', q, g, per_group*p)
    y_off = y_off.reshape(batch, len(entering), q, nheads, headdim)
    y[:, first:] += y_off * torch.exp(ch.a_cum[:, first:]).transpose(2, 3)[..., None]
