"""Choosing the Mamba-2 backend: `auto` says what it chose and why, and a model trained with
`backend=mamba_ssm` saves a checkpoint that loads and runs on a machine without CUDA."""

from __future__ import annotations

import logging

import pytest
import torch

from melee_wm.model.build import build_model
from melee_wm.model.config import ModelConfig
from melee_wm.model.fused import resolve_backend
from melee_wm.training import train
from melee_wm.training.compose import compose_train_config, train_config_from_dict
from melee_wm.training.module import WorldModelModule

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")


@no_cuda
def test_auto_says_which_backend_it_chose_and_why(caplog):
    caplog.set_level(logging.INFO, logger="lightning.pytorch.melee_wm.backend")  # Lightning's console shows it
    resolve_backend.cache_clear()
    assert resolve_backend("auto") == "torch"
    assert "model backend auto -> torch: no CUDA device" in caplog.text
    resolve_backend.cache_clear()


def test_fused_preconditions_are_config_errors():
    with pytest.raises(ValueError, match="multiple of 8"):
        ModelConfig(d_model=36, headdim=8, d_state=2, backend="mamba_ssm")  # conv_dim 72 + 4 = 76
    with pytest.raises(ValueError, match="d_conv"):
        ModelConfig(d_conv=5, backend="auto")
    assert ModelConfig(d_conv=5, backend="torch").d_conv == 5


@pytest.mark.slow
@no_cuda
def test_a_checkpoint_trained_with_the_fused_backend_loads_and_runs_on_cpu(sample_store, tmp_path):
    overrides = [
        "experiment=smoke",
        "model.backend=mamba_ssm",
        f"data.store={sample_store.path}",
        "data.from_samples=false",
        f"paths.runs_dir={tmp_path}",
        "run_name=fused",
        "logger=none",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.enable_progress_bar=false",
    ]
    train(train_config_from_dict(compose_train_config(overrides)))
    module = WorldModelModule.load_from_checkpoint(tmp_path / "fused" / "checkpoints" / "last.ckpt", map_location="cpu")
    assert module.cfg.model.backend == "mamba_ssm"
    plain = build_model(ModelConfig(**{**vars(module.cfg.model), "backend": "torch"}), module.layout, 30)
    plain.load_state_dict(module.net.state_dict(), strict=True)
    g = torch.Generator().manual_seed(0)
    floats = torch.randn(2, 30, module.layout.num_floats, generator=g)
    ints = torch.zeros(2, 30, module.layout.num_ints, dtype=torch.long)
    ctrl = floats[..., module.layout.float_slice("controller")]
    with torch.no_grad():
        ours, theirs = module.net.eval()(floats, ints, ctrl)[0], plain.eval()(floats, ints, ctrl)[0]
    for group, value in ours.floats.items():
        torch.testing.assert_close(value, theirs.floats[group], rtol=1e-6, atol=1e-6, msg=group)
