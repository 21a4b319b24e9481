"""`scripts/gpu_check.py` without CUDA says so and exits non-zero; its training overrides compose."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from melee_wm.training.compose import compose_train_config, train_config_from_dict

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_says_so_and_exits_non_zero():
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == _module().NO_CUDA_EXIT != 0
    assert json.loads(done.stdout) == {
        "cuda": False,
        "passed": False,
        "error": "no CUDA device: this check needs one GPU",
    }
    assert "no CUDA device" in done.stderr


def test_its_training_overrides_compose_and_fit_the_time_limit():
    module = _module()
    cfg = train_config_from_dict(compose_train_config(list(module.TRAIN_OVERRIDES)))
    assert (cfg.model.backend, cfg.data.from_samples, cfg.trainer.accelerator) == ("mamba_ssm", True, "gpu")
    assert cfg.data.batch_size == 512 and cfg.data.context_len == 30 and cfg.data.device_resident
    assert sum(module.LIMITS.values()) <= 8 * 60
