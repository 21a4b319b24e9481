"""The main job end to end on the real sample store: the smoke run learns and writes its directory, every
experiment runs, and the sample store is built when missing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from rich.console import Console

from melee_wm.data.dataset import MeleeDataset
from melee_wm.data.store_writer import build_store
from melee_wm.encoding.config import EncodingConfig
from melee_wm.paths import config_dir
from melee_wm.training import train
from melee_wm.training.compose import compose_train_config, train_config_from_dict
from tests.helpers import overrides_for

EXPERIMENTS = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))
ACTION_SPREAD = 0.003  # action accuracy moved 0.0034 between seeds 0 and 1 of the smoke run (README, the campaign)


# The main job and an honest learning check ---------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_run(sample_store, tmp_path_factory):
    """The smoke experiment as the README runs it (on the session's sample store)."""
    tmp = tmp_path_factory.mktemp("smoke")
    cfg = compose_train_config(
        ["experiment=smoke", *overrides_for(sample_store, tmp), "trainer.enable_progress_bar=false", "run_name=smoke"]
    )
    metrics = train(cfg)
    return metrics, tmp / "runs" / "smoke"


def most_frequent_transition_rate(store, cfg) -> float:
    """Share of validation change frames that are the training split's most frequent (from, to) transition."""
    action = store.layout.int_slice("action")
    for split in ("train", "val"):
        windows = MeleeDataset.from_store(store, split, cfg.data)
        pairs = []
        for g in range(windows.num_games):
            ints = windows.shards[int(windows.game_shard[g])][1]
            start, n = int(windows.game_start[g]), int(windows.game_length[g])
            ids = ints[start : start + n, action].numpy().astype(np.int64)
            cur, nxt = ids[:-1].reshape(-1), ids[1:].reshape(-1)
            changed = cur != nxt
            pairs.append(np.stack([cur[changed], nxt[changed]], 1))
        pairs = np.concatenate(pairs)
        if split == "train":
            values, freq = np.unique(pairs, axis=0, return_counts=True)
            top = tuple(values[freq.argmax()])
        else:
            return float(((pairs[:, 0] == top[0]) & (pairs[:, 1] == top[1])).mean())
    return math.nan


@pytest.mark.slow
def test_smoke_run_learns(smoke_run, sample_store, smoke_config):
    """The main job against the baselines scored on the same validation frames (tail split of the samples).
    Position margins are about a third of what the campaign measured (seeds 0 and 1), so a CPU's rounding cannot
    flip them. Action accuracy measured 0.0014 and 0.0048 above persistence at seeds 0 and 1, less than the
    spread between seeds, so the check allows it `ACTION_SPREAD` below persistence."""
    metrics, _ = smoke_run

    def val(key: str, name: str = "") -> float:
        return metrics[f"baseline/{name}/{key}" if name else f"val/{key}"]

    chance = most_frequent_transition_rate(sample_store, smoke_config)
    summary = {
        key: {
            name or "model": round(val(key, name), 4)
            for name in ("", "persistence", "robust_constant_velocity", "table")
        }
        for key in ("pos_mae/all", "pos_mae_smooth/all", "action_acc/all", "change_acc/all", "false_change/all")
    }
    print(summary, f"most frequent transition {chance:.4f}")
    for key in ("pos_mae/all", "pos_mae_smooth/all"):  # measured 0.85x and 0.80x robust constant velocity's
        assert val(key) < 0.96 * val(key, "robust_constant_velocity"), summary
        assert val(key) < 0.5 * val(key, "persistence"), summary
        assert val(key) < 0.99 * val(key, "table"), summary  # measured 0.974x and 0.963x (seed 1: 0.971x, 0.960x)
    assert val("action_acc/all") > val("action_acc/all", "persistence") - ACTION_SPREAD, summary  # 0.9158 vs 0.9144
    assert val("change_acc/all") > 1.2 * val("change_acc/all", "table") > chance, summary  # measured 1.39x
    assert val("change_acc/all", "persistence") == 0.0 == val("false_change/all", "persistence")


@pytest.mark.slow
def test_smoke_run_writes_its_directory(smoke_run):
    metrics, run_dir = smoke_run
    for name in ("config.yaml", "data_fingerprint.json", "final_metrics.json", "history.json", "training.png"):
        assert (run_dir / name).is_file(), name
    fingerprint = json.loads((run_dir / "data_fingerprint.json").read_text())
    assert fingerprint["games"] == 6 and len(fingerprint["games_md5"]) == 32
    history = json.loads((run_dir / "history.json").read_text())
    assert any("val/pos_mae/all" in row for row in history)
    assert json.loads((run_dir / "final_metrics.json").read_text()) == pytest.approx(metrics, nan_ok=True)
    ckpt = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["config"]["name"] == "smoke"


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_fast_dev_run_of_every_experiment(experiment, sample_store, tmp_path):
    """Every experiment runs one batch on the CPU (`debug=cpu_tiny`; the MLP keeps its arch, made small)."""
    small_mlp = ["model=mlp", "model.mlp_hidden=[64]", "model.d_model=32"] if experiment == "mlp_baseline" else []
    cfg = compose_train_config(
        [
            f"experiment={experiment}",
            "debug=cpu_tiny",
            *small_mlp,
            *overrides_for(sample_store, tmp_path),
            "trainer.fast_dev_run=true",
        ]
    )
    metrics = train(cfg)
    assert math.isfinite(metrics["train/loss"])


def test_sample_store_is_built_when_missing(tmp_path, replay_dir, monkeypatch):
    """data=samples builds the store through the same build_store as `melee-wm encode` when it is absent."""
    from melee_wm.training import run as run_module

    monkeypatch.setattr(run_module, "sample_dir", lambda fetch=True: replay_dir)
    cfg = train_config_from_dict(compose_train_config(["experiment=smoke", f"paths.stores_dir={tmp_path}"]))
    store = run_module.prepare_store(cfg, console=Console(quiet=True))
    reference = build_store([replay_dir], tmp_path / "reference", EncodingConfig(), progress=False)
    assert store.num_games == reference.num_games == 6 and store.num_frames == reference.num_frames
