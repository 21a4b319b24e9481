"""mamba_ssm's fused kernels (`backend="mamba_ssm"`), imported lazily: the package is optional
(`pip install 'melee_wm[cuda]'`) and importable only on a CUDA machine.

Only three kernels are used: the SSD chunk scan and the gated RMSNorm (Triton, plain Python files) and, when
the `causal_conv1d` package is there, its CUDA conv. mamba_ssm's package `__init__` imports its compiled
selective-scan extension, which our model never calls; when that import fails (no build of the extension for
this torch), the two Triton modules are imported without running the package `__init__` (`triton_only`).
Every kernel is hidden from Dynamo (`trainer.compile`): the Triton autotuner is not traceable.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import sys
from typing import NamedTuple

import torch

from melee_wm.model.config import AUTO_BACKEND

# A child of Lightning's logger: its console handler (INFO, set up when lightning.pytorch is imported) prints the
# backend decision beside "GPU available: True"; outside Lightning the usual logging rules apply.
log = logging.getLogger("lightning.pytorch.melee_wm.backend")
# Chunk sizes upstream tests its fused scan at; the fused path runs the smallest one covering the configured
# chunk (the chunked scan is exact for any chunk size, so this changes rounding only).
FUSED_CHUNK_SIZES = (64, 128, 256)
_TRITON_MODULES = ("mamba_ssm.ops.triton.ssd_combined", "mamba_ssm.ops.triton.layernorm_gated")


class MambaSsmKernels(NamedTuple):
    """The kernels `Mamba2._forward_mamba_ssm` calls (causal_conv1d_fn is None without causal_conv1d);
    `source` says how mamba_ssm was imported ("package" or "triton_only: <why the package failed>")."""

    mamba_chunk_scan_combined: object
    rmsnorm_fn: object
    causal_conv1d_fn: object | None
    source: str


def fused_chunk_size(chunk_size: int) -> int:
    """The chunk length the fused scan runs for a configured `chunk_size`: the smallest of upstream's tested
    sizes that holds it (the largest when none does)."""
    return next((c for c in FUSED_CHUNK_SIZES if c >= chunk_size), FUSED_CHUNK_SIZES[-1])


def _import_kernel_modules() -> tuple[object, object]:
    """mamba_ssm's SSD scan and gated-norm modules (both plain Triton)."""
    return tuple(importlib.import_module(name) for name in _TRITON_MODULES)


def _import_triton_only() -> tuple[object, object]:
    """The kernel modules with the mamba_ssm package registered but its `__init__` not run."""
    spec = importlib.util.find_spec("mamba_ssm")
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError("no mamba_ssm package on the path")
    for name in [n for n in sys.modules if n == "mamba_ssm" or n.startswith("mamba_ssm.")]:
        del sys.modules[name]  # a failed package import leaves half-initialised modules behind
    sys.modules["mamba_ssm"] = importlib.util.module_from_spec(spec)  # a package object, `__init__` not executed
    return _import_kernel_modules()


@functools.cache
def load_mamba_ssm() -> MambaSsmKernels:
    """Import mamba_ssm's kernels (and causal_conv1d's, when installed), or raise saying what is missing."""
    try:
        importlib.import_module("mamba_ssm")
        ssd, norm = _import_kernel_modules()
        source = "package"
    except Exception as err:  # ImportError, or OSError/RuntimeError from its compiled extension
        source = f"triton_only: importing the mamba_ssm package failed ({type(err).__name__}: {err})"
        try:
            ssd, norm = _import_triton_only()
        except Exception as inner:
            raise RuntimeError(
                "Mamba2(backend='mamba_ssm') needs mamba_ssm's kernels (pip install 'melee_wm[cuda]' on a CUDA "
                f"machine); importing the package failed: {type(err).__name__}: {err}; importing its Triton "
                f"modules alone failed: {type(inner).__name__}: {inner}. Use backend='torch' otherwise."
            ) from inner
    try:
        from causal_conv1d import causal_conv1d_fn
    except ImportError:
        causal_conv1d_fn = None
    disable = torch.compiler.disable
    return MambaSsmKernels(
        disable(ssd.mamba_chunk_scan_combined),
        disable(norm.rmsnorm_fn),
        None if causal_conv1d_fn is None else disable(causal_conv1d_fn),
        source,
    )


@functools.cache
def resolve_backend(backend: str) -> str:
    """`auto` -> `mamba_ssm` when CUDA is available and mamba_ssm imports, else `torch`, logged with the reason.
    An explicit `mamba_ssm` on a CUDA machine must load its kernels (RuntimeError otherwise, never a silent
    fallback); without CUDA it stays `mamba_ssm` (a checkpoint trained with it loads on CPU, where the
    PyTorch path computes it). Others are returned unchanged."""
    if backend == "mamba_ssm" and torch.cuda.is_available():
        log.info("model backend mamba_ssm: kernels from %s", load_mamba_ssm().source)
    elif backend == "mamba_ssm":
        log.warning("model backend mamba_ssm without CUDA: the PyTorch path computes it (same weights)")
    if backend != AUTO_BACKEND:
        return backend
    if not torch.cuda.is_available():
        log.info("model backend auto -> torch: no CUDA device")
        return "torch"
    try:
        kernels = load_mamba_ssm()
    except RuntimeError as err:
        log.warning("model backend auto -> torch (the slower PyTorch path on CUDA): %s", err)
        return "torch"
    log.info("model backend auto -> mamba_ssm: kernels from %s", kernels.source)
    return "mamba_ssm"
