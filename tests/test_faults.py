"""Faults a user meets, on the real sample data: a training run killed with SIGKILL (mid-epoch and mid-save) and
resumed, a damaged checkpoint, a file that is not a checkpoint, user errors of `train.py`, Rust panics on
corrupt replays, and replays that parse but hold impossible values."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from melee_wm.cli import main as cli_main
from melee_wm.training import train
from melee_wm.training.checkpoint import CheckpointError
from melee_wm.training.compose import compose_train_config

REPO = Path(__file__).resolve().parents[1]
CLEAN_NAMES = ["best.ckpt", "epoch=000.ckpt", "epoch=001.ckpt", "epoch=002.ckpt", "last.ckpt"]
# Kills the child when it writes checkpoint <name> at epoch <epoch>: half the bytes on disk, then SIGKILL.
KILL_MID_SAVE = """
import io, os, signal, sys
from pathlib import Path
import torch
from melee_wm.training import train
from melee_wm.training.compose import compose_train_config
name, epoch = sys.argv[1], int(sys.argv[2])
real_save = torch.save
def save(obj, f, *args, **kwargs):
    if getattr(f, "name", "").startswith(str(Path(sys.argv[3]) / name)) and obj.get("epoch") == epoch:
        buffer = io.BytesIO()
        real_save(obj, buffer)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)
torch.save = save
train(compose_train_config(sys.argv[4:]))
"""


def run_overrides(store, runs_dir: Path, run_name: str, *extra: str, batches: int = 4) -> list[str]:
    """Three epochs of `batches` batches of the tiny smoke model on the session's sample store, in
    `runs_dir/run_name`."""
    return [
        "experiment=smoke",
        f"data.store={store.path}",
        "data.from_samples=false",
        f"paths.runs_dir={runs_dir}",
        f"run_name={run_name}",
        "trainer.max_epochs=3",
        f"trainer.limit_train_batches={batches}",
        "trainer.limit_val_batches=2",
        "trainer.enable_progress_bar=false",
        "logger=none",
        *extra,
    ]


def checkpoint_names(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


def last_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def clean_run(sample_store, tmp_path_factory) -> Path:
    """The same run as every crashed one, never interrupted."""
    runs = tmp_path_factory.mktemp("clean")
    train(compose_train_config(run_overrides(sample_store, runs, "clean")))
    assert checkpoint_names(runs / "clean") == CLEAN_NAMES
    return runs / "clean"


def assert_like_clean(run_dir: Path, clean: Path) -> None:
    """Same checkpoint names and count as the clean run, and the same final weights."""
    assert checkpoint_names(run_dir) == CLEAN_NAMES
    expected = last_weights(clean)
    for key, value in last_weights(run_dir).items():
        torch.testing.assert_close(value, expected[key], rtol=1e-5, atol=1e-6, msg=key)


# Crashes: SIGKILL and resume --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "epoch"),
    [
        ("best.ckpt", 0),  # before any checkpoint is complete: the resume starts from the first step
        ("epoch=001.ckpt", 1),  # best.ckpt of epoch 1 may be written, last.ckpt is epoch 0's
        ("last.ckpt", 1),  # epoch=001.ckpt is newer than last.ckpt
    ],
)
def test_killed_mid_save_resumes_to_the_clean_runs_checkpoints(sample_store, clean_run, tmp_path, name, epoch):
    checkpoints = tmp_path / "runs" / "crash" / "checkpoints"
    overrides = run_overrides(sample_store, tmp_path / "runs", "crash")
    command = [sys.executable, "-c", KILL_MID_SAVE, name, str(epoch), str(checkpoints), *overrides]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=child_env())
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    assert (checkpoints / f"{name}.partial").is_file()  # the half-written file never took the final name
    for path in checkpoints.glob("*.ckpt"):
        torch.load(path, map_location="cpu", weights_only=True)  # every file under a final name is whole
    train(compose_train_config([*overrides, "resume=true"]))
    assert_like_clean(tmp_path / "runs" / "crash", clean_run)


@pytest.mark.slow
def test_sigkill_mid_training_then_resume(sample_store, clean_run, tmp_path):
    """`python train.py` killed with SIGKILL while it trains epoch 1, then `resume=true`: one best.ckpt."""
    run_dir = tmp_path / "runs" / "crash"
    overrides = run_overrides(sample_store, tmp_path / "runs", "crash", batches=30)
    child = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *overrides],
        cwd=tmp_path,
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / "checkpoints" / "last.ckpt").is_file():
            assert child.poll() is None and time.monotonic() < deadline, child.stderr.read().decode()[-3000:]
            time.sleep(0.05)
        time.sleep(0.1)  # into epoch 1 (its 30 batches take longer than this)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    assert "epoch=001.ckpt" not in checkpoint_names(run_dir)
    train(compose_train_config([*overrides, "resume=true"]))
    assert checkpoint_names(run_dir) == CLEAN_NAMES


# Damaged checkpoints ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_truncated_last_checkpoint_resumes_from_the_newest_readable(sample_store, clean_run, tmp_path, capsys):
    overrides = run_overrides(sample_store, tmp_path / "runs", "damaged")
    train(compose_train_config([*overrides, "trainer.max_epochs=2"]))
    last = tmp_path / "runs" / "damaged" / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:5000])
    capsys.readouterr()
    train(compose_train_config([*overrides, "resume=true"]))
    out = capsys.readouterr().out
    assert f"cannot resume from {last}: {last} is not a readable checkpoint: truncated or damaged zip archive" in out
    assert "epoch=001.ckpt (global step 8), the newest readable checkpoint" in out
    assert_like_clean(tmp_path / "runs" / "damaged", clean_run)


@pytest.mark.slow
def test_no_readable_checkpoint_stops_naming_each_file(sample_store, tmp_path):
    overrides = run_overrides(sample_store, tmp_path / "runs", "garbage", "trainer.max_epochs=1")
    train(compose_train_config(overrides))
    checkpoints = tmp_path / "runs" / "garbage" / "checkpoints"
    for path in checkpoints.glob("*.ckpt"):
        path.write_bytes(b"")
    with pytest.raises(
        CheckpointError, match=r"no readable checkpoint in .*epoch=000\.ckpt.*the file is empty.*run_name"
    ):
        train(compose_train_config([*overrides, "resume=true"]))
    assert all(p.stat().st_size == 0 for p in checkpoints.glob("*.ckpt"))  # nothing removed


@pytest.mark.slow
def test_eval_of_a_file_that_is_not_a_checkpoint(clean_run, sample_store, capsys):
    for path in (clean_run / "config.yaml", clean_run / "data_fingerprint.json"):
        assert cli_main(["eval", str(path), "--store", str(sample_store.path)]) == 1
        err = capsys.readouterr().err
        assert f"{path} is not a readable checkpoint: not a zip archive; expected a checkpoint written by" in err
        assert "Unsupported operand" not in err and "file an issue" not in err and len(err.splitlines()) == 1


# User errors of train.py ---------------------------------------------------------------------------------------


def run_train_py(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO / "train.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=cwd, env=env or child_env())


@pytest.mark.slow
def test_train_py_user_errors_are_one_message(sample_store, clean_run, tmp_path):
    """A missing store, a run directory in use, a corrupt manifest: one message naming the path, exit 1, no
    traceback unless HYDRA_FULL_ERROR=1. (One process per case costs ~8 s of imports: three cases.)"""
    missing = run_train_py(tmp_path, "experiment=smoke", "data=store", f"data.store={tmp_path / 'nope'}")
    assert missing.returncode == 1
    assert f"train.py: error: {tmp_path / 'nope'}: no manifest.json" in missing.stderr
    assert "Traceback" not in missing.stderr and "HYDRA_FULL_ERROR=1" in missing.stderr
    runs = clean_run.parent
    in_use = run_train_py(tmp_path, *run_overrides(sample_store, runs, "clean"))
    assert in_use.returncode == 1 and f"train.py: error: {clean_run} already holds a run" in in_use.stderr
    broken = tmp_path / "broken_store"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    full = run_train_py(
        tmp_path,
        "experiment=smoke",
        "data=store",
        f"data.store={broken}",
        env={**child_env(), "HYDRA_FULL_ERROR": "1"},
    )
    assert full.returncode == 1 and "Traceback" in full.stderr and "manifest.json: not valid JSON" in full.stderr


# Corrupt replays ----------------------------------------------------------------------------------------------

POST_FRAME = 0x38  # Slippi's post-frame update event; offsets below are from its command byte
REPLAY = "peppi-py-0.8.6__tests_data_game.slp"  # no rollbacks: one post-frame event per player and frame


def post_frame_events(data: bytes) -> list[int]:
    """Offsets of the post-frame events in a replay's raw event stream (sizes from its Event Payloads event)."""
    start = data.index(b"raw[$U#l") + 12
    sizes = {data[start]: data[start + 1]}
    for i in range((data[start + 1] - 1) // 3):
        entry = start + 2 + 3 * i
        sizes[data[entry]] = int.from_bytes(data[entry + 1 : entry + 3], "big")
    end = start + int.from_bytes(data[start - 4 : start], "big")
    offsets, pos = [], start
    while pos < end and data[pos] in sizes:
        if data[pos] == POST_FRAME:
            offsets.append(pos)
        pos += 1 + sizes[data[pos]]
    return offsets


def corrupt_copies(replay: Path, folder: Path) -> dict[str, str]:
    """Copies of a real replay with bytes of one mid-game post-frame event changed -> the skip reason expected."""
    data = replay.read_bytes()
    event = post_frame_events(data)[5000]
    frame, port = int.from_bytes(data[event + 1 : event + 5], "big", signed=True), data[event + 5] + 1
    edits = {  # name: (offset in the event, new byte, expected reason)
        "frame_counter": (0x2, data[event + 0x2] ^ 0x55, "peppi failed: PanicException"),
        "x": (0xA, 0x7E, f"impossible value: port {port} x = "),
        "percent": (0x16, 0x7E, f"impossible value: port {port} percent = "),
        "stocks": (0x21, 200, f"impossible value: port {port} stocks = 200 at frame {frame} (1 frames"),
        "character": (0x7, 201, f"impossible value: port {port} character = 201 at frame {frame} (1 frames"),
    }
    expected = {}
    for name, (offset, value, reason) in edits.items():
        copy = bytearray(data)
        copy[event + offset] = value
        (folder / f"{name}.slp").write_bytes(bytes(copy))
        expected[f"{name}.slp"] = reason
    return expected


def test_corrupt_replays_are_skipped_with_reasons_and_a_quiet_stderr(replay_dir, tmp_path):
    """`melee-wm encode` with RUST_BACKTRACE=1 (a fresh process, as the Rust runtime reads it once): the panic and
    the impossible values become skip records; stderr holds no panic text or backtrace; the clean file is kept."""
    folder = tmp_path / "replays"
    folder.mkdir()
    expected = corrupt_copies(replay_dir / REPLAY, folder)
    (folder / "clean.slp").write_bytes((replay_dir / REPLAY).read_bytes())
    command = [sys.executable, "-m", "melee_wm.cli", "encode", str(folder), "--out", str(tmp_path / "store")]
    env = {**child_env(), "RUST_BACKTRACE": "1"}
    result = subprocess.run([*command, "--workers", "1"], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "panicked" not in result.stderr and "backtrace" not in result.stderr, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    reasons = {Path(r["path"]).name: r["reason"] for r in manifest["skipped"]}
    assert set(reasons) == set(expected)
    for name, reason in expected.items():
        assert reasons[name].startswith(reason), (name, reasons[name])
    assert [Path(g["path"]).name for g in manifest["games"]] == ["clean.slp"]
