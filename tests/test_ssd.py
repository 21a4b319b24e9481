"""SSD scan: chunked == sequential == step-by-step == the dense (attention-like) form, values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from melee_wm.model.ssd import ssd_chunked, ssd_sequential, ssd_step

NHEADS, HEADDIM, D_STATE, CHUNK = 4, 3, 5, 8
TOL = {torch.float64: {"rtol": 1e-10, "atol": 1e-10}, torch.float32: {"rtol": 1e-5, "atol": 1e-5}}


def make_inputs(batch=2, seqlen=19, ngroups=2, dtype=torch.float64, seed=0, with_state=True, with_d=True):
    """x, dt, A, B, C, initial_state, D with mamba-like magnitudes (dt in ~[0.01, 1], A in [-8, -0.5])."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    x = randn(batch, seqlen, NHEADS, HEADDIM)
    dt = F.softplus(randn(batch, seqlen, NHEADS) - 1)
    A = -(torch.rand(NHEADS, generator=g, dtype=torch.float64) * 7.5 + 0.5)
    B, C = randn(batch, seqlen, ngroups, D_STATE), randn(batch, seqlen, ngroups, D_STATE)
    state = randn(batch, NHEADS, HEADDIM, D_STATE) if with_state else None
    D = randn(NHEADS) if with_d else None
    return tuple(None if t is None else t.to(dtype) for t in (x, dt, A, B, C, state, D))


def dense_reference(x, dt, A, B, C, state, D):
    """y_t = sum_{s<=t} (C_t·B_s) exp(sum_{s<r<=t} dt_r A) dt_s x_s + exp(sum_{r<=t} dt_r A) C_t·S0 + D x_t,
    written out as a full (seqlen x seqlen) matrix per head: independent of both scan implementations."""
    seqlen, nheads, ngroups = x.shape[1], x.shape[2], B.shape[2]
    Bh, Ch = (t.repeat_interleave(nheads // ngroups, dim=2) for t in (B, C))  # (b, l, h, n)
    a = torch.cumsum(dt * A, dim=1)  # (b, l, h)
    diff = a[:, :, None, :] - a[:, None, :, :]  # (b, t, s, h)
    causal = torch.ones(seqlen, seqlen, dtype=torch.bool).tril()[None, :, :, None]
    weight = torch.where(causal, torch.exp(diff.masked_fill(~causal, 0)), 0)
    y = torch.einsum("bthn,bshn,btsh,bsh,bshp->bthp", Ch, Bh, weight, dt, x)
    y = y + torch.einsum("bthn,bhpn,bth->bthp", Ch, state, torch.exp(a)) + D[:, None] * x
    to_end = torch.exp(a[:, -1:] - a)  # (b, l, h)
    final = torch.exp(a[:, -1])[..., None, None] * state + torch.einsum("bsh,bsh,bshp,bshn->bhpn", to_end, dt, x, Bh)
    return y, final


def step_loop(x, dt, A, B, C, state, D):
    ys = []
    for t in range(x.shape[1]):
        y_t, state, _ = ssd_step(x[:, t], dt[:, t], A, B[:, t], C[:, t], state, D)
        ys.append(y_t)
    return torch.stack(ys, dim=1), state


@pytest.mark.parametrize("ngroups", [1, 2])
def test_sequential_matches_dense_form(ngroups):
    x, dt, A, B, C, state, D = make_inputs(ngroups=ngroups)
    y, final = ssd_sequential(x, dt, A, B, C, state, D)
    y_ref, final_ref = dense_reference(x, dt, A, B, C, state, D)
    torch.testing.assert_close(y, y_ref, **TOL[torch.float64])
    torch.testing.assert_close(final, final_ref, **TOL[torch.float64])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("seqlen", [1, 5, CHUNK, 3 * CHUNK, 3 * CHUNK + 5])
@pytest.mark.parametrize("ngroups", [1, 2])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunked_matches_sequential_and_steps(dtype, seqlen, ngroups, with_state):
    x, dt, A, B, C, state, D = make_inputs(seqlen=seqlen, ngroups=ngroups, dtype=dtype, with_state=with_state)
    y_c, final_c = ssd_chunked(x, dt, A, B, C, CHUNK, initial_state=state, D=D)
    y_s, final_s = ssd_sequential(x, dt, A, B, C, initial_state=state, D=D)
    zeros = torch.zeros(x.shape[0], NHEADS, HEADDIM, D_STATE, dtype=dtype)
    y_t, final_t = step_loop(x, dt, A, B, C, zeros if state is None else state, D)
    assert y_c.dtype == y_s.dtype == dtype and final_c.dtype == dtype
    for y, final in ((y_s, final_s), (y_t, final_t)):
        torch.testing.assert_close(y_c, y, **TOL[dtype])
        torch.testing.assert_close(final_c, final, **TOL[dtype])


def test_chunked_without_d_matches_sequential():
    x, dt, A, B, C, state, _ = make_inputs(with_d=False)
    y_c, final_c = ssd_chunked(x, dt, A, B, C, CHUNK, initial_state=state)
    y_s, final_s = ssd_sequential(x, dt, A, B, C, initial_state=state)
    torch.testing.assert_close(y_c, y_s, **TOL[torch.float64])
    torch.testing.assert_close(final_c, final_s, **TOL[torch.float64])


@pytest.mark.parametrize("split", [3, CHUNK, CHUNK + 3])
def test_split_sequence_equals_whole(split):
    x, dt, A, B, C, state, D = make_inputs(seqlen=3 * CHUNK + 2)
    y, final = ssd_chunked(x, dt, A, B, C, CHUNK, initial_state=state, D=D)
    head = [t[:, :split] for t in (x, dt)] + [A] + [t[:, :split] for t in (B, C)]
    tail = [t[:, split:] for t in (x, dt)] + [A] + [t[:, split:] for t in (B, C)]
    y1, mid = ssd_chunked(*head, CHUNK, initial_state=state, D=D)
    y2, final2 = ssd_chunked(*tail, CHUNK, initial_state=mid, D=D)
    torch.testing.assert_close(torch.cat([y1, y2], dim=1), y, **TOL[torch.float64])
    torch.testing.assert_close(final2, final, **TOL[torch.float64])


@pytest.mark.parametrize("seqlen", [2 * CHUNK, 2 * CHUNK + 3])
def test_gradients_match_sequential(seqlen):
    inputs = [t.requires_grad_() for t in make_inputs(seqlen=seqlen)]
    g = torch.Generator().manual_seed(1)
    grad_y = torch.randn(inputs[0].shape, generator=g, dtype=torch.float64)
    grad_final = torch.randn(inputs[5].shape, generator=g, dtype=torch.float64)

    def grads(fn):
        x, dt, A, B, C, state, D = inputs
        y, final = fn(x, dt, A, B, C, initial_state=state, D=D)
        return torch.autograd.grad((y, final), inputs, (grad_y, grad_final))

    chunked = grads(lambda *a, **k: ssd_chunked(*a, chunk_size=CHUNK, **k))
    sequential = grads(ssd_sequential)
    for name, gc, gs in zip(["x", "dt", "A", "B", "C", "initial_state", "D"], chunked, sequential, strict=True):
        assert gc.abs().max() > 0, name
        torch.testing.assert_close(gc, gs, **TOL[torch.float64], msg=lambda m, n=name: f"grad of {n}: {m}")


def test_autocast_bf16_keeps_scan_in_float32():
    x, dt, A, B, C, state, D = make_inputs(seqlen=2 * CHUNK + 1, dtype=torch.float32)
    y_ref, final_ref = ssd_chunked(x, dt, A, B, C, CHUNK, initial_state=state, D=D)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.is_autocast_enabled("cpu") and (x[0, 0] @ x[0, 0].T).dtype == torch.bfloat16
        y, final = ssd_chunked(x, dt, A, B, C, CHUNK, initial_state=state, D=D)
        y_step, final_step, _ = ssd_step(x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], state, D)
    assert y.dtype == final.dtype == y_step.dtype == final_step.dtype == torch.float32
    torch.testing.assert_close(y, y_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(final, final_ref, rtol=1e-6, atol=1e-6)
    y0, state0, _ = ssd_step(x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], state, D)
    torch.testing.assert_close(y_step, y0, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(final_step, state0, rtol=1e-6, atol=1e-6)


def test_bf16_inputs_scan_in_float32():
    """bf16 inputs: y comes back in bf16, the state in float32, both as accurate as float32 math allows."""
    inputs = make_inputs(seqlen=2 * CHUNK + 1, dtype=torch.bfloat16)
    y, final = ssd_chunked(*inputs[:5], CHUNK, initial_state=inputs[5], D=inputs[6])
    assert y.dtype == torch.bfloat16 and final.dtype == torch.float32
    wide = [t.double() for t in inputs]
    y_ref, final_ref = ssd_sequential(*wide[:5], initial_state=wide[5], D=wide[6])
    torch.testing.assert_close(final.double(), final_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-2, atol=1e-2)  # one bf16 rounding of y


def test_shape_mismatch_is_named():
    x, dt, A, B, C, state, _ = make_inputs()
    with pytest.raises(ValueError, match="dt has shape"):
        ssd_chunked(x, dt[:, :-1], A, B, C, CHUNK)
    with pytest.raises(ValueError, match="state has shape"):
        ssd_sequential(x, dt, A, B, C, initial_state=state[..., :-1])


@pytest.mark.parametrize("seqlen", [2 * CHUNK, 3 * CHUNK + 1])
@pytest.mark.parametrize("with_state", [False, True])
def test_gradients_from_y_alone_match_sequential(seqlen, with_state):
    """Training uses y only (the final state gets no gradient): gradients still match the recurrence."""
    inputs = [t if t is None else t.requires_grad_() for t in make_inputs(seqlen=seqlen, with_state=with_state)]
    grad_y = torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    leaves = [t for t in inputs if t is not None]

    def grads(fn):
        x, dt, A, B, C, state, D = inputs
        y, _ = fn(x, dt, A, B, C, initial_state=state, D=D)
        return torch.autograd.grad(y, leaves, grad_y)

    chunked = grads(lambda *a, **k: ssd_chunked(*a, chunk_size=CHUNK, **k))
    for gc, gs in zip(chunked, grads(ssd_sequential), strict=True):
        torch.testing.assert_close(gc, gs, **TOL[torch.float64])


@pytest.mark.parametrize("with_state", [False, True])
def test_one_chunk_and_chunked_forms_agree_at_the_switch(with_state):
    """Up to chunk_size + 2 * d_state positions run as one chunk, one more runs chunked, and
    single_chunk_max=0 forces chunks at any length: all equal the recurrence, values and gradients."""
    longest_dense = CHUNK + 2 * D_STATE
    for seqlen in (longest_dense, longest_dense + 1):
        inputs = [t if t is None else t.requires_grad_() for t in make_inputs(seqlen=seqlen, with_state=with_state)]
        leaves = [t for t in inputs if t is not None]
        grad_y = torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        results = []
        forced = lambda *a, **k: ssd_chunked(*a, chunk_size=CHUNK, single_chunk_max=0, **k)  # noqa: E731
        for fn in (lambda *a, **k: ssd_chunked(*a, chunk_size=CHUNK, **k), forced, ssd_sequential):
            x, dt, A, B, C, state, D = inputs
            y, final = fn(x, dt, A, B, C, initial_state=state, D=D)
            results.append((y, final, *torch.autograd.grad(y, leaves, grad_y)))
        for auto, chunked, want in zip(*results, strict=True):
            torch.testing.assert_close(auto, want, **TOL[torch.float64])
            torch.testing.assert_close(chunked, want, **TOL[torch.float64])


def test_final_state_can_be_skipped():
    x, dt, A, B, C, state, D = make_inputs(seqlen=3 * CHUNK + 1, with_state=True)
    y, final = ssd_chunked(x, dt, A, B, C, CHUNK, initial_state=state, D=D)
    y_only, none = ssd_chunked(x, dt, A, B, C, CHUNK, initial_state=state, D=D, final_state=False)
    assert final is not None and none is None
    torch.testing.assert_close(y_only, y, rtol=0, atol=1e-12)  # float64 round-off: the two paths may use other kernels


@pytest.mark.parametrize("ngroups", [1, 2])
def test_inplace_steps_carry_the_decay_in_a_scale(ngroups):
    """In-place steps reuse the state's memory and carry the decay in a per-head scale, folded back in before it
    underflows (80 frames of these decays force several folds); state * scale and every y equal the scan."""
    x, dt, A, B, C, state, D = make_inputs(seqlen=80, ngroups=ngroups)
    y_ref, final_ref = ssd_sequential(x, dt, A, B, C, initial_state=state, D=D)
    s, scale, ys, folds, addresses = state.clone(), None, [], 0, set()
    for t in range(x.shape[1]):
        y_t, s, new_scale = ssd_step(x[:, t], dt[:, t], A, B[:, t], C[:, t], s, D, scale=scale, inplace=True)
        folds += scale is not None and new_scale is None
        scale = new_scale
        ys.append(y_t)
        addresses.add(s.data_ptr())
    assert folds > 0 and scale is not None
    assert len(addresses) == 1  # the first step reorders the head-major state once; later steps update in place
    torch.testing.assert_close(torch.stack(ys, dim=1), y_ref, **TOL[torch.float64])
    torch.testing.assert_close(s * scale[..., None, None], final_ref, **TOL[torch.float64])


@pytest.mark.parametrize("ngroups", [1, 2])
def test_chunked_final_state_is_stepped_in_place(ngroups):
    """The scan's final state comes out d_state-major, so a rollout's first in-place step updates it where it
    lies (no reorder of a state-sized tensor), and the result still equals the sequential recurrence."""
    x, dt, A, B, C, state, D = make_inputs(seqlen=2 * CHUNK + 3, ngroups=ngroups)
    y_ref, final_ref = ssd_sequential(x, dt, A, B, C, initial_state=state, D=D)
    _, mid = ssd_chunked(x[:, :-1], dt[:, :-1], A, B[:, :-1], C[:, :-1], CHUNK, initial_state=state, D=D)
    y_t, final, scale = ssd_step(x[:, -1], dt[:, -1], A, B[:, -1], C[:, -1], mid, D, inplace=True)
    assert final.data_ptr() == mid.data_ptr()
    torch.testing.assert_close(y_t, y_ref[:, -1], **TOL[torch.float64])
    torch.testing.assert_close(final * scale[..., None, None], final_ref, **TOL[torch.float64])
