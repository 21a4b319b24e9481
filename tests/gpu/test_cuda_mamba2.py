"""The Mamba-2 block on CUDA: the pure-PyTorch path against the sequential reference, in-place steps continuing
a forward, and (when mamba_ssm's kernels load) the fused path against both.

Imports only what a bare CUDA machine has (torch, pytest, the package's model floor): `scripts/gpu_check.py`
runs this folder there. Tolerances: the PyTorch path runs float32 (TF32 matmuls allowed by default only for
cuDNN convs) and is held to 1e-4 of the output's scale; the fused kernels compute dots in TF32 (upstream's own
fp32 tests use rtol 1e-2 / atol 3e-3), so fused comparisons are held to 1e-2.
"""

from __future__ import annotations

import pytest
import torch

from melee_wm.model.fused import load_mamba_ssm
from melee_wm.model.mamba2 import Mamba2
from melee_wm.model.ssd import ssd_chunked, ssd_sequential

pytestmark = pytest.mark.gpu
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
CFG = {"d_model": 128, "d_state": 64, "d_conv": 4, "expand": 2, "headdim": 64, "ngroups": 1, "chunk_size": 16}
PYTORCH_RTOL = 1e-4
FUSED_RTOL = 1e-2  # TF32 dots in the Triton kernels


def _kernels_problem() -> str | None:
    """Why the fused kernels cannot run here, or None."""
    if not CUDA:
        return "needs a CUDA device"
    try:
        load_mamba_ssm()
    except RuntimeError as err:
        return f"mamba_ssm's kernels did not load: {err}"
    return None


def _upstream_problem() -> str | None:
    """Why mamba_ssm's own Mamba2 module cannot be built here, or None."""
    problem = _kernels_problem()
    if problem:
        return problem
    try:
        from mamba_ssm.modules.mamba2 import Mamba2 as _  # noqa: F401
    except Exception as err:  # e.g. huggingface_hub missing where only the Triton modules were imported
        return f"mamba_ssm.modules.mamba2 does not import: {type(err).__name__}: {err}"
    return None


needs_kernels = pytest.mark.skipif(_kernels_problem() is not None, reason=str(_kernels_problem()))
needs_upstream = pytest.mark.skipif(_upstream_problem() is not None, reason=str(_upstream_problem()))


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|, in float32."""
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


@needs_cuda
def test_ssd_chunked_on_cuda_matches_the_sequential_reference():
    g = torch.Generator(device="cuda").manual_seed(0)
    b, t, h, p, n = 4, 45, 6, 16, 32

    def rnd(*shape):
        return torch.randn(*shape, device="cuda", generator=g)

    x, B, C = rnd(b, t, h, p), rnd(b, t, 1, n), rnd(b, t, 1, n)
    dt = torch.rand(b, t, h, device="cuda", generator=g) * 0.1 + 1e-3
    A = -torch.rand(h, device="cuda", generator=g) * 4 - 0.5
    init = rnd(b, h, p, n)
    y_ref, s_ref = ssd_sequential(x.double(), dt.double(), A.double(), B.double(), C.double(), init.double())
    for chunk in (15, 64):
        y, s = ssd_chunked(x, dt, A, B, C, chunk, initial_state=init)
        assert _rel_err(y, y_ref) <= PYTORCH_RTOL, chunk
        assert _rel_err(s, s_ref) <= PYTORCH_RTOL, chunk


@needs_cuda
def test_inplace_steps_on_cuda_continue_the_pytorch_forward():
    """On CUDA the in-place step multiplies the state by the decay (no carried scale); context then steps must
    equal one forward over the whole sequence."""
    torch.manual_seed(2)
    block = Mamba2(**CFG, backend="torch").cuda()
    u = torch.randn(4, 30, CFG["d_model"], device="cuda")
    with torch.no_grad():
        full, _ = block(u)
        _, state = block(u[:, :20])
        steps = []
        for t in range(20, 30):
            y, state = block.step(u[:, t], state, inplace=True)
            assert state.ssm_scale is None
            steps.append(y)
    assert _rel_err(torch.stack(steps, 1), full[:, 20:]) <= PYTORCH_RTOL


@needs_kernels
def test_fused_block_matches_the_pytorch_block_and_carries_its_state():
    """Same weights, fp32: the fused forward equals the PyTorch one (outputs, SSM and conv state), a forward
    split in two with the state carried (causal_conv1d's initial states) equals the whole, and in-place steps
    continue it. chunk_size 15 (the presets') runs the fused scan at a size upstream tests."""
    torch.manual_seed(0)
    cfg = {**CFG, "chunk_size": 15}
    plain = Mamba2(**cfg, backend="torch").cuda()
    fused = Mamba2(**cfg, backend="mamba_ssm").cuda()
    fused.load_state_dict(plain.state_dict(), strict=True)
    u = torch.randn(4, 40, cfg["d_model"], device="cuda")
    with torch.no_grad():
        (y_p, s_p), (y_f, s_f) = plain(u), fused(u)
        head, mid = fused(u[:, :17])
        tail, _ = fused(u[:, 17:], mid)
        _, state = fused(u[:, :30])
        steps = []
        for t in range(30, 40):
            y, state = fused.step(u[:, t], state, inplace=True)
            steps.append(y)
    assert _rel_err(y_f, y_p) <= FUSED_RTOL
    assert _rel_err(s_f.ssm, s_p.ssm) <= FUSED_RTOL
    torch.testing.assert_close(s_f.conv, s_p.conv)
    assert _rel_err(torch.cat([head, tail], 1), y_f) <= FUSED_RTOL
    assert _rel_err(torch.stack(steps, 1), y_f[:, 30:]) <= FUSED_RTOL


@needs_kernels
def test_fused_block_trains_in_bf16_with_gradients_close_to_the_pytorch_block():
    torch.manual_seed(1)
    plain = Mamba2(**CFG, backend="torch").cuda()
    fused = Mamba2(**CFG, backend="mamba_ssm").cuda()
    fused.load_state_dict(plain.state_dict(), strict=True)
    u = torch.randn(4, 30, CFG["d_model"], device="cuda")
    for block in (plain, fused):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y, _ = block(u, need_state=False)
        y.float().square().mean().backward()
    for (name, p), q in zip(plain.named_parameters(), fused.parameters(), strict=True):
        assert torch.isfinite(q.grad).all(), name
        assert _rel_err(q.grad, p.grad) <= 5e-2, name  # bf16 activations on both paths


@needs_upstream
def test_upstream_weights_load_into_ours_and_match():
    from mamba_ssm.modules.mamba2 import Mamba2 as UpstreamMamba2

    torch.manual_seed(0)
    upstream = UpstreamMamba2(**CFG, device="cuda")
    ours = {b: Mamba2(**CFG, backend=b).cuda() for b in ("torch", "mamba_ssm")}
    for block in ours.values():
        block.load_state_dict(upstream.state_dict(), strict=True)
    u = torch.randn(4, 40, CFG["d_model"], device="cuda")
    with torch.no_grad():
        ref = upstream(u)
        for b, block in ours.items():
            assert _rel_err(block(u)[0], ref) <= FUSED_RTOL, b


@needs_upstream
def test_our_weights_load_into_upstream_and_match():
    from mamba_ssm.modules.mamba2 import Mamba2 as UpstreamMamba2

    torch.manual_seed(1)
    ours = Mamba2(**CFG, backend="torch").cuda()
    upstream = UpstreamMamba2(**CFG, device="cuda")
    upstream.load_state_dict(ours.state_dict(), strict=True)
    u = torch.randn(4, 40, CFG["d_model"], device="cuda")
    with torch.no_grad():
        assert _rel_err(ours(u)[0], upstream(u)) <= FUSED_RTOL
