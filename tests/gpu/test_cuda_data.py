"""The device-resident dataset on CUDA: the same batches as on the CPU, gathered without waiting for the GPU.

The store: `$MELEE_WM_TEST_STORE` (the GPU check points it at its bundle's store, encoded in several shards),
else the sample store the other tests build (which needs the replay parser).
"""

from __future__ import annotations

import os

import pytest
import torch

from melee_wm.data.config import DataConfig
from melee_wm.data.dataset import MeleeDataset

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
STORE_ENV = "MELEE_WM_TEST_STORE"


@pytest.fixture(scope="module")
def store_path(request) -> str:
    return os.environ.get(STORE_ENV) or str(request.getfixturevalue("sample_store").path)


def _same(a, b) -> None:
    for name in ("floats", "ints", "next_ctrl", "valid_floats", "valid_ints"):
        assert torch.equal(getattr(a, name).cpu(), getattr(b, name).cpu()), name


def test_device_resident_batches_equal_the_cpu_ones(store_path):
    cfg = DataConfig(context_len=30)
    cpu = MeleeDataset.from_store(store_path, "all", cfg)
    gpu = MeleeDataset.from_store(store_path, "all", DataConfig(context_len=30, device_resident=True)).to("cuda")
    g = torch.Generator().manual_seed(0)
    for idx in (torch.randint(len(cpu), (512,), generator=g), torch.randint(len(cpu), (512,), generator=g).sort()[0]):
        batch = gpu.get_batch(idx)
        assert batch.floats.is_cuda
        _same(batch, cpu.get_batch(idx))
    with pytest.raises(IndexError, match="window indices"):
        gpu.get_batch([len(gpu)])


def test_gathering_from_host_indices_never_waits_for_the_gpu(store_path):
    """The sampler's host indices are located on the host and copied through pinned memory: with CUDA's sync
    debug mode set to error, a gather that synchronised would raise."""
    gpu = MeleeDataset.from_store(store_path, "all", DataConfig(context_len=30, device_resident=True)).to("cuda")
    idx = torch.randint(len(gpu), (512,), generator=torch.Generator().manual_seed(1)).sort()[0]
    gpu.gather(idx)  # first use: allocations
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        floats, _ = gpu.gather(idx)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert floats.shape[0] == 512 and len(gpu.shards) > 0
