"""The GPU check in one command: `python scripts/gpu_check.py` on a CUDA machine (one GPU, under 8 minutes).

It runs, each as a subprocess with its own time limit, and prints one JSON summary (exit 0 only if all pass):
1. the `gpu`-marked tests (fused-kernel parity with our pure-PyTorch Mamba-2 block, weight transfer both ways,
   in-place recurrent steps continuing either backend's forward);
2. `scripts/bench.py model_gpu`: bf16 training steps of mamba2_base and mamba2_large, both backends, batch 512,
   K 30 (samples/s, peak memory), and the device-resident loader's gather rate;
3. a short `experiment=mamba2_base` training on the sample store with the fused backend.
Without CUDA it says so and exits 2 before running anything. Needs the package with its `dev` and `cuda`
extras (`pip install -e '.[dev,cuda]'`) and the sample replays (`MELEE_WM_SAMPLES` or the cache).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NO_CUDA_EXIT = 2
# Seconds per step; together under 8 minutes.
LIMITS = {"gpu_tests": 120, "bench_model_gpu": 180, "train_fused": 170}
TRAIN_OVERRIDES = (
    "experiment=mamba2_base",
    "data=samples",  # the six sample replays, encoded into the run's stores_dir on first use
    "model.backend=mamba_ssm",
    "logger=csv",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=40",
    "trainer.limit_val_batches=5",
    "trainer.enable_progress_bar=false",
    "run_name=gpu_check",
)


def _run(name: str, command: list[str], env: dict[str, str]) -> dict:
    """Run one step; returns {ok, seconds, returncode, tail} (tail: the last lines of its output)."""
    start = time.perf_counter()
    try:
        done = subprocess.run(
            command, cwd=REPO, env=env, capture_output=True, text=True, timeout=LIMITS[name], check=False
        )
        code, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as err:
        code, output = None, f"timed out after {LIMITS[name]} s\n{(err.stdout or b'')[-2000:]!r}"
    lines = output.strip().splitlines()
    seconds = round(time.perf_counter() - start, 1)
    return {"ok": code == 0, "seconds": seconds, "returncode": code, "tail": lines[-15:], "_lines": lines}


def _bench_summary(step: dict) -> None:
    """Lift the benchmark's JSON lines (train steps, loader, summary) out of its output."""
    for line in step["_lines"]:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "name" in record:
            step.setdefault("records", []).append(record)


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print(json.dumps({"cuda": False, "passed": False, "error": "no CUDA device: this check needs one GPU"}))
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); nothing was run", file=sys.stderr)
        return NO_CUDA_EXIT
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    steps: dict[str, dict] = {}
    steps["gpu_tests"] = _run("gpu_tests", [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "tests"], env)
    steps["bench_model_gpu"] = _run("bench_model_gpu", [sys.executable, "scripts/bench.py", "model_gpu"], env)
    _bench_summary(steps["bench_model_gpu"])
    with tempfile.TemporaryDirectory(prefix="melee_wm_gpu_check_") as runs:
        paths = [f"paths.runs_dir={runs}/runs", f"paths.stores_dir={runs}/stores"]
        steps["train_fused"] = _run("train_fused", [sys.executable, "train.py", *TRAIN_OVERRIDES, *paths], env)
        metrics = Path(runs) / "runs" / "gpu_check" / "final_metrics.json"
        if metrics.is_file():
            values = json.loads(metrics.read_text())
            steps["train_fused"]["metrics"] = {k: v for k, v in values.items() if k.startswith(("val/", "train/"))}
    for step in steps.values():
        step.pop("_lines")
    report = {
        "cuda": True,
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "passed": all(s["ok"] for s in steps.values()),
        "steps": steps,
    }
    print(json.dumps(report, indent=2))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
