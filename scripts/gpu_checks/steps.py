"""The steps of the GPU check. Each runs in its own subprocess (`gpu_check.py --step NAME`) and returns its
figures, or a list of `StepResult`s when it holds several verdicts (one per test, one per configuration).

A step raises `CouldNotRun` when what it needs is missing here (CUDA, mamba_ssm's kernels, an earlier step's
checkpoint) and any other exception when it ran and failed. The steps up to `cuda` need no GPU.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpu_checks.verdict import COULD_NOT_RUN, FAILED, HELD, CouldNotRun, StepResult

REPO = Path(__file__).resolve().parents[2]
CONTEXT, BATCH = 30, 512
TRAIN_PRESETS, BACKENDS = ("mamba2_base", "mamba2_large"), ("torch", "mamba_ssm")
TIMED_STEPS, WARMUP_STEPS = 10, 3
SMOKE_RUN = "gpu_check_smoke"
# The smoke experiment on the GPU, reading the bundle's store (its split: the smoke experiment's own).
SMOKE_OVERRIDES = (
    "experiment=smoke",
    "trainer=gpu",
    "logger=csv",
    "data.from_samples=false",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=100",
    "trainer.limit_val_batches=10",
    "trainer.enable_progress_bar=false",
    f"run_name={SMOKE_RUN}",
)
# mamba2_base as configured for real runs (backend auto), briefly, on the sample store.
BASE_OVERRIDES = (
    "experiment=mamba2_base",
    "logger=csv",
    "data.split=tail",  # the smoke run's split of the sample store
    "data.val_fraction=0.2",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=30",
    "trainer.limit_val_batches=3",
    "trainer.enable_progress_bar=false",
    "run_name=gpu_check_mamba2_base",
)
SIM_ROUNDS, PLAY_FRAMES = 10, 60
ROLLOUT_REL_TOL = 0.05  # CUDA against CPU rollout error of the same checkpoint (fp32; argmax ties may differ)


@dataclass(frozen=True)
class Context:
    """Where a step reads the store and writes its runs."""

    store: Path
    work: Path


def _run(command: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a command from the repository root (with this environment unless `env`); output captured."""
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _tail(done: subprocess.CompletedProcess, lines: int = 25) -> str:
    return "\n".join((done.stdout + done.stderr).strip().splitlines()[-lines:])


def _need_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        raise CouldNotRun("no CUDA device (torch.cuda.is_available() is False)")


def imports(ctx: Context) -> dict[str, Any]:
    """The model, data, store reader and training import with what this machine and the bundle hold."""
    import importlib
    import importlib.metadata as md
    import platform

    for name in (
        "melee_wm.model.build",
        "melee_wm.data.dataset",
        "melee_wm.data.store",
        "melee_wm.training",
        "melee_wm.eval.rollout",
    ):
        importlib.import_module(name)
    versions = {"python": platform.python_version()}
    for dist in ("torch", "lightning", "torchmetrics", "triton", "numpy", "hydra-core", "omegaconf", "pytest"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    absent = [m for m in ("peppi_py", "wandb", "modal", "mamba_ssm") if importlib.util.find_spec(m) is None]
    return {"versions": versions, "absent": absent}


def store(ctx: Context) -> dict[str, Any]:
    """The bundle's store opens, and its train and val windows gather into finite batches on the CPU."""
    import torch

    from melee_wm.data.config import DataConfig
    from melee_wm.data.dataset import MeleeDataset
    from melee_wm.data.store import open_store

    opened = open_store(ctx.store)
    cfg = DataConfig(store=str(ctx.store), context_len=CONTEXT, val_fraction=0.5, split_salt="smoke")
    figures: dict[str, Any] = {"games": len(opened.games), "frames": opened.manifest["counts"]["frames"]}
    for split in ("train", "val"):
        windows = MeleeDataset.from_store(ctx.store, split, cfg)
        batch = windows.get_batch(torch.arange(min(64, len(windows))))
        assert torch.isfinite(batch.floats).all(), f"{split}: non-finite floats in a batch"
        figures[f"{split}_windows"] = len(windows)
    assert figures["train_windows"] > 0 and figures["val_windows"] > 0, figures
    return figures


def cuda(ctx: Context) -> dict[str, Any]:
    """A CUDA device is there: its name, capability, memory and bf16 support."""
    import torch

    if not torch.cuda.is_available():
        raise CouldNotRun(
            f"no CUDA device: torch {torch.__version__} (built for CUDA {torch.version.cuda}) sees none; "
            "every step from here needs one"
        )
    props = torch.cuda.get_device_properties(0)
    return {
        "device": props.name,
        "capability": f"{props.major}.{props.minor}",
        "memory_gib": round(props.total_memory / 2**30, 1),
        "bf16": torch.cuda.is_bf16_supported(),
        "torch_cuda": torch.version.cuda,
    }


def gpu_tests(ctx: Context) -> list[StepResult]:
    """`pytest -m gpu tests/gpu`: one verdict per test (a skipped test could not run, with pytest's reason)."""
    _need_cuda()
    report = ctx.work / "gpu_tests.xml"
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider"]
    env = {**os.environ, "MELEE_WM_TEST_STORE": str(ctx.store)}  # tests/gpu/test_cuda_data.py reads it
    done = _run([*command, f"--junitxml={report}", "tests/gpu"], timeout=10_000, env=env)
    if not report.is_file():
        raise RuntimeError(f"pytest wrote no report (exit {done.returncode}):\n{_tail(done)}")
    results = []
    for case in ET.parse(report).getroot().iter("testcase"):
        name = f"test:{case.get('name')}"
        seconds = float(case.get("time", 0))
        problem = next((c for c in case if c.tag in ("failure", "error")), None)
        skipped = case.find("skipped")
        if problem is not None:
            why = (problem.get("message") or "") + "\n" + (problem.text or "")[-1500:]
            results.append(StepResult(name, FAILED, why.strip() or problem.tag, seconds))
        elif skipped is not None:
            results.append(StepResult(name, COULD_NOT_RUN, skipped.get("message") or "skipped", seconds))
        else:
            results.append(StepResult(name, HELD, seconds=seconds))
    if not results:
        raise RuntimeError(f"pytest collected no gpu tests (exit {done.returncode}):\n{_tail(done)}")
    return results


def train_steps(ctx: Context) -> list[StepResult]:
    """bf16 training steps of mamba2_base and mamba2_large with both backends on batches gathered by the
    device-resident loader (batch 512, K 30): samples/s, peak memory, and the loader's own gather rate."""
    _need_cuda()
    import torch
    from benchmarks._common import stand_in_loss

    from melee_wm.data.config import DataConfig
    from melee_wm.data.dataset import MeleeDataset
    from melee_wm.model.build import build_model
    from melee_wm.model.config import load_model_config
    from melee_wm.model.fused import load_mamba_ssm
    from melee_wm.paths import config_dir

    windows = MeleeDataset.from_store(ctx.store, "all", DataConfig(context_len=CONTEXT, device_resident=True))
    windows.to("cuda")
    g = torch.Generator().manual_seed(0)
    picks = [torch.randint(len(windows), (BATCH,), generator=g).sort().values for _ in range(TIMED_STEPS + 3)]
    results = [_timed("device_resident_loader", lambda i: windows.get_batch(picks[i % len(picks)]), len(picks), BATCH)]
    for preset in TRAIN_PRESETS:
        for backend in BACKENDS:
            name = f"train_step:{preset}/{backend}"
            if backend == "mamba_ssm":
                try:
                    source = load_mamba_ssm().source
                except RuntimeError as err:
                    results.append(StepResult(name, COULD_NOT_RUN, str(err)))
                    continue
            cfg = load_model_config(config_dir() / "model" / f"{preset}.yaml", [f"backend={backend}"])
            model = build_model(cfg, windows.layout, CONTEXT).cuda().train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
            losses: list[float] = []

            def step(i: int, model=model, opt=opt, losses=losses) -> None:
                batch = windows.get_batch(picks[i % len(picks)])
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    pred, _ = model(**batch.model_inputs(), need_state=False)
                    loss = stand_in_loss(pred, batch.targets, windows.layout)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.detach())

            torch.cuda.reset_peak_memory_stats()
            result = _timed(name, step, TIMED_STEPS, BATCH)
            values = [float(v) for v in losses]
            result.figures |= {
                "params": model.num_parameters(),
                "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3),
                "loss_first_last": [values[0], values[-1]],
            }
            if backend == "mamba_ssm":
                result.figures["kernels"] = source
            if not all(math.isfinite(v) for v in values):
                result = StepResult(name, FAILED, f"non-finite loss: {values}", result.seconds, result.figures)
            results.append(result)
            del model, opt
            torch.cuda.empty_cache()
    return results


def _timed(name: str, fn: Callable[[int], object], reps: int, batch: int) -> StepResult:
    """Median seconds of `fn(i)` over `reps` calls after WARMUP_STEPS, synchronised, as samples/s."""
    import torch

    for i in range(WARMUP_STEPS):
        fn(i)
    torch.cuda.synchronize()
    times = []
    for i in range(reps):
        start = time.perf_counter()
        fn(WARMUP_STEPS + i)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    median = sorted(times)[len(times) // 2]
    figures = {"batch": batch, "median_s": round(median, 5), "samples_per_s": round(batch / median, 1)}
    return StepResult(name, HELD, seconds=round(sum(times), 2), figures=figures)


def _train(ctx: Context, overrides: tuple[str, ...], run_name: str) -> dict[str, Any]:
    """`python train.py` with `overrides` on the bundle's store; figures from the run's final metrics."""
    _need_cuda()
    paths = [f"data.store={ctx.store}", f"paths.runs_dir={ctx.work / 'runs'}", f"paths.stores_dir={ctx.work}"]
    done = _run([sys.executable, "train.py", *overrides, *paths], timeout=10_000)
    run_dir = ctx.work / "runs" / run_name
    if done.returncode:
        raise RuntimeError(f"train.py exited {done.returncode}:\n{_tail(done)}")
    metrics = json.loads((run_dir / "final_metrics.json").read_text())
    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
    assert not bad, f"non-finite final metrics: {bad}"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file(), f"no last.ckpt in {run_dir}/checkpoints"
    backend = [line for line in (done.stdout + done.stderr).splitlines() if "model backend" in line]
    keys = ("val/loss", "val/pos_mae/all", "baseline/constant_velocity/pos_mae/all", "val/change_acc/all", "train/loss")
    return {"metrics": {k: metrics[k] for k in keys if k in metrics}, "backend_log": backend[-1:]}


def train_smoke(ctx: Context) -> dict[str, Any]:
    """A short Lightning training of the smoke experiment on CUDA (bf16-mixed, tiny model, PyTorch path)."""
    return _train(ctx, SMOKE_OVERRIDES, SMOKE_RUN)


def rollout(ctx: Context) -> dict[str, Any]:
    """`melee-wm eval` of the smoke run's checkpoint on CUDA and on the CPU: finite, and the same errors."""
    _need_cuda()
    checkpoint = ctx.work / "runs" / SMOKE_RUN / "checkpoints" / "last.ckpt"
    if not checkpoint.is_file():
        raise CouldNotRun(f"no checkpoint {checkpoint}: the train_smoke step did not leave one")
    summaries = {}
    for device in ("cuda", "cpu"):
        out = ctx.work / f"eval_{device}"
        args = ["eval", str(checkpoint), "--store", str(ctx.store), "--samples", "64", "--horizon", "20"]
        done = _run([sys.executable, "-m", "melee_wm.cli", *args, "--device", device, "--out", str(out)], 10_000)
        if done.returncode:
            raise RuntimeError(f"melee-wm eval --device {device} exited {done.returncode}:\n{_tail(done)}")
        report = json.loads((out / "eval_rollout.json").read_text())["summaries"]
        summaries[device] = {k: v["model"] for k, v in report.items() if k.startswith("pos_mae")}
    for key, on_cpu in summaries["cpu"].items():
        on_cuda = summaries["cuda"][key]
        assert math.isfinite(on_cuda), f"{key}: {on_cuda} on CUDA"
        assert abs(on_cuda - on_cpu) <= ROLLOUT_REL_TOL * abs(on_cpu), f"{key}: CUDA {on_cuda} vs CPU {on_cpu}"
    return {"pos_mae": summaries}


def sim(ctx: Context) -> list[StepResult]:
    """The simulator on CUDA: `bench.py sim`'s measure there (steps/s of `Simulator.step` with named controllers
    against the bare recurrent step, `small` and `mamba2_base`, 1 and 256 worlds; figures, the target's verdict
    is the CPU benchmark's), and `melee-wm play --device cuda` of the smoke run's checkpoint writing its files."""
    _need_cuda()
    import torch
    from benchmarks.sim import PRESETS, TARGET, WORLDS, measure

    results = []
    for preset in PRESETS:
        for worlds in WORLDS:
            start = time.perf_counter()
            figures = {k: round(v, 3) for k, v in measure(preset, torch.device("cuda"), worlds, SIM_ROUNDS).items()}
            figures["reaches_cpu_target"] = figures["ratio"] >= TARGET
            seconds = round(time.perf_counter() - start, 2)
            results.append(StepResult(f"sim_speed:{preset}/worlds{worlds}", HELD, seconds=seconds, figures=figures))
    checkpoint = ctx.work / "runs" / SMOKE_RUN / "checkpoints" / "last.ckpt"
    if not checkpoint.is_file():
        results.append(StepResult("sim_play", COULD_NOT_RUN, f"no checkpoint {checkpoint}: train_smoke left none"))
        return results
    out = ctx.work / "play" / "play.gif"
    args = ["play", str(checkpoint), "--store", str(ctx.store), "--frames", str(PLAY_FRAMES), "--device", "cuda"]
    start = time.perf_counter()
    done = _run([sys.executable, "-m", "melee_wm.cli", *args, "--out", str(out)], 10_000)
    seconds = round(time.perf_counter() - start, 2)
    written = [out, out.with_name("play_trajectories.png"), out.with_name("play_frames.json")]
    missing = [p.name for p in written if not p.is_file()]
    if done.returncode or missing:
        why = f"melee-wm play exited {done.returncode}, missing {missing}:\n{_tail(done)}"
        results.append(StepResult("sim_play", FAILED, why, seconds))
    else:
        frames = len(json.loads(written[2].read_text())["frames"])
        status = HELD if frames == PLAY_FRAMES + 1 else FAILED  # the start and every simulated frame
        why = "" if status == HELD else f"{frames} frames in {written[2].name}, expected {PLAY_FRAMES + 1}"
        results.append(StepResult("sim_play", status, why, seconds, {"frames": frames}))
    return results


def train_mamba2_base(ctx: Context) -> dict[str, Any]:
    """experiment=mamba2_base as configured (backend auto, device-resident store, batch 512) for 30 batches;
    the backend it chose is in the figures (`backend_log`)."""
    return _train(ctx, BASE_OVERRIDES, "gpu_check_mamba2_base")


# Steps in order, with the seconds each may take (Triton compiles and autotunes the fused kernels on first use).
STEPS: dict[str, tuple[Callable[[Context], Any], int]] = {
    "imports": (imports, 120),
    "store": (store, 120),
    "cuda": (cuda, 60),
    "gpu_tests": (gpu_tests, 240),
    "train_steps": (train_steps, 180),
    "train_smoke": (train_smoke, 150),
    "rollout": (rollout, 120),
    "sim": (sim, 60),
    "train_mamba2_base": (train_mamba2_base, 150),
}
CUDA_STEP = "cuda"
