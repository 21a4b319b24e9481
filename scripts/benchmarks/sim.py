"""The simulator's overhead: `Simulator.step` (both players' named `Controller`s encoded, the recurrent step,
the finished-game rule, a `SimFrame`) against the bare per-frame loop of rollout evaluation
(`RecurrentRollout.advance` with encoded controllers: one recurrent step and the frame's reconstruction), same
model, same worlds, side by side, at 1 and 256 worlds, on the CPU (and CUDA when present).

Models: the smoke experiment's `small` preset (the summary: its step is the cheapest, so the overhead shows
most) and `mamba2_base`, random weights, unit target statistics, synthetic context windows whose players all
hold stocks. The summary's ratio is bare time / simulator time at 256 worlds (1.0 = no overhead).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from melee_wm.encoding import EncodingConfig, Layout
from melee_wm.eval.rollout import RecurrentRollout
from melee_wm.frames.targets import TargetCodec, TargetStats
from melee_wm.model.build import build_model
from melee_wm.model.config import load_model_config
from melee_wm.paths import config_dir
from melee_wm.sim import Controller, Simulator
from melee_wm.sim.controller import STICKS, encode_controllers

from ._common import alternating_medians, record, summary
from .model import synthetic_batch
from .rollout import unit_stats

CONTEXT = 30
TARGET = 0.9
SUMMARY_PRESET, SUMMARY_WORLDS = "small", 256
PRESETS = ("small", "mamba2_base")
WORLDS = (1, 256)
STEPS = 10  # frames per timed call


def _context(layout: Layout, worlds: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(worlds, CONTEXT, ...) synthetic frames on `device` in which both players hold four stocks."""
    batch = synthetic_batch(layout, worlds, CONTEXT - 1)
    floats, ints = batch.floats.clone(), batch.ints.clone()
    for p in range(2):
        floats[..., layout.player_float_index(p, "stocks")] = 4 * layout.float_scale("stocks")
    return floats.to(device), ints.to(device)


def _controllers(worlds: int, rng: np.random.Generator) -> list[Controller]:
    return [Controller(**{s: rng.uniform(-1, 1, worlds) for s in STICKS}, buttons=("a",)) for _ in range(2)]


def time_steps(net, codec: TargetCodec, device: torch.device, worlds: int, rounds: int) -> dict[str, float]:
    """Median seconds for `STEPS` frames: bare `RecurrentRollout.advance`, `Simulator.step` with named
    controllers and with encoded ones, alternating."""
    layout = codec.layout
    floats, ints = _context(layout, worlds, device)
    controllers = _controllers(worlds, np.random.default_rng(0))
    encoded = torch.as_tensor(encode_controllers(layout, controllers, worlds), device=device)
    bare = RecurrentRollout(net, codec, floats, ints)
    sim = Simulator(net, codec, CONTEXT, worlds)
    sim.reset(floats, ints)

    def repeat(step) -> None:
        for _ in range(STEPS):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    calls = {
        "bare": lambda: repeat(lambda: bare.advance(encoded)),
        "sim": lambda: repeat(lambda: sim.step(controllers)),
        "sim_encoded": lambda: repeat(lambda: sim.step(encoded)),
    }
    for call in calls.values():  # warm-up
        call()
    return alternating_medians(calls, rounds)


def measure(preset: str, device: torch.device, worlds: int, rounds: int) -> dict[str, float]:
    """Steps/s of the bare loop and of the simulator (named and encoded controllers) and their ratios, for one
    model preset (random weights) on `device` with `worlds` worlds."""
    layout = Layout(EncodingConfig())
    torch.manual_seed(0)
    net = build_model(load_model_config(config_dir() / "model" / f"{preset}.yaml"), layout, CONTEXT).to(device).eval()
    codec = TargetCodec(layout, TargetStats.from_dict(unit_stats(layout)), "delta").to(device)
    t = time_steps(net, codec, device, worlds, rounds)
    return {
        "bare_steps_per_s": STEPS / t["bare"],
        "sim_steps_per_s": STEPS / t["sim"],
        "sim_encoded_steps_per_s": STEPS / t["sim_encoded"],
        "world_frames_per_s": worlds * STEPS / t["sim"],
        "ratio": t["bare"] / t["sim"],
        "ratio_encoded": t["bare"] / t["sim_encoded"],
    }


def run(quick: bool) -> Iterator[dict]:
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rounds = 2 if quick else 30  # many short alternating calls: the machine is shared and noisy
    yield record("setup", presets=PRESETS, worlds=WORLDS, steps_per_call=STEPS, threads=torch.get_num_threads())
    ratio = None
    for device in devices:
        for preset in PRESETS[:1] if quick else PRESETS:
            for worlds in WORLDS:
                figures = measure(preset, device, worlds, rounds)
                yield record(f"{device.type}_{preset}_worlds{worlds}", **figures)
                if device.type == "cpu" and preset == SUMMARY_PRESET and worlds == SUMMARY_WORLDS:
                    ratio = figures["ratio"]
    yield summary(
        ratio=ratio,
        target=TARGET,
        passed=ratio is not None and ratio >= TARGET,
        measure=f"bare recurrent step time / Simulator.step time, {SUMMARY_PRESET}, {SUMMARY_WORLDS} worlds, CPU",
        cuda="measured" if len(devices) > 1 else "not run (no CUDA device)",
    )
