"""What the Modal launcher declares: image contents, the volume, GPU choices and timeouts, in one place.

Modal validates none of this at import (a 48 h timeout or `gpu="A100:99"` is only refused at deploy time), so
`check_gpu` and `check_timeout` do it here and the tests call them on every declared value.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

APP_NAME = "melee-wm"
VOLUME_ENV = "MELEE_WM_VOLUME"  # names the Modal Volume (default DEFAULT_VOLUME)
DEFAULT_VOLUME = "melee-wm"
VOLUME_PATH = "/vol"  # where the volume is mounted: /vol/replays, /vol/stores, /vol/runs
REPLAYS_SUBDIR, STORES_SUBDIR, RUNS_SUBDIR = "replays", "stores", "runs"
REMOTE_ROOT = "/root"  # add_local_python_source puts packages here (on PYTHONPATH in the container)
REMOTE_CONF = f"{REMOTE_ROOT}/conf"  # conf/ shipped with add_local_dir (the python-source helper ships .py only)
WANDB_SECRET_ENV = "MELEE_WM_WANDB_SECRET"  # names a Modal Secret holding WANDB_API_KEY; unset = no secret
GPU_ENV = "MELEE_WM_GPU"  # default GPU of `train`/`sweep` when --gpu is not given

PYTHON_VERSION = "3.11"
TORCH = "torch==2.5.1"  # the package index's Linux x86_64 wheel of torch is its CUDA 12 build
# The fused image needs a CUDA *devel* base: mamba-ssm's setup.py runs `nvcc -V` as soon as it finds CUDA_HOME, and
# compiles its extensions with nvcc when no prebuilt wheel matches this torch / CUDA / Python.
CUDA_DEVEL_IMAGE = "nvidia/cuda:12.4.1-devel-ubuntu22.04"
# The package's runtime dependencies (pyproject.toml), pinned to the versions the test suite runs with.
PACKAGES = (
    "lightning==2.6.6",
    "torchmetrics==1.9.0",
    "hydra-core==1.3.8",
    "omegaconf==2.3.1",
    "numpy==2.4.6",
    "peppi-py==0.8.6",
    "pyarrow==21.0.0",
    "rich==15.0.0",
    "matplotlib==3.11.2",
    "wandb==0.31.0",
    "modal==1.6.4",
)
# What mamba-ssm's and causal-conv1d's setup.py import when built with --no-build-isolation (`wheel.bdist_wheel`,
# setuptools, packaging; ninja for the compile), pinned: an unpinned newer `wheel` or setuptools can drop what
# their setup.py imports.
MAMBA_BUILD_DEPS = ("packaging==24.2", "ninja==1.11.1.3", "wheel==0.45.1", "setuptools==75.8.0")
# Built with --no-build-isolation against the image's torch (their setup first looks for a matching prebuilt wheel).
MAMBA_PACKAGES = ("causal-conv1d==1.5.0.post8", "mamba-ssm==2.2.4")
# mamba-ssm 2.2.x imports `GreedySearchDecoderOnlyOutput` from transformers when the package loads and leaves
# transformers unpinned; transformers 5 removed the name (mamba-ssm 2.3.0 stopped importing it). So < 5 here.
MAMBA_RUNTIME_PINS = ("transformers==4.57.6",)
MAMBA_BUILD_ENV = {"TORCH_CUDA_ARCH_LIST": "8.0;8.6;8.9;9.0", "MAX_JOBS": "8"}

# Modal's GPU type names (its GPU guide); "H100!" pins H100 (no upgrade to H200). Not B200: the pinned torch
# (CUDA 12.4) and the mamba builds (TORCH_CUDA_ARCH_LIST up to 9.0) have no kernels for its sm_100.
GPU_TYPES = ("T4", "L4", "A10G", "L40S", "A100", "A100-40GB", "A100-80GB", "H100", "H100!", "H200")
MAX_GPUS = 8  # per container
MAX_GPUS_OF_TYPE = {"A10G": 4}  # Modal's per-container limits below MAX_GPUS
NO_BF16 = ("T4",)  # sm_75: no bf16 (trainer=gpu trains in bf16-mixed); nor in the fused build's arch list
DEFAULT_GPU = "A100-80GB"
SMOKE_GPU = "L40S"

MODAL_MAX_TIMEOUT_S = 24 * 3600  # Modal's limit for one function call
TRAIN_TIMEOUT_S = MODAL_MAX_TIMEOUT_S
SMOKE_TIMEOUT_S = 30 * 60
ENCODE_TIMEOUT_S = 6 * 3600  # one group of replay files
MERGE_TIMEOUT_S = 12 * 3600
LIST_TIMEOUT_S = 10 * 60
ENCODE_CPUS = 8.0
ENCODE_WORKERS = 8  # build_store worker processes per container
ENCODE_MEMORY_MIB = 8192  # build_store streams: memory is flat in the number of games
DEFAULT_FILES_PER_GROUP = 500


@dataclass(frozen=True)
class GpuSpec:
    """A Modal GPU request: `type` from GPU_TYPES and `count` GPUs in one container."""

    type: str
    count: int

    def __str__(self) -> str:
        return self.type if self.count == 1 else f"{self.type}:{self.count}"


def check_gpu(spec: str) -> GpuSpec:
    """Parse and check "TYPE" or "TYPE:COUNT" (ValueError naming what is wrong)."""
    name, _, count_text = spec.partition(":")
    if name.upper() not in {t.upper() for t in GPU_TYPES}:
        raise ValueError(f"GPU {spec!r}: unknown type {name!r}; expected one of {list(GPU_TYPES)}")
    name = next(t for t in GPU_TYPES if t.upper() == name.upper())
    try:
        count = int(count_text) if count_text else 1
    except ValueError:
        raise ValueError(f"GPU {spec!r}: count {count_text!r} is not a whole number") from None
    most = MAX_GPUS_OF_TYPE.get(name, MAX_GPUS)
    if not 1 <= count <= most:
        raise ValueError(f"GPU {spec!r}: count must be 1..{most} for {name}, got {count}")
    return GpuSpec(name, count)


def check_timeout(seconds: int) -> int:
    """A function timeout Modal accepts: 1 s .. 24 h (ValueError otherwise)."""
    if not 1 <= seconds <= MODAL_MAX_TIMEOUT_S:
        raise ValueError(f"timeout {seconds} s is outside Modal's 1..{MODAL_MAX_TIMEOUT_S} s")
    return seconds


def volume_name() -> str:
    """The Modal Volume's name: $MELEE_WM_VOLUME, else DEFAULT_VOLUME."""
    return os.environ.get(VOLUME_ENV) or DEFAULT_VOLUME


def wandb_secret_name() -> str | None:
    """The Modal Secret with WANDB_API_KEY named by $MELEE_WM_WANDB_SECRET, or None (W&B then runs offline)."""
    return os.environ.get(WANDB_SECRET_ENV) or None


def default_gpu() -> str:
    """$MELEE_WM_GPU, else DEFAULT_GPU (checked)."""
    return str(check_gpu(os.environ.get(GPU_ENV) or DEFAULT_GPU))
