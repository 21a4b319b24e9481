"""mamba_ssm's fused CUDA kernels (`backend="mamba_ssm"`), imported lazily: the package is optional
(`pip install 'melee_wm[cuda]'`) and importable only on a CUDA machine."""

from __future__ import annotations

from typing import NamedTuple

import torch

from melee_wm.model.config import AUTO_BACKEND


class MambaSsmKernels(NamedTuple):
    """The kernels `Mamba2._forward_mamba_ssm` calls (causal_conv1d_fn is None without causal_conv1d)."""

    mamba_chunk_scan_combined: object
    rmsnorm_fn: object
    causal_conv1d_fn: object | None


def load_mamba_ssm() -> MambaSsmKernels:
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
    return MambaSsmKernels(mamba_chunk_scan_combined, rmsnorm_fn, causal_conv1d_fn)


def resolve_backend(backend: str) -> str:
    """`auto` -> `mamba_ssm` when CUDA is available and mamba_ssm imports, else `torch`; others unchanged."""
    if backend != AUTO_BACKEND:
        return backend
    if not torch.cuda.is_available():
        return "torch"
    try:
        load_mamba_ssm()
    except RuntimeError:
        return "torch"
    return "mamba_ssm"
