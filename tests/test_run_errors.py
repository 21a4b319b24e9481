"""Errors that stop a run before or during training: an encoding mismatch, a reused run folder, a
non-finite loss."""

from __future__ import annotations

import pytest

from melee_wm.data.store import StoreConfigError
from melee_wm.training import train
from melee_wm.training.callbacks import NonFiniteLossError
from melee_wm.training.compose import ConfigError, compose_train_config
from melee_wm.training.module import WorldModelModule
from melee_wm.training.run import RunDirError
from tests.helpers import overrides_for, quick_run

# Errors before training ------------------------------------------------------------------------------------


def test_encoding_mismatch_stops_before_training(sample_store, tmp_path):
    cfg = compose_train_config(
        ["experiment=smoke", *overrides_for(sample_store, tmp_path), "encoding.action_vocab=512"]
    )
    with pytest.raises(StoreConfigError, match="action_vocab"):
        train(cfg)
    assert not list((tmp_path / "runs").rglob("*.ckpt"))


@pytest.mark.slow
def test_existing_run_dir_is_refused_without_resume(sample_store, tmp_path):
    _, run_dir = quick_run(sample_store, tmp_path, "run_name=fixed")
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    with pytest.raises(RunDirError, match="already holds a run"):
        quick_run(sample_store, tmp_path, "run_name=fixed")
    with pytest.raises(RunDirError, match="nothing to resume"):
        quick_run(sample_store, tmp_path, "run_name=other", "resume=true")
    with pytest.raises(ConfigError, match=r"optim\.lr"):
        quick_run(sample_store, tmp_path, "run_name=fixed", "resume=true", "optim.lr=0.5")


@pytest.mark.slow
def test_nonfinite_loss_stops_with_the_step_and_terms(sample_store, tmp_path, monkeypatch):
    original = WorldModelModule.forward_loss

    def poisoned(self, batch, *scoring):
        out = original(self, batch, *scoring)
        if self.global_step == 2:
            out.terms["velocity"] = out.terms["velocity"] * float("nan")
            out.total = out.total + out.terms["velocity"]
        return out

    monkeypatch.setattr(WorldModelModule, "forward_loss", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"global step 2.*non-finite terms: \{'velocity': nan\}.*action"):
        quick_run(sample_store, tmp_path)
