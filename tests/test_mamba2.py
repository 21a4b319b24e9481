"""Mamba-2 block: mamba_ssm parameter names, state carrying (split == whole, step == forward), reference math."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from melee_wm.model.cpu_kernels import CausalConvSiluFn, GatedRMSNormFn, RMSNormFn, SplitLinear, SplitLinearFn
from melee_wm.model.fused import fused_chunk_size, load_mamba_ssm
from melee_wm.model.mamba2 import Mamba2, Mamba2State
from melee_wm.model.norm import RMSNorm
from melee_wm.model.ssd import ssd_sequential

CFG = {"d_model": 16, "d_state": 8, "d_conv": 4, "expand": 2, "headdim": 8, "ngroups": 2, "chunk_size": 8}
TIGHT = {"rtol": 1e-10, "atol": 1e-10}


def make_block(seed: int = 0, **overrides) -> Mamba2:
    torch.manual_seed(seed)
    block = Mamba2(**{**CFG, **overrides}).double()
    with torch.no_grad():  # non-trivial norm weight and D, so a wrong use of either shows
        block.norm.weight.uniform_(0.5, 1.5)
        block.D.uniform_(-1, 1)
    return block


def make_input(batch: int = 2, seqlen: int = 21, seed: int = 1) -> torch.Tensor:
    return torch.randn(
        batch, seqlen, CFG["d_model"], generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


def test_parameter_names_and_shapes_match_mamba_ssm():
    block = Mamba2(**CFG)
    d_inner = CFG["expand"] * CFG["d_model"]
    nheads, groups_x_state = d_inner // CFG["headdim"], CFG["ngroups"] * CFG["d_state"]
    conv_dim = d_inner + 2 * groups_x_state
    expected = {
        "in_proj.weight": (2 * d_inner + 2 * groups_x_state + nheads, CFG["d_model"]),
        "conv1d.weight": (conv_dim, 1, CFG["d_conv"]),
        "conv1d.bias": (conv_dim,),
        "dt_bias": (nheads,),
        "A_log": (nheads,),
        "D": (nheads,),
        "norm.weight": (d_inner,),
        "out_proj.weight": (CFG["d_model"], d_inner),
    }
    assert {k: tuple(v.shape) for k, v in block.state_dict().items()} == expected
    assert block.conv1d.padding == (CFG["d_conv"] - 1,) and block.conv1d.groups == conv_dim
    no_decay = {name for name, p in block.named_parameters() if getattr(p, "_no_weight_decay", False)}
    assert no_decay == {"dt_bias", "A_log", "D"}
    with_bias = Mamba2(**CFG, bias=True, conv_bias=False).state_dict().keys()
    assert {"in_proj.bias", "out_proj.bias"} <= with_bias and "conv1d.bias" not in with_bias


def test_initialisation_ranges():
    block = Mamba2(d_model=64, d_state=8, headdim=4, dt_min=0.01, dt_max=0.05, A_init_range=(2, 8))
    dt = F.softplus(block.dt_bias)
    assert dt.min() >= 0.01 * (1 - 1e-5) and dt.max() <= 0.05 * (1 + 1e-5) and dt.std() > 0
    A = torch.exp(block.A_log)
    assert A.min() >= 2 and A.max() <= 8 and A.std() > 0
    assert torch.equal(block.D, torch.ones_like(block.D))


def test_state_dict_round_trip():
    block, other = make_block(seed=0), make_block(seed=1)
    u = make_input()
    assert not torch.allclose(block(u)[0], other(u)[0])
    other.load_state_dict(block.state_dict(), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), block.state_dict().values(), strict=True))
    # Same weights in other tensors: BLAS may round differently by alignment, so equal up to float64 round-off.
    torch.testing.assert_close(other(u)[0], block(u)[0], rtol=0, atol=1e-12)


def reference_forward(block: Mamba2, u: torch.Tensor) -> torch.Tensor:
    """The block from zero state written the plain way: nn.Conv1d with its own padding, the sequential scan,
    and the gated RMSNorm formula."""
    d_inner, nheads, g, n = block.d_inner, block.nheads, block.ngroups, block.d_state
    z, xbc, dt = F.linear(u, block.in_proj.weight, block.in_proj.bias).split([d_inner, block.conv_dim, nheads], dim=-1)
    xbc = F.silu(block.conv1d(xbc.transpose(1, 2))[..., : u.shape[1]].transpose(1, 2))
    x, B, C = xbc.split([d_inner, g * n, g * n], dim=-1)
    y, _ = ssd_sequential(
        x.unflatten(-1, (nheads, block.headdim)),
        F.softplus(dt + block.dt_bias),
        -torch.exp(block.A_log),
        B.unflatten(-1, (g, n)),
        C.unflatten(-1, (g, n)),
        D=block.D,
    )
    gated = (y.flatten(-2) * F.silu(z)).unflatten(-1, (g, d_inner // g))
    normed = (gated / torch.sqrt(gated.pow(2).mean(-1, keepdim=True) + block.norm.eps)).flatten(-2)
    return block.out_proj(normed * block.norm.weight)


def test_forward_matches_reference():
    block, u = make_block(), make_input()
    out, state = block(u)
    torch.testing.assert_close(out, reference_forward(block, u), **TIGHT)
    assert isinstance(state, Mamba2State)
    assert state.conv.shape == (2, block.conv_dim, CFG["d_conv"]) and state.ssm.shape == (2, block.nheads, 8, 8)


@pytest.mark.parametrize("split", [2, 9])
def test_split_sequence_equals_whole(split):
    """forward(a) then forward(b, state) == forward(a + b), pieces shorter than d_conv included."""
    block, u = make_block(), make_input(seqlen=21)
    out, state = block(u)
    out1, mid = block(u[:, :split])
    out2, mid2 = block(u[:, split : split + 1], mid)
    out3, final = block(u[:, split + 1 :], mid2)
    torch.testing.assert_close(torch.cat([out1, out2, out3], dim=1), out, **TIGHT)
    torch.testing.assert_close(final.conv, state.conv, **TIGHT)
    torch.testing.assert_close(final.ssm, state.ssm, **TIGHT)


def test_step_matches_forward_and_is_pure():
    block, u = make_block(), make_input(seqlen=11)
    out, final = block(u)
    state = block.init_state(u.shape[0])
    assert state.conv.dtype == torch.float64 and not state.conv.any() and not state.ssm.any()
    for t in range(u.shape[1]):
        before = Mamba2State(state.conv.clone(), state.ssm.clone())
        out_t, new_state = block.step(u[:, t], state)
        assert torch.equal(state.conv, before.conv) and torch.equal(state.ssm, before.ssm), "step mutated its state"
        assert new_state.ssm_scale is None  # only in-place steps carry a scale
        torch.testing.assert_close(out_t, out[:, t], **TIGHT)
        state = new_state
    torch.testing.assert_close(state.conv, final.conv, **TIGHT)
    torch.testing.assert_close(state.ssm, final.ssm, **TIGHT)


def test_float32_block_and_autocast():
    torch.manual_seed(0)
    block, u = Mamba2(**CFG), make_input().float()
    out, _ = block(u)
    torch.testing.assert_close(out.double(), reference_forward(block.double(), u.double()), rtol=1e-4, atol=1e-5)
    block.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_bf16, state_bf16 = block(u)
    assert out_bf16.dtype == torch.bfloat16 and state_bf16.ssm.dtype == torch.float32
    torch.testing.assert_close(out_bf16.float(), out, rtol=0.05, atol=0.05)


def test_backward_reaches_every_parameter():
    block, u = make_block(), make_input()
    out, state = block(u, block.init_state(u.shape[0]))
    (out.square().sum() + state.ssm.square().sum()).backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name


def test_bad_config_and_backend_errors():
    with pytest.raises(ValueError, match="headdim"):
        Mamba2(d_model=10, headdim=8)
    with pytest.raises(ValueError, match="backend"):
        Mamba2(**CFG, backend="triton")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_mamba_ssm_block_without_cuda_computes_with_the_pytorch_path():
    """A block built with backend=mamba_ssm where no CUDA is loads no kernels and equals the torch block with
    the same weights (so a checkpoint trained with the fused kernels loads and runs on CPU)."""
    fused = Mamba2(**CFG, backend="mamba_ssm").double()
    plain = make_block()
    fused.load_state_dict(plain.state_dict(), strict=True)
    u = make_input()
    (y_f, s_f), (y_p, s_p) = fused(u), plain(u)
    torch.testing.assert_close(y_f, y_p, **TIGHT)
    torch.testing.assert_close(s_f.ssm, s_p.ssm, **TIGHT)


def test_fused_chunk_size_is_one_upstream_tests():
    assert [fused_chunk_size(c) for c in (1, 15, 64, 65, 128, 200, 256, 1000)] == [64, 64, 64, 128, 128, 256, 256, 256]


@pytest.mark.skipif(importlib.util.find_spec("mamba_ssm") is not None, reason="mamba_ssm is installed here")
def test_loading_the_kernels_without_mamba_ssm_names_both_attempts():
    with pytest.raises(RuntimeError, match=r"importing the package failed.*Triton modules alone failed"):
        load_mamba_ssm()


@pytest.mark.parametrize("ngroups", [1, 2])
def test_gated_rmsnorm_gradients(ngroups):
    """The hand-written backward of the gated RMSNorm against finite differences (float64)."""
    g = torch.Generator().manual_seed(0)
    x, z = (torch.randn(3, 5, 8, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    weight = torch.rand(8, generator=g, dtype=torch.float64).add_(0.5).requires_grad_()
    fn = GatedRMSNormFn.apply
    assert torch.autograd.gradcheck(lambda *a: fn(*a, 8 // ngroups, 1e-5), (x, z, weight))


@pytest.mark.parametrize("seqlen", [2, 7])
@pytest.mark.parametrize("with_head", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_causal_conv_silu_gradients_and_values(seqlen, with_head, with_bias):
    """The (batch, seqlen, channels) conv + SiLU: values equal nn.Conv1d's, gradients pass gradcheck."""
    g = torch.Generator().manual_seed(0)
    channels, d_conv, splits = 6, 4, [3, 2, 1]
    x = torch.randn(2, seqlen, channels, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(channels, d_conv, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(channels, generator=g, dtype=torch.float64, requires_grad=True) if with_bias else None
    head = None
    if with_head:
        head = torch.randn(2, min(d_conv - 1, seqlen), channels, generator=g, dtype=torch.float64)
        head.requires_grad_()
    outs = CausalConvSiluFn.apply(x, head, weight, bias, splits)
    pre = F.conv1d(x.transpose(1, 2), weight[:, None], bias, padding=d_conv - 1, groups=channels)
    pre = pre[..., :seqlen].transpose(1, 2)
    if head is not None:
        pre = torch.cat([pre[:, : head.shape[1]] + head, pre[:, head.shape[1] :]], dim=1)
    torch.testing.assert_close(torch.cat(outs, dim=-1), F.silu(pre), **TIGHT)
    inputs = tuple(t for t in (x, head, weight, bias) if t is not None)

    def fn(*args):
        it = iter(args)
        x_, head_, w_ = next(it), next(it) if with_head else None, next(it)
        return CausalConvSiluFn.apply(x_, head_, w_, next(it) if with_bias else None, splits)

    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.slow
def test_block_gradients_with_carried_state():
    """Gradients reach the input and both parts of a carried state correctly (finite differences)."""
    block = make_block(d_model=8, d_state=4, headdim=4, ngroups=1, chunk_size=3)
    u = make_input(batch=1, seqlen=5)[..., :8].clone().requires_grad_()
    g = torch.Generator().manual_seed(2)
    conv = torch.randn(1, block.conv_dim, block.d_conv, generator=g, dtype=torch.float64, requires_grad=True)
    ssm = torch.randn(1, block.nheads, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)

    def fn(u_, conv_, ssm_):
        out, state = block(u_, Mamba2State(conv_, ssm_))
        return out, state.conv, state.ssm

    assert torch.autograd.gradcheck(fn, (u, conv, ssm))


@pytest.mark.parametrize("with_bias", [False, True])
def test_split_linear_values_and_gradients(with_bias):
    """One matmul per output block == F.linear then split; gradients pass gradcheck, also with an unused output."""
    g = torch.Generator().manual_seed(0)
    sizes = [3, 4, 2]
    x = torch.randn(2, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(sum(sizes), 6, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(sum(sizes), generator=g, dtype=torch.float64, requires_grad=True) if with_bias else None
    outs = SplitLinearFn.apply(x, weight, bias, sizes)
    for out, ref in zip(outs, F.linear(x, weight, bias).split(sizes, dim=-1), strict=True):
        torch.testing.assert_close(out, ref, **TIGHT)
    inputs = (x, weight) if bias is None else (x, weight, bias)

    def fn(*args):
        return SplitLinearFn.apply(args[0], args[1], args[2] if with_bias else None, sizes)

    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradcheck(lambda *a: fn(*a)[1], inputs)  # the other outputs get no gradient


def test_rmsnorm_matches_torch_and_gradients():
    """RMSNorm == nn.RMSNorm (values, state dict); its hand-written backward passes gradcheck (float64)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 8, generator=g, dtype=torch.float64, requires_grad=True)
    ours, ref = RMSNorm(8, eps=1e-5).double(), nn.RMSNorm(8, eps=1e-5).double()
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5, generator=g)
    ours.load_state_dict(ref.state_dict(), strict=True)
    torch.testing.assert_close(ours(x), ref(x), **TIGHT)
    weight = ref.weight.detach().clone().requires_grad_()
    torch.testing.assert_close(ours.float()(x.float()), ref.float()(x.float()))
    assert ours(x.bfloat16()).dtype == torch.bfloat16
    assert torch.autograd.gradcheck(lambda x_, w_: RMSNormFn.apply(x_, w_, 1e-5), (x, weight))


def test_split_linear_is_a_linear_with_split_outputs():
    """SplitLinear: nn.Linear's parameters and initialisation; forward == F.linear split into `sizes`."""
    torch.manual_seed(3)
    ours = SplitLinear(5, [2, 4], bias=True)
    torch.manual_seed(3)
    ref = nn.Linear(5, 6)
    assert isinstance(ours, nn.Linear)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), ref.state_dict().values(), strict=True))
    x = torch.randn(3, 5)
    for out, want in zip(ours(x), ref(x).split([2, 4], dim=-1), strict=True):
        torch.testing.assert_close(out, want)
