"""The training layer end to end on the real sample store: config tree, errors, run directories, resume,
checkpoints, loss masking, the non-finite stop, W&B offline and an honest learning check."""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from melee_wm.data.config import DataConfig
from melee_wm.data.dataset import MeleeDataset
from melee_wm.data.store import StoreConfigError
from melee_wm.data.store_writer import build_store
from melee_wm.encoding.config import EncodingConfig
from melee_wm.paths import config_dir
from melee_wm.training import train
from melee_wm.training.callbacks import NonFiniteLossError
from melee_wm.training.module import WorldModelModule
from melee_wm.training.run import RunDirError
from melee_wm.training.schema import ConfigError, compose_train_config, train_config_from_dict

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))
# Overrides that make any experiment fit a CPU test: the sample store, the tiny model, a few batches.
CPU_TINY = [
    "data=samples",
    "model=tiny",
    "model.backend=torch",
    "trainer=cpu",
    "logger=none",
    "data.device_resident=false",
    "data.batch_size=32",
    "trainer.enable_progress_bar=false",
]


def overrides_for(store, tmp_path: Path, *extra: str) -> list[str]:
    """A run on the session's sample store writing into `tmp_path`."""
    return [
        f"data.store={store.path}",
        "data.from_samples=false",
        f"paths.runs_dir={tmp_path / 'runs'}",
        *extra,
    ]


def quick_run(store, tmp_path: Path, *extra: str) -> tuple[dict[str, float], Path]:
    """Train the smoke experiment for a few batches; returns (metrics, run_dir)."""
    cfg = compose_train_config(
        [
            "experiment=smoke",
            *overrides_for(store, tmp_path),
            "trainer.limit_train_batches=4",
            "trainer.limit_val_batches=2",
            "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false",
            "logger=none",
            *extra,
        ]
    )
    run_dir = Path(cfg.paths.runs_dir) / cfg.run_name
    return train(cfg), run_dir


# Composition ---------------------------------------------------------------------------------------------


def test_every_experiment_and_group_composes():
    assert set(EXPERIMENTS) == {"smoke", "mamba2_base", "mamba2_large", "mlp_baseline"}
    for experiment in EXPERIMENTS:
        cfg = train_config_from_dict(compose_train_config([f"experiment={experiment}", "data.store=/some/store"]))
        assert cfg.name == experiment
        assert cfg.run_name.startswith(f"{experiment}_")
    base = train_config_from_dict(compose_train_config(["experiment=mamba2_base", "data.store=/s"]))
    assert (base.trainer.precision, base.data.batch_size, base.data.device_resident) == ("bf16-mixed", 512, True)
    assert base.model.backend == "auto" and base.trainer.accelerator == "gpu"
    for group in ("data", "model", "trainer", "logger"):
        for option in sorted(p.stem for p in (config_dir() / group).glob("*.yaml")):
            cfg = train_config_from_dict(compose_train_config([f"{group}={option}", "data.store=/s"]))
            assert cfg is not None
    mlp = train_config_from_dict(compose_train_config(["model=mlp"]))
    assert mlp.model.arch == "mlp"


def test_experiment_values_override_the_primary_config():
    """`_self_` comes first in conf/train.yaml: an experiment's values win over the root's."""
    smoke = train_config_from_dict(compose_train_config(["experiment=smoke"]))
    assert smoke.name == "smoke" and smoke.model.d_model == 32 and smoke.data.val_fraction == 0.5


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["experiment=smok"], "experiment/smok"),
        (["model.not_a_key=1"], "not_a_key"),
        (["+model.not_a_key=1"], "not_a_key"),
        (["++not_a_key=1"], "not_a_key"),
        (["+objective.weights.not_a_group=2.0"], "not_a_group"),
        (["trainer.max_epochs=many"], "trainer.max_epochs"),
        (["model.headdim=7"], "headdim"),
        (["trainer.precision=fp8"], "precision"),
        (["logger.loggers=[tensorboard]"], "tensorboard"),
        (["objective.position_parameterization=accel"], "position_parameterization"),
    ],
)
def test_config_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        train_config_from_dict(compose_train_config(overrides))


def _conf_copy(tmp_path: Path) -> Path:
    conf = tmp_path / "conf"
    shutil.copytree(config_dir(), conf)
    return conf


def test_unknown_key_in_a_yaml_file_is_an_error(tmp_path):
    conf = _conf_copy(tmp_path)
    (conf / "model" / "tiny.yaml").write_text((conf / "model" / "tiny.yaml").read_text() + "d_modle: 64\n")
    with pytest.raises(ConfigError, match="d_modle"):
        train_config_from_dict(compose_train_config(["model=tiny"], conf=conf))


def test_unknown_key_in_an_experiment_file_is_an_error(tmp_path):
    conf = _conf_copy(tmp_path)
    path = conf / "experiment" / "smoke.yaml"
    path.write_text(path.read_text().replace("  lr: 3.0e-3", "  learning_rate: 3.0e-3"))
    with pytest.raises(ConfigError, match="learning_rate"):
        train_config_from_dict(compose_train_config(["experiment=smoke"], conf=conf))


# Errors before training ------------------------------------------------------------------------------------


def test_encoding_mismatch_stops_before_training(sample_store, tmp_path):
    cfg = compose_train_config(
        ["experiment=smoke", *overrides_for(sample_store, tmp_path), "encoding.action_vocab=512"]
    )
    with pytest.raises(StoreConfigError, match="action_vocab"):
        train(cfg)
    assert not list((tmp_path / "runs").rglob("*.ckpt"))


def test_existing_run_dir_is_refused_without_resume(sample_store, tmp_path):
    _, run_dir = quick_run(sample_store, tmp_path, "run_name=fixed")
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    with pytest.raises(RunDirError, match="already holds a run"):
        quick_run(sample_store, tmp_path, "run_name=fixed")
    with pytest.raises(RunDirError, match="nothing to resume"):
        quick_run(sample_store, tmp_path, "run_name=other", "resume=true")
    with pytest.raises(ConfigError, match=r"optim\.lr"):
        quick_run(sample_store, tmp_path, "run_name=fixed", "resume=true", "optim.lr=0.5")


def test_nonfinite_loss_stops_with_the_step_and_terms(sample_store, tmp_path, monkeypatch):
    original = WorldModelModule.forward_loss

    def poisoned(self, batch, metrics=None):
        out = original(self, batch, metrics)
        if self.global_step == 2:
            out.terms["velocity"] = out.terms["velocity"] * float("nan")
            out.total = out.total + out.terms["velocity"]
        return out

    monkeypatch.setattr(WorldModelModule, "forward_loss", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"global step 2.*non-finite terms: \{'velocity': nan\}.*action"):
        quick_run(sample_store, tmp_path)


# Resume, checkpoints ---------------------------------------------------------------------------------------


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_bf16_mixed_precision_trains_on_cpu(sample_store, tmp_path):
    metrics, _ = quick_run(sample_store, tmp_path, "trainer.precision=bf16-mixed")
    assert math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["val/pos_mae/all"])


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


def run_train_py(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`python train.py ARGS` in `tmp_path` (a fresh process, as a user runs it)."""
    command = [sys.executable, str(REPO / "train.py"), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


TINY_BUDGET = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "trainer.enable_progress_bar=false",
    "logger=none",
]


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
        *TINY_BUDGET,
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
        *TINY_BUDGET,
    )
    last = tmp_path / "runs" / "compiled" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["config"]["trainer"]["compile"] is True
    assert not [k for k in ckpt["state_dict"] if "_orig_mod" in k]
    assert WorldModelModule.load_from_checkpoint(last, map_location="cpu").net.num_parameters() > 0
    assert math.isfinite(json.loads((last.parent.parent / "final_metrics.json").read_text())["train/loss"])


def test_plain_ddp_is_refused_inside_a_multirun():
    from melee_wm.training.run import check_strategy

    cfg = train_config_from_dict(compose_train_config(["trainer=ddp", "trainer.strategy=ddp"]))
    check_strategy(cfg, multirun=False)
    with pytest.raises(ConfigError, match="ddp_spawn"):
        check_strategy(cfg, multirun=True)


def test_optuna_search_example_runs(sample_store, tmp_path):
    result = run_train_py(
        tmp_path,
        "-m",
        "hparams_search=mamba2_optuna",
        "experiment=smoke",
        *overrides_for(sample_store, tmp_path),
        "run_name=search",
        "hydra.sweeper.n_trials=2",
        *TINY_BUDGET,
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


# Loss masking ----------------------------------------------------------------------------------------------


def test_missing_fields_are_masked_out_of_the_loss(sample_store):
    """Windows of the Slippi 1.0.0 game carry defaults for velocities (among 13 fields): their velocity
    predictions get no gradient, while a complete game's do."""
    data = DataConfig(context_len=10, multi_position=True, val_fraction=0.0)
    windows = MeleeDataset.from_store(sample_store, "train", data)
    games = sample_store.games
    (old,) = [windows.md5s.index(g.md5) for g in games if g.slippi_version == "1.0.0"]
    assert "vel_self_x_air" in games[[g.md5 for g in games].index(windows.md5s[old])].missing_fields
    complete = next(windows.md5s.index(g.md5) for g in games if not g.missing_fields)
    first_old, first_new = int(windows.window_offsets[old]), int(windows.window_offsets[complete])
    batch = windows.get_batch([first_old, first_new])
    assert not batch.valid_floats[0, windows.layout.float_slice("velocity")].any()
    assert batch.valid_floats[1].all()
    cfg = train_config_from_dict(compose_train_config(["experiment=smoke", "data.context_len=10"]))
    from melee_wm.frames.targets import target_statistics
    from melee_wm.training.run import to_container

    module = WorldModelModule(
        to_container(cfg), target_statistics(windows, cfg.objective.position_parameterization).to_dict()
    )
    module.net.heads.out.weight.data.normal_(0, 0.1)
    captured = {}
    original = module.net.heads.forward

    def keep(*args):
        pred = original(*args)
        pred.floats["velocity"].retain_grad()
        captured["pred"] = pred
        return pred

    module.net.heads.forward = keep
    module.forward_loss(batch).terms["velocity"].backward()
    grad = captured["pred"].floats["velocity"].grad
    assert grad[0].abs().max() == 0
    assert grad[1].abs().max() > 0


def test_target_statistics_skip_missing_fields(sample_store):
    windows = MeleeDataset.from_store(sample_store, "all", DataConfig(val_fraction=0.0))
    from melee_wm.frames.targets import target_statistics

    stats = target_statistics(windows, "delta")
    # Velocity deltas from the games that record them only: none of the scales is the floor value 1.
    assert all(0 < s < 1 for s in stats.scale["velocity"])
    fields = windows.layout.float_fields("velocity")
    assert stats.scale["velocity"][: len(fields)] == stats.scale["velocity"][len(fields) :]  # pooled players


# Logging ---------------------------------------------------------------------------------------------------


def test_wandb_without_key_runs_offline_and_never_connects(sample_store, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    connects = []
    real_connect = socket.socket.connect

    def record(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            connects.append(address)
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", record)
    _, run_dir = quick_run(sample_store, tmp_path, "logger=wandb", "run_name=wb")
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((run_dir / "wandb").iterdir())
    assert not connects
    assert "WANDB_API_KEY" not in (run_dir / "config.yaml").read_text()


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


def test_smoke_run_learns(smoke_run, sample_store):
    metrics, _ = smoke_run
    model, persistence = metrics["val/pos_mae/all"], metrics["baseline/persistence/pos_mae/all"]
    constant_velocity = metrics["baseline/constant_velocity/pos_mae/all"]
    cfg = train_config_from_dict(compose_train_config(["experiment=smoke"]))
    chance = most_frequent_transition_rate(sample_store, cfg)
    summary = (
        f"val pos_mae model {model:.4f} persistence {persistence:.4f} constant velocity {constant_velocity:.4f}; "
        f"change_acc {metrics['val/change_acc/all']:.4f} vs most frequent transition {chance:.4f}"
    )
    print(summary)
    assert model < persistence, summary
    assert metrics["val/change_acc/all"] > chance, summary
    assert metrics["baseline/persistence/change_acc/all"] == 0.0


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


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_fast_dev_run_of_every_experiment(experiment, sample_store, tmp_path):
    cfg = compose_train_config(
        [f"experiment={experiment}", *CPU_TINY, *overrides_for(sample_store, tmp_path), "trainer.fast_dev_run=true"]
    )
    if experiment == "mlp_baseline":
        cfg = compose_train_config(
            [
                f"experiment={experiment}",
                *[o for o in CPU_TINY if not o.startswith("model")],
                "model.mlp_hidden=[64]",
                "model.d_model=32",
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
    store = run_module.prepare_store(cfg, console=__import__("rich.console").console.Console(quiet=True))
    reference = build_store([replay_dir], tmp_path / "reference", EncodingConfig(), progress=False)
    assert store.num_games == reference.num_games == 6 and store.num_frames == reference.num_frames
