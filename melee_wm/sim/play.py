"""`melee-wm play`: drive one simulated world for many frames from a real start of a store and write what it
did: an animated GIF over the stage (with the replay's own controllers, the true game beside the model's), a PNG
of both players' trajectories, and a JSON of every frame with the controllers that drove it.

Controllers: `replay` (the game's own inputs, so the truth is comparable), `idle` (nothing held), `random`
(seeded random sticks and buttons, each held for `RANDOM_HOLD` frames) or a JSON file: a list with one entry per
frame, each a list of two objects with `Controller` fields (`{"main_x": 1.0, "buttons": ["a"]}`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.animation import FuncAnimation, PillowWriter

from melee_wm.data.store import Store
from melee_wm.encoding.layout import NUM_PLAYERS
from melee_wm.eval.pictures import PLAYER_COLORS, draw_stage
from melee_wm.game.names import action_name
from melee_wm.sim.controller import (
    CONTROLLER_GROUP,
    IDLE,
    STICKS,
    Controller,
    describe_controllers,
    encode_controllers,
)
from melee_wm.sim.frame import SimFrame
from melee_wm.sim.simulator import Simulator

CONTROLLER_KINDS = ("replay", "idle", "random")
RANDOM_HOLD = 8  # frames each random input is held (a person's inputs last several frames)
RANDOM_PRESS = 0.15  # chance a button is held during one random input
DEFAULT_START_SECONDS = 10  # default start: this far into the game (past the entry and the countdown)
FRAMES_PER_SECOND = 60
GIF_FPS = 30


@dataclass
class PlayRecord:
    """What one `play` did: the model's frames (`SimFrame.to_dict`), the true frames when the controllers were
    the replay's, and the controllers of every step (`describe_controllers`)."""

    game: int
    start_frame: int
    controller: str
    frames: list[dict[str, Any]] = field(default_factory=list)
    truth: list[dict[str, Any]] | None = None
    controllers: list[list[dict[str, Any]]] = field(default_factory=list)


def default_start(store: Store, game: int | None, frames: int, context: int, needs_truth: bool) -> tuple[int, int]:
    """(game, frame) to start from: the first game with room for `frames` more (true ones when `needs_truth`),
    starting `DEFAULT_START_SECONDS` in or as late as the room allows; ValueError when no game has room."""
    candidates = range(store.num_games) if game is None else [game]
    for g in candidates:
        length = store.games[g].length
        latest = length - 1 - (frames if needs_truth else 0)
        if latest >= context - 1:
            return g, min(DEFAULT_START_SECONDS * FRAMES_PER_SECOND, latest)
    where = f"game {game} has {store.games[game].length} frames" if game is not None else "no game has enough frames"
    raise ValueError(
        f"store {store.path}: {where}: a start needs {context} context frames and {frames} "
        f"{'true ' if needs_truth else ''}frames after it; ask for fewer --frames"
    )


def controller_source(
    kind: str, sim: Simulator, store: Store, game: int, start: int, frames: int, seed: int
) -> Callable[[int], np.ndarray]:
    """step index k (0-based) -> encoded controller columns (1, width) of the frame after step k's current one."""
    layout = sim.layout
    if kind == "replay":
        floats, _ = store.game(game)
        if start + frames >= len(floats):
            raise ValueError(
                f"store {store.path} game {game}: --controller replay needs frames {start + 1}..{start + frames}, "
                f"but the game ends at frame {len(floats) - 1}; ask for fewer --frames or an earlier --frame"
            )
        columns = np.array(floats[start + 1 : start + frames + 1, layout.float_slice(CONTROLLER_GROUP)])
        return lambda k: columns[k : k + 1]
    if kind == "idle":
        idle = encode_controllers(layout, [IDLE] * NUM_PLAYERS, 1)
        return lambda k: idle
    if kind == "random":
        rng = np.random.default_rng(seed)
        held = [_random_controllers(rng, layout.cfg.buttons) for _ in range(frames // RANDOM_HOLD + 1)]
        encoded = [encode_controllers(layout, c, 1) for c in held]
        return lambda k: encoded[k // RANDOM_HOLD]
    return _file_source(Path(kind), sim, frames)


def _random_controllers(rng: np.random.Generator, buttons: tuple[str, ...]) -> list[Controller]:
    return [
        Controller(
            **{s: float(rng.uniform(-1, 1)) for s in STICKS},
            trigger=float(rng.uniform(0, 1)) if rng.random() < RANDOM_PRESS else 0.0,
            buttons=[b for b in buttons if rng.random() < RANDOM_PRESS],
        )
        for _ in range(NUM_PLAYERS)
    ]


def _file_source(path: Path, sim: Simulator, frames: int) -> Callable[[int], np.ndarray]:
    """Controllers from a JSON file (see the module docstring)."""
    if not path.is_file():
        raise FileNotFoundError(f"--controller {path}: not one of {CONTROLLER_KINDS} and no such file")
    entries = json.loads(path.read_text())
    if not isinstance(entries, list) or len(entries) < frames:
        count = len(entries) if isinstance(entries, list) else "no list of"
        raise ValueError(f"{path}: expected a JSON list of at least {frames} frames of controllers, got {count}")
    encoded = []
    for k, entry in enumerate(entries[:frames]):
        try:
            encoded.append(encode_controllers(sim.layout, [Controller(**player) for player in entry], 1))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: frame {k}: {err} (fields: main_x, main_y, c_x, c_y, trigger, buttons)") from None
    return lambda k: encoded[k]


def play(
    sim: Simulator,
    store: Store,
    frames: int,
    controller: str = "replay",
    game: int | None = None,
    start: int | None = None,
    seed: int = 0,
) -> PlayRecord:
    """Reset `sim` (batch 1) at `start` of `game` (defaults: `default_start`) and step it `frames` times with the
    chosen controllers; returns every frame (and, with `replay` controllers, the true ones)."""
    if sim.batch_size != 1:
        raise ValueError(f"play drives one world; the simulator has batch_size {sim.batch_size}")
    if frames < 1:
        raise ValueError(f"--frames must be >= 1, got {frames}")
    needs_truth = controller == "replay"
    if start is None:
        game, start = default_start(store, game, frames, sim.context_len, needs_truth)
    elif game is None:
        game = 0
    next_controllers = controller_source(controller, sim, store, game, start, frames, seed)
    record = PlayRecord(game=game, start_frame=start, controller=controller)
    record.frames.append(sim.reset_from_store(store, game, start).to_dict())
    for k in range(frames):
        encoded = next_controllers(k)
        record.controllers.append(describe_controllers(sim.layout, encoded[0]))
        record.frames.append(sim.step(encoded).to_dict())
    if needs_truth:
        floats, ints = store.game(game)
        rows = slice(start, start + frames + 1)
        true_f, true_i = torch.from_numpy(np.array(floats[rows])), torch.from_numpy(np.array(ints[rows]))
        truth = SimFrame(true_f, true_i, torch.zeros(len(true_f), dtype=torch.bool), 0, sim.layout)
        record.truth = [{**truth.to_dict(k), "frame": k, "done": False} for k in range(frames + 1)]
    return record


def write_play(record: PlayRecord, out: Path, meta: dict[str, Any]) -> list[Path]:
    """The GIF at `out`, `<stem>_trajectories.png` and `<stem>_frames.json` beside it; returns the three paths."""
    out.parent.mkdir(parents=True, exist_ok=True)
    trajectories = out.with_name(f"{out.stem}_trajectories.png")
    frames_json = out.with_name(f"{out.stem}_frames.json")
    animate(record, out)
    plot_trajectories(record, trajectories)
    payload = {**meta, "game": record.game, "start_frame": record.start_frame, "controller": record.controller}
    payload |= {"units": "x, y, percent, shield in game units; state_age, hitlag, hitstun in frames"}
    payload |= {"frames": record.frames, "truth": record.truth, "controllers": record.controllers}
    frames_json.write_text(json.dumps(payload, indent=1))
    return [out, trajectories, frames_json]


def _series(frames: list[dict[str, Any]], player: int, key: str) -> list[float]:
    return [f["players"][player][key] for f in frames]


def animate(record: PlayRecord, out: Path) -> None:
    """GIF over the stage: the model's players (hollow) and, when known, the true ones (filled), with the frame
    count and both players' action states; every other frame at `GIF_FPS` (real time)."""
    stride = max(1, FRAMES_PER_SECOND // GIF_FPS)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    draw_stage(ax, record.frames[0]["stage"])
    ax.set_aspect("equal")
    model = [ax.plot([], [], "o", mfc="none", mew=2, color=c, label=f"p{p} model")[0] for p, c in _players()]
    truth = [ax.plot([], [], "o", color=c, label=f"p{p} true")[0] for p, c in _players()] if record.truth else []
    text = ax.text(0.02, 0.97, "", transform=ax.transAxes, va="top", fontsize=8, family="monospace")
    ax.legend(loc="lower right", fontsize=7)

    def draw(k: int) -> list:
        frame = record.frames[k]
        for p, dot in enumerate(model):
            dot.set_data([frame["players"][p]["x"]], [frame["players"][p]["y"]])
        for p, dot in enumerate(truth):
            dot.set_data([record.truth[k]["players"][p]["x"]], [record.truth[k]["players"][p]["y"]])
        actions = "  ".join(f"p{p} {frame['players'][p]['action_name']}" for p in range(NUM_PLAYERS))
        text.set_text(f"frame {k:4d}{'  (game over)' if frame['done'] else ''}\n{actions}")
        return [*model, *truth, text]

    FuncAnimation(fig, draw, frames=range(0, len(record.frames), stride)).save(out, writer=PillowWriter(fps=GIF_FPS))
    plt.close(fig)


def plot_trajectories(record: PlayRecord, out: Path) -> None:
    """x, y, percent and action state of both players against the frame: the model (dashed) and the truth."""
    panels = (("x", "x (game units)"), ("y", "y (game units)"), ("percent", "percent"), ("action", "action state"))
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 2.4 * len(panels)), sharex=True)
    steps = range(len(record.frames))
    for ax, (key, title) in zip(axes, panels, strict=True):
        for p, color in _players():
            if record.truth:
                ax.plot(steps, _series(record.truth, p, key), "-", color=color, label=f"p{p} true", lw=1)
            ax.plot(steps, _series(record.frames, p, key), "--", color=color, label=f"p{p} model", lw=1.2)
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
    last = record.frames[-1]["players"]
    axes[-1].set_xlabel(
        f"frames after the start (game {record.game}, frame {record.start_frame}, {record.controller} controllers); "
        f"last: {', '.join(action_name(p['action']) for p in last)}"
    )
    axes[0].legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def _players() -> list[tuple[int, str]]:
    return list(enumerate(PLAYER_COLORS[:NUM_PLAYERS]))
