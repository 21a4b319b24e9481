"""Training-step throughput on CUDA in bf16: mamba2_base and mamba2_large, pure-PyTorch and fused backends,
batch 512, K 30; samples/s and peak GPU memory of each, and the device-resident loader's gather rate.

One step = forward, loss, backward, AdamW update on synthetic windows in the layout's shapes (as `model.py`,
which measures the CPU). The summary's ratio is fused / torch samples/s of mamba2_base (target >= 1: the fused
kernels should not be slower); a backend that cannot run (no mamba-ssm) is reported with its error and fails.
Without CUDA it raises at once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from melee_wm.data.config import DataConfig
from melee_wm.data.dataset import MeleeDataset
from melee_wm.data.store_writer import build_store
from melee_wm.encoding import EncodingConfig, Layout
from melee_wm.model.build import build_model
from melee_wm.model.config import load_model_config
from melee_wm.paths import config_dir
from melee_wm.samples import sample_dir

from ._common import record, stand_in_loss, summary
from .model import synthetic_batch

PRESETS = ("mamba2_base", "mamba2_large")
BACKENDS = ("torch", "mamba_ssm")
BATCH = 512
CONTEXT = 30
TARGET = 1.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _train_steps(preset: str, backend: str, batch: int, steps: int, device: str = "cuda") -> dict:
    """samples/s (median of `steps` timed steps after 3 warm-up steps) and peak memory of one configuration
    (`device` other than cuda: only to check this code on a CPU)."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    layout = Layout(EncodingConfig())
    cfg = load_model_config(config_dir() / "model" / f"{preset}.yaml", [f"backend={backend}"])
    model = build_model(cfg, layout, CONTEXT).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    data = synthetic_batch(layout, batch, CONTEXT)
    floats, ints, ctrl = (t.to(device) for t in (data.floats, data.ints, data.next_ctrl))
    valid = {"valid": data.valid_floats.to(device), "valid_ints": data.valid_ints.to(device)}
    targets = data.targets.to(device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):  # bf16 on the GPU only
            pred, _ = model(floats, ints, ctrl, need_state=False, **valid)
            loss = stand_in_loss(pred, targets, layout)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for _ in range(3):
        step()
    _sync(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    median = sorted(times)[len(times) // 2]
    return {
        "params": model.num_parameters(),
        "step_s": median,
        "samples_per_s": batch / median,
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
    }


def _loader(batch: int, reps: int, device: str = "cuda") -> dict:
    """Samples/s of `get_batch` with the sample store's arrays resident on the GPU (`device`)."""
    device = torch.device(device)
    store = Path(os.environ.get("MELEE_WM_BENCH_CACHE", "/tmp/melee_wm_bench")) / "gpu_sample_store"
    if not (store / "manifest.json").is_file():
        build_store([sample_dir()], store, EncodingConfig(), progress=False)
    windows = MeleeDataset.from_store(store, "all", DataConfig(context_len=CONTEXT, device_resident=True))
    windows.to(device)
    g = torch.Generator().manual_seed(0)  # host indices, sorted, as the sampler gives them (no GPU wait to locate)
    picks = [torch.randint(len(windows), (batch,), generator=g).sort().values for _ in range(reps + 3)]
    for idx in picks[:3]:
        windows.get_batch(idx)
    _sync(device)
    start = time.perf_counter()
    for idx in picks[3:]:
        windows.get_batch(idx)
    _sync(device)
    seconds = (time.perf_counter() - start) / reps
    return {"windows": len(windows), "batch_s": seconds, "samples_per_s": batch / seconds}


def run(quick: bool) -> Iterator[dict]:
    if not torch.cuda.is_available():
        raise RuntimeError("model_gpu needs a CUDA device (torch.cuda.is_available() is False)")
    batch, steps = (64, 3) if quick else (BATCH, 10)
    yield record("setup", device=torch.cuda.get_device_name(), torch=torch.__version__, batch=batch, context=CONTEXT)
    results: dict[tuple[str, str], dict] = {}
    for preset in PRESETS:
        for backend in BACKENDS:
            try:
                results[preset, backend] = _train_steps(preset, backend, batch, steps)
            except Exception as err:  # mamba-ssm missing or failing: report it, the summary fails
                results[preset, backend] = {"error": f"{type(err).__name__}: {err}"}
            yield record("train_step", preset=preset, backend=backend, **results[preset, backend])
            torch.cuda.empty_cache()
    loader = _loader(batch, 20 if quick else 100)
    yield record("device_resident_loader", **loader)
    torch_rate = results["mamba2_base", "torch"].get("samples_per_s")
    fused_rate = results["mamba2_base", "mamba_ssm"].get("samples_per_s")
    ratio = fused_rate / torch_rate if torch_rate and fused_rate else 0.0
    ok = all("error" not in r for r in results.values())
    yield summary(
        ratio=ratio,
        target=TARGET,
        passed=ok and ratio >= TARGET,
        samples_per_s={f"{p}/{b}": r.get("samples_per_s") for (p, b), r in results.items()},
        peak_memory_gib={f"{p}/{b}": r.get("peak_memory_gib") for (p, b), r in results.items()},
        loader_samples_per_s=loader["samples_per_s"],
    )
