"""The Modal launcher, offline (no token, no network): what it declares, how it plans runs, and the bodies of
its functions run locally with a temporary folder standing in for the volume."""

# ruff: noqa: E402  (the imports below follow the importorskip of a package a bare GPU machine lacks)

from __future__ import annotations

import inspect
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

modal = pytest.importorskip("modal")  # absent on a bare GPU machine, where `pytest -m gpu tests` collects this

from modal.cli.run import _get_click_command_for_local_entrypoint
from test_merge import assert_same_store  # tests/ is on sys.path (no __init__.py: pytest prepends it)

import modal_launcher as launcher
from melee_wm.cloud import jobs, spec
from melee_wm.cloud.callbacks import CommitVolumeOnSave
from melee_wm.data.store import open_store
from melee_wm.paths import config_dir
from melee_wm.training.compose import ConfigError, compose_train_config, to_container, train_config_from_dict

pytestmark = pytest.mark.filterwarnings("ignore:The .* function is executing locally:UserWarning")
REPO = Path(__file__).resolve().parents[1]
FUNCTIONS = ("train_run", "train_run_fused", "smoke_run", "list_replays", "encode_group", "merge_parts")
ENTRYPOINTS = ("train", "sweep", "smoke", "encode")
TINY_TRAINING = (
    "experiment=smoke",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=5",
    "trainer.limit_val_batches=2",
    "trainer.enable_progress_bar=false",
)
ONE_GPU = spec.check_gpu("L40S")


def test_the_launcher_defines_its_app_functions_and_entrypoints_without_a_token():
    assert launcher.app.name == spec.APP_NAME
    for name in FUNCTIONS:
        assert isinstance(getattr(launcher, name), modal.Function), name
    for name in ENTRYPOINTS:
        command = _get_click_command_for_local_entrypoint(launcher.app, getattr(launcher, name))  # as `modal run`
        assert command is not None
    assert launcher._commit_or_none() is None  # outside a container nothing is committed
    # ddp_spawn pickles the callbacks into its workers: the commit must pickle (by reference)
    callback = pickle.loads(pickle.dumps(CommitVolumeOnSave(launcher._commit_volume)))
    assert callback.commit is launcher._commit_volume


def test_declared_gpus_timeouts_and_volume_are_valid():
    for name in FUNCTIONS:
        function_spec = getattr(launcher, name)._spec_  # what Modal will send at deploy time
        if function_spec.gpus is not None:
            spec.check_gpu(function_spec.gpus)
        assert list(function_spec.volumes) == [spec.VOLUME_PATH]
    for seconds in (spec.TRAIN_TIMEOUT_S, spec.SMOKE_TIMEOUT_S, spec.ENCODE_TIMEOUT_S, spec.MERGE_TIMEOUT_S):
        spec.check_timeout(seconds)
    assert spec.TRAIN_TIMEOUT_S == 24 * 3600
    for good in (spec.DEFAULT_GPU, spec.SMOKE_GPU, "h100:8", "A100-80GB:2"):
        spec.check_gpu(good)
    for bad in ("A100:99", "A100:0", "V100", "H100:two", "B200", "A10G:5"):
        with pytest.raises(ValueError, match="GPU"):
            spec.check_gpu(bad)
    with pytest.raises(ValueError, match="outside"):
        spec.check_timeout(48 * 3600)


def test_shipped_paths():
    """conf/ ships with add_local_dir to where config_dir() looks beside the package in the container."""
    assert launcher.CONF_DIR == config_dir() == REPO / "conf"
    assert (launcher.CONF_DIR / "train.yaml").is_file()
    assert Path(spec.REMOTE_CONF) == Path(spec.REMOTE_ROOT) / "conf"  # /root/melee_wm -> /root/conf
    assert [w for w in spec.PACKAGES if "==" not in w] == []  # pinned
    assert spec.TORCH.startswith("torch==")
    assert any(p.startswith("mamba-ssm==") for p in spec.MAMBA_PACKAGES)


def test_launcher_arguments():
    options, overrides = jobs.split_launcher_args(["--gpu=h100:2", "--fused", "optim.lr=1e-3"], spec.DEFAULT_GPU)
    fused = ["optim.lr=1e-3", "model.backend=mamba_ssm"]
    assert (str(options.gpu), options.fused, overrides) == ("H100:2", True, fused)
    with pytest.raises(ValueError, match="--fused selects"):
        jobs.split_launcher_args(["--fused", "model.backend=auto"], spec.DEFAULT_GPU)
    with pytest.raises(ValueError, match="no kernels for T4"):
        jobs.split_launcher_args(["--fused", "--gpu=T4"], spec.DEFAULT_GPU)
    options, _ = jobs.split_launcher_args([], spec.DEFAULT_GPU)
    assert str(options.gpu) == spec.DEFAULT_GPU and not options.fused
    with pytest.raises(ValueError, match="--gpus"):
        jobs.split_launcher_args(["--gpus=2"], spec.DEFAULT_GPU)


@pytest.mark.slow
def test_planned_overrides_compose_into_the_config_train_py_builds(tmp_path):
    plan = jobs.plan_train(["experiment=mamba2_base", "data.store=/vol/stores/all", "optim.lr=3e-4"], ONE_GPU, "/vol")
    assert "paths.runs_dir=/vol/runs" in plan and "paths.stores_dir=/vol/stores" in plan
    ours = to_container(train_config_from_dict(compose_train_config(plan)))
    assert ours["run_name"].startswith("mamba2_base_") and ours["optim"]["lr"] == 3e-4
    out = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *plan, "--cfg", "job", "--resolve"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout
    theirs = to_container(train_config_from_dict(yaml.safe_load(out)))
    assert ours == theirs


def test_plan_checks_gpus_and_accelerator():
    gpu_run = ["experiment=smoke", "trainer=gpu"]
    plan = jobs.plan_train(gpu_run, spec.check_gpu("A100:4"), "/vol")
    trainer = train_config_from_dict(compose_train_config(plan)).trainer
    assert (trainer.devices, trainer.strategy) == (4, "ddp_spawn")
    with pytest.raises(ConfigError, match="cpu"):
        jobs.plan_train(["experiment=smoke"], ONE_GPU, "/vol")
    with pytest.raises(ConfigError, match="devices=2"):
        jobs.plan_train([*gpu_run, "trainer.devices=2"], ONE_GPU, "/vol")
    with pytest.raises(ConfigError, match="ddp_spawn"):
        jobs.plan_train([*gpu_run, "trainer.strategy=ddp"], spec.check_gpu("A100:2"), "/vol")
    with pytest.raises(ConfigError, match="T4 has no bf16"):
        jobs.plan_train(gpu_run, spec.check_gpu("T4"), "/vol")
    assert spec.check_gpu("A10G:4").count == 4 and "trainer.precision=16-mixed" in jobs.plan_train(
        [*gpu_run, "trainer.precision=16-mixed"], spec.check_gpu("T4"), "/vol"
    )
    with pytest.raises(ConfigError, match=r"paths\.runs_dir"):
        jobs.plan_train([*gpu_run, "paths.runs_dir=/tmp"], ONE_GPU, "/vol")
    with pytest.raises(ConfigError, match="run_name"):
        jobs.plan_train([*gpu_run, "resume=true"], ONE_GPU, "/vol")
    with pytest.raises(ConfigError, match="nope"):
        jobs.plan_train([*gpu_run, "experiment=nope"], ONE_GPU, "/vol")
    resume = jobs.plan_train([*gpu_run, "resume=true", "run_name=smoke_x"], ONE_GPU, "/vol")
    assert jobs.run_dir_of(resume) == Path("/vol/runs/smoke_x")


def test_sweep_members_and_separate_launches_never_share_a_run_directory():
    sets = [["experiment=smoke", "trainer=gpu", f"optim.lr={lr}"] for lr in (1e-3, 1e-3, 3e-4)]
    plans = jobs.plan_sweep(sets, ONE_GPU, "/vol")
    dirs = [jobs.run_dir_of(p) for p in plans]
    assert len(set(dirs)) == 3 and all(d.parent.parent == Path("/vol/runs") for d in dirs)
    again = [jobs.run_dir_of(p) for p in jobs.plan_sweep(sets, ONE_GPU, "/vol")]  # the same second, most likely
    assert not set(dirs) & set(again)
    with pytest.raises(ConfigError, match="run_name"):
        jobs.plan_sweep([["experiment=smoke", "trainer=gpu", "run_name=mine"]], ONE_GPU, "/vol")


class _Handle:
    def __init__(self, result=None, error=None):
        self.result, self.error = result, error

    def get(self):
        if self.error:
            raise self.error
        return self.result


def test_run_sweep_waits_for_all_prints_each_and_fails_if_any_failed():
    plans = [["run_name=s/00"], ["run_name=s/01"], ["run_name=s/02"]]
    outcomes = {
        "run_name=s/00": _Handle({"run_dir": "/vol/runs/s/00", "metrics": {"val/loss": 1.0, "baseline/x": 2.0}}),
        "run_name=s/01": _Handle(error=FileNotFoundError("/vol/stores/x: no manifest.json")),
        "run_name=s/02": _Handle({"run_dir": "/vol/runs/s/02", "metrics": {"val/loss": 0.5}}),
    }
    lines = []
    with pytest.raises(jobs.SweepError, match=r"1 of 3 sweep runs failed:\ns/01: FileNotFoundError"):
        jobs.run_sweep(plans, lambda plan: outcomes[plan[0]], lines.append)
    assert "run /vol/runs/s/02" in lines and "  metrics {'val/loss': 0.5}" in lines
    assert "  metrics {'val/loss': 1.0}" in lines  # baselines left out


class _StandInVolume:
    """Records, at each commit, the checkpoint files on disk and their modification times."""

    def __init__(self, checkpoints: Path):
        self.checkpoints = checkpoints
        self.seen: list[dict[str, int]] = []

    def commit(self) -> None:
        files = self.checkpoints.glob("*.ckpt") if self.checkpoints.is_dir() else []
        self.seen.append({p.name: p.stat().st_mtime_ns for p in files})


@pytest.mark.slow
def test_train_body_runs_locally_and_commits_after_each_checkpoint_save(tmp_path, replay_dir, monkeypatch):
    monkeypatch.setenv("MELEE_WM_SAMPLES", str(replay_dir))
    volume = _StandInVolume(tmp_path / "runs" / "tiny" / "checkpoints")
    result = jobs.train_job([*TINY_TRAINING, "run_name=tiny"], tmp_path, volume.commit)
    run_dir = tmp_path / "runs" / "tiny"
    assert result["run_dir"] == str(run_dir)
    assert result["checkpoints"] == ["best.ckpt", "epoch=000.ckpt", "last.ckpt"]
    assert (run_dir / "final_metrics.json").is_file() and (tmp_path / "stores" / "samples" / "manifest.json").is_file()
    assert result["global_step"] == 5 and len(result["first_losses"]) == 3 and result["wandb"] is None
    final = {p.name: p.stat().st_mtime_ns for p in (run_dir / "checkpoints").glob("*.ckpt")}
    # every checkpoint, as finally written, was on disk at a commit made during training (before the last one)
    assert len(volume.seen) == result["commits"] >= 2
    during = volume.seen[:-1]
    for name, mtime in final.items():
        assert any(seen.get(name) == mtime for seen in during), name
    assert json.loads((run_dir / "final_metrics.json").read_text()) == pytest.approx(result["metrics"])


@pytest.mark.slow
def test_train_body_reports_a_ddp_spawn_run_from_rank_0(tmp_path, replay_dir, monkeypatch):
    """Under ddp_spawn the training runs in child processes: the report still carries their losses and steps."""
    monkeypatch.setenv("MELEE_WM_SAMPLES", str(replay_dir))
    spawn = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp_spawn", "run_name=spawned"]
    result = jobs.train_job([*TINY_TRAINING, *spawn], tmp_path)
    assert result["global_step"] == 5 and len(result["first_losses"]) == 3 and result["commits"] == 0
    assert (tmp_path / "runs" / "spawned" / jobs.RUN_REPORT_FILE).is_file()


@pytest.mark.slow
def test_missing_store_or_checkpoint_is_a_file_not_found_error_naming_it(tmp_path):
    missing = tmp_path / "no_store"
    overrides = [*TINY_TRAINING, "data=store", f"data.store={missing}", "run_name=x"]
    with pytest.raises(FileNotFoundError, match=str(missing)):
        launcher.train_run.local(overrides, str(tmp_path))  # the Modal function's body, run here
    assert not (tmp_path / "runs" / "x" / "checkpoints").exists()
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "runs" / "y" / "checkpoints" / "last.ckpt")):
        jobs.train_job([*TINY_TRAINING, "run_name=y", "resume=true"], tmp_path)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "replays")):
        launcher.list_replays.local(str(tmp_path / "replays"))


def test_encode_body_map_then_merge_gives_the_one_shot_store(replay_dir, sample_store, tmp_path):
    volume = tmp_path / "vol"
    shutil.copytree(replay_dir, volume / "replays")
    out = jobs.volume_path(volume, "all", spec.STORES_SUBDIR)
    lines = []
    jobs.run_encode(
        jobs.volume_path(volume, "replays"),
        out,
        files_per_group=2,
        list_files=launcher.list_replays.local,
        encode_all=lambda pairs: [launcher.encode_group.local(f, p, [], 1, 8000) for f, p in pairs],
        merge=lambda parts, target: launcher.merge_parts.local(parts, target, 8000),
        echo=lines.append,
    )
    assert lines[0] == "6 replays in 3 groups of up to 2"
    assert not jobs.parts_dir(out).exists()  # parts removed after the merge
    merged = open_store(out)
    # the same store as a one-shot build of the same files, but for the folder the paths name
    rows = [{**g.to_dict(), "path": os.path.basename(g.path)} for g in merged.games]
    assert rows == [{**g.to_dict(), "path": os.path.basename(g.path)} for g in sample_store.games]
    for merged_manifest, store_manifest in ((merged.manifest, sample_store.manifest),):
        for key in ("counts", "encoding_config", "config_hash", "filters", "shards", "repairs"):
            assert merged_manifest[key] == store_manifest[key], key
    one_shot = launcher.encode_group.local([str(volume / "replays")], str(tmp_path / "one_shot"), [], 1, 8000)
    assert one_shot["games"] == 6
    assert_same_store(merged, open_store(tmp_path / "one_shot"))


def test_volume_paths():
    assert jobs.volume_path("/vol", "replays") == Path("/vol/replays")
    assert jobs.volume_path("/vol", "all", "stores") == Path("/vol/stores/all")
    assert jobs.volume_path("/vol", "/vol/stores/x", "stores") == Path("/vol/stores/x")
    with pytest.raises(ValueError, match="not on the volume"):
        jobs.volume_path("/vol", "/tmp/x")


def test_smoke_lines_need_batches_a_checkpoint_and_a_commit():
    result = {
        "run_dir": "/vol/runs/smoke_x",
        "first_losses": [1.0, 0.9],
        "global_step": 50,
        "checkpoints": ["best.ckpt", "last.ckpt"],
        "commits": 2,
        "wandb": "offline",
    }
    lines = jobs.smoke_lines(result, committed=True)
    assert lines[0].startswith("first batches: losses 1.0000, 0.9000") and lines[-1] == "W&B: offline"
    with pytest.raises(RuntimeError, match="never committed"):
        jobs.smoke_lines({**result, "commits": 0}, committed=True)
    with pytest.raises(RuntimeError, match=r"no last\.ckpt"):
        jobs.smoke_lines({**result, "checkpoints": []}, committed=False)
    with pytest.raises(RuntimeError, match="no training batch"):
        jobs.smoke_lines({**result, "global_step": 0}, committed=False)


def test_entrypoints_take_raw_overrides_or_simple_types():
    for name in ("train", "sweep", "smoke"):
        params = inspect.signature(getattr(launcher, name).info.raw_f).parameters.values()
        assert [p.kind for p in params] == [inspect.Parameter.VAR_POSITIONAL]
    encode = inspect.signature(launcher.encode.info.raw_f).parameters.values()
    assert {p.annotation for p in encode} <= {"str", "int", "bool"}
