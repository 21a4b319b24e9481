"""Checkpoints and resume, precision, and the runs that start fresh processes (DDP multirun, compile, Optuna)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from melee_wm.training.compose import ConfigError, compose_train_config, train_config_from_dict
from melee_wm.training.module import WorldModelModule
from melee_wm.training.run import check_strategy
from tests.helpers import overrides_for, quick_run, run_train_py

# Resume, checkpoints ---------------------------------------------------------------------------------------


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_bf16_mixed_precision_trains_on_cpu(sample_store, tmp_path):
    metrics, _ = quick_run(sample_store, tmp_path, "trainer.precision=bf16-mixed")
    assert math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["val/pos_mae/all"])


@pytest.mark.slow
def test_resume_is_exact_and_checkpoints_load_weights_only(sample_store, tmp_path):
    common = ["trainer.limit_train_batches=6", "data.swap_players_p=0.5", "model.dropout=0.1"]
    straight, straight_dir = quick_run(sample_store, tmp_path, "run_name=straight", "trainer.max_epochs=2", *common)
    quick_run(sample_store, tmp_path, "run_name=pieces", "trainer.max_epochs=1", *common)
    resumed, pieces_dir = quick_run(
        sample_store, tmp_path, "run_name=pieces", "trainer.max_epochs=2", "resume=true", *common
    )
    a = torch.load(straight_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(pieces_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert a["global_step"] == b["global_step"] == 12 and a["epoch"] == b["epoch"]
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    lr = lambda ckpt: ckpt["optimizer_states"][0]["param_groups"][0]["lr"]  # noqa: E731
    assert lr(a) == pytest.approx(lr(b), rel=1e-12)
    assert resumed["val/loss"] == pytest.approx(straight["val/loss"], rel=1e-4)
    names = sorted(p.name for p in (straight_dir / "checkpoints").iterdir())
    assert names == ["best.ckpt", "epoch=000.ckpt", "epoch=001.ckpt", "last.ckpt"]
    assert isinstance(a["hyper_parameters"]["config"], dict)
    module = WorldModelModule.load_from_checkpoint(straight_dir / "checkpoints" / "last.ckpt", map_location="cpu")
    torch.testing.assert_close(module.codec.scale_continuous, a["state_dict"]["codec.scale_continuous"])


@pytest.mark.slow
def test_ddp_multirun_runs_the_sweep_once_with_own_directories(sample_store, tmp_path):
    """`train.py -m trainer=ddp` over two learning rates on two CPU processes each: one sweep (no child
    re-runs it), two run folders with their own checkpoints and config."""
    result = run_train_py(
        tmp_path,
        "-m",
        "experiment=smoke",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        *overrides_for(sample_store, tmp_path),
        "run_name=sweep",
        "optim.lr=1e-3,2e-3",
        "debug=default",
    )
    log = result.stdout + result.stderr
    assert log.count("Launching 2 jobs") == 1
    assert log.count("GLOBAL_RANK: 1") == 2  # each job ran two processes
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["sweep"]
    ckpts = sorted((tmp_path / "runs" / "sweep").glob("*/checkpoints/last.ckpt"))
    assert [c.parent.parent.name for c in ckpts] == ["0", "1"]
    assert [OmegaConf.load(c.parent.parent / "config.yaml").optim.lr for c in ckpts] == [1e-3, 2e-3]
    for ckpt in ckpts:
        assert json.loads((ckpt.parent.parent / "final_metrics.json").read_text())["val/loss"] > 0


@pytest.mark.slow
def test_plain_ddp_from_train_py_shares_one_run_folder_and_resumes(sample_store, tmp_path):
    """`train.py trainer.strategy=ddp` re-executes train.py for rank 1 once rank 0 has claimed the run folder: the
    worker joins that run instead of refusing its folder, for a new run and for a resume."""
    common = [
        "experiment=smoke",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        *overrides_for(sample_store, tmp_path),
        "run_name=plain_ddp",
        "debug=default",
    ]
    first = run_train_py(tmp_path, *common)
    resumed = run_train_py(tmp_path, *common, "resume=true", "trainer.max_epochs=2")
    for result in (first, resumed):
        assert (result.stdout + result.stderr).count("GLOBAL_RANK: 1") == 1  # the worker ran, once
        assert "already holds a run" not in result.stdout + result.stderr
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["plain_ddp"]
    run_dir = tmp_path / "runs" / "plain_ddp"
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == ["best.ckpt", "epoch=000.ckpt", "epoch=001.ckpt", "last.ckpt"]
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 1 and last["global_step"] == 2 * 3  # debug=default: 3 batches an epoch
    assert OmegaConf.load(run_dir / "config.yaml").trainer.strategy == "ddp"
    assert json.loads((run_dir / "final_metrics.json").read_text())["val/loss"] > 0


@pytest.mark.slow
def test_compiled_network_trains_and_keeps_plain_state_dict_keys(sample_store, tmp_path):
    """`python train.py trainer.compile=true` compiles the inner network in place: it trains, and checkpoints
    hold no `_orig_mod.` keys. A fresh process, as a user runs it (inductor's C++ build imports setuptools,
    which must not meet a distutils that an earlier test imported)."""
    run_train_py(
        tmp_path,
        "experiment=smoke",
        *overrides_for(sample_store, tmp_path),
        "run_name=compiled",
        "trainer.compile=true",
        "debug=default",
    )
    last = tmp_path / "runs" / "compiled" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["config"]["trainer"]["compile"] is True
    assert not [k for k in ckpt["state_dict"] if "_orig_mod" in k]
    assert WorldModelModule.load_from_checkpoint(last, map_location="cpu").net.num_parameters() > 0
    assert math.isfinite(json.loads((last.parent.parent / "final_metrics.json").read_text())["train/loss"])


def test_plain_ddp_is_refused_inside_a_multirun():
    cfg = train_config_from_dict(compose_train_config(["trainer=ddp", "trainer.strategy=ddp"]))
    check_strategy(cfg, multirun=False)
    with pytest.raises(ConfigError, match="ddp_spawn"):
        check_strategy(cfg, multirun=True)


@pytest.mark.slow
def test_optuna_search_example_runs(sample_store, tmp_path):
    """The search config sets multirun mode itself: no `-m` on the command line."""
    result = run_train_py(
        tmp_path,
        "hparams_search=mamba2_optuna",
        "experiment=smoke",
        *overrides_for(sample_store, tmp_path),
        "run_name=search",
        "hydra.sweeper.n_trials=2",
        "debug=default",
    )
    results = OmegaConf.load(tmp_path / "runs" / "search" / "optimization_results.yaml")
    assert set(results.best_params) == {"optim.lr", "model.d_model"}
    trial = min(
        range(2),
        key=lambda i: json.loads((tmp_path / f"runs/search/{i}/final_metrics.json").read_text())["val/pos_mae/all"],
    )
    best = json.loads((tmp_path / "runs" / "search" / str(trial) / "final_metrics.json").read_text())
    assert results.best_value == pytest.approx(best["val/pos_mae/all"])
    assert "Best value" in result.stdout + result.stderr
