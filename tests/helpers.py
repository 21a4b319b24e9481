"""Small helpers shared by several test modules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import torch

from melee_wm.data.batch import map_tensors
from melee_wm.data.config import DataConfig
from melee_wm.data.dataset import MeleeDataset
from melee_wm.encoding import EncodingConfig, Layout
from melee_wm.encoding.layout import NUM_PLAYERS
from melee_wm.frames.targets import TargetCodec, TargetStats, target_statistics
from melee_wm.model.build import build_model
from melee_wm.model.config import load_model_config
from melee_wm.paths import config_dir
from melee_wm.sim import Controller, Simulator
from melee_wm.sim.controller import CONTROLLER_GROUP, STICKS
from melee_wm.training import train
from melee_wm.training.compose import compose_train_config

REPO = Path(__file__).resolve().parents[1]
SIM_CONTEXT = 16  # context frames of the simulator tests' models
LONG_GAME_FRAMES = 5000  # the sample games this long have room for every simulator test's start


def quiet_trainer(**kwargs) -> L.Trainer:
    """A Lightning Trainer without loggers, checkpoints, progress bar or summary, using our own batch sampler
    (`use_distributed_sampler=False`); validation off unless `limit_val_batches` is given."""
    options = {
        "limit_val_batches": 0,
        "use_distributed_sampler": False,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return L.Trainer(**(options | kwargs))


def tensors(obj) -> list[torch.Tensor]:
    """Every tensor of a (nested) dataclass / dict, in field order."""
    out: list[torch.Tensor] = []
    map_tensors(obj, lambda t: out.append(t) or t)
    return out


def assert_same(a, b) -> None:
    """Two Batches (or any dataclasses of tensors) hold equal tensors, same dtypes and shapes, in every field."""
    ta, tb = tensors(a), tensors(b)
    assert len(ta) == len(tb) > 0
    for x, y in zip(ta, tb, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y)


def overrides_for(store, tmp_path: Path, *extra: str) -> list[str]:
    """Overrides for a run on the session's sample store writing into `tmp_path`."""
    return [
        f"data.store={store.path}",
        "data.from_samples=false",
        f"paths.runs_dir={tmp_path / 'runs'}",
        *extra,
    ]


def quick_run(store, tmp_path: Path, *extra: str) -> tuple[dict[str, float], Path]:
    """Train the smoke experiment for four batches (`debug=default`); returns (metrics, run_dir)."""
    cfg = compose_train_config(
        ["experiment=smoke", "debug=default", *overrides_for(store, tmp_path), "trainer.limit_train_batches=4", *extra]
    )
    run_dir = Path(cfg.paths.runs_dir) / cfg.run_name
    return train(cfg), run_dir


def run_train_py(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """`python train.py ARGS` in `tmp_path` (a fresh process, as a user runs it)."""
    command = [sys.executable, str(REPO / "train.py"), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


# The simulator -------------------------------------------------------------------------------------------------


def store_target_stats(store) -> TargetStats:
    """Target statistics of a whole store, so an untrained model's outputs land on game-like values."""
    data = DataConfig(store=str(store.path), context_len=SIM_CONTEXT)
    return target_statistics(MeleeDataset.from_store(store, "all", data, store.config), "delta")


def random_simulator(
    stats: TargetStats, batch_size: int, gain: float = 0.1, device: str = "cpu", **kwargs
) -> Simulator:
    """A simulator of an untrained `small` model whose output layer is random with scale `gain` times the default
    initialisation (0.1: outputs near the statistics' centres, worlds that respond to their inputs; 50:
    adversarial outputs far outside anything a game shows); the same weights on every device."""
    torch.manual_seed(0)
    layout = Layout(EncodingConfig())
    net = build_model(load_model_config(config_dir() / "model" / "small.yaml"), layout, SIM_CONTEXT)
    with torch.no_grad():
        net.heads.out.weight.mul_(gain)
        net.heads.out.bias.normal_(0.0, gain)
    codec = TargetCodec(layout, stats, "delta")
    return Simulator(net.to(device), codec.to(device), SIM_CONTEXT, batch_size, **kwargs)


def long_games(store) -> list[int]:
    return [g for g in range(store.num_games) if store.games[g].length > LONG_GAME_FRAMES]


def replay_controls(store, game: int, start: int, frames: int, layout: Layout) -> np.ndarray:
    """(frames, width) the game's own encoded controllers of frames start+1 .. start+frames."""
    floats, _ = store.game(game)
    return np.array(floats[start + 1 : start + frames + 1, layout.float_slice(CONTROLLER_GROUP)])


def step_checking_invariants(sim: Simulator, frames: int = 60, seed: int = 0) -> dict[int, torch.Tensor]:
    """Step every world of `sim` `frames` times with seeded random sticks, asserting each frame that percent stays
    >= 0, stocks never rise nor go below 0, and a world whose game ended keeps its final frame. Returns the
    worlds that ended: world -> its final floats."""
    rng = np.random.default_rng(seed)
    previous = sim.frame
    ended_at: dict[int, torch.Tensor] = {}
    for _ in range(frames):
        sticks = [{s: rng.uniform(-1, 1, sim.batch_size) for s in STICKS} for _ in range(NUM_PLAYERS)]
        frame = sim.step([Controller(**player) for player in sticks])
        assert (frame.percent >= 0).all()
        assert (frame.stocks <= previous.stocks).all() and (frame.stocks >= 0).all()
        for world, floats in ended_at.items():
            assert frame.done[world] and torch.equal(frame.floats[world], floats)
        for world in torch.nonzero(frame.done).flatten().tolist():
            ended_at.setdefault(world, frame.floats[world].clone())
        previous = frame
    return ended_at
