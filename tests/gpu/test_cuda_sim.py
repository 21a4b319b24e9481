"""The simulator on CUDA: the worlds a CPU simulator of the same weights steps, branching and seeded sampling as
deterministic as on the CPU, and the finished-game rule on the device.

The store: `$MELEE_WM_TEST_STORE` (the GPU check points it at its bundle's store), else the sample store the
other tests build (which needs the replay parser).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from melee_wm.data.store import open_store
from melee_wm.sim import IDLE, Controller
from tests.helpers import long_games, random_simulator, replay_controls, step_checking_invariants, store_target_stats

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
STORE_ENV = "MELEE_WM_TEST_STORE"
FRAMES = 30
# fp32 on both devices; kernels differ in summation order, and the error compounds over recurrent steps.
FIRST_FRAMES_TOL, ALL_FRAMES_TOL = 1e-4, 1e-2


@pytest.fixture(scope="module")
def store(request):
    path = os.environ.get(STORE_ENV)
    return open_store(path) if path else request.getfixturevalue("sample_store")


@pytest.fixture(scope="module")
def stats(store):
    return store_target_stats(store)


def test_cuda_worlds_follow_the_cpu_worlds(store, stats):
    """Eight worlds from real starts, driven by their games' own controllers for 30 frames, on CUDA and on the CPU
    with the same weights: the same frames (float fields within fp32 kernel tolerance, action ids equal at first,
    then on nearly every entry: a near-tie of two actions may go the other way)."""
    games = long_games(store)
    starts = [(games[k % len(games)], 1000 + 500 * k) for k in range(8)]
    sims = {device: random_simulator(stats, len(starts), device=device) for device in ("cpu", "cuda")}
    frames = {}
    for device, sim in sims.items():
        sim.reset_from_store(store, [g for g, _ in starts], [f for _, f in starts])
        controls = [replay_controls(store, g, f, FRAMES, sim.layout) for g, f in starts]
        frames[device] = [sim.step(np.stack([c[k] for c in controls])) for k in range(FRAMES)]
    assert frames["cuda"][0].floats.is_cuda
    for k, (cpu, cuda) in enumerate(zip(frames["cpu"], frames["cuda"], strict=True)):
        tol = FIRST_FRAMES_TOL if k < 3 else ALL_FRAMES_TOL
        torch.testing.assert_close(cuda.position.cpu(), cpu.position, rtol=tol, atol=tol, msg=f"frame {k}")
        if k < 3:
            assert torch.equal(cuda.ints.cpu(), cpu.ints), k
    same = torch.stack([(a.action.cpu() == b.action) for a, b in zip(frames["cuda"], frames["cpu"], strict=True)])
    assert same.float().mean() > 0.95


def test_cuda_branches_replay_and_sampling_is_seeded(store, stats):
    """At temperature 1 on CUDA: `restore` and the same inputs give the same frames (the device generator's state
    is part of the saved state), another input moves the players elsewhere, and one seed gives the same worlds
    twice, another seed other actions."""
    game = long_games(store)[0]

    def run(seed: int) -> tuple[list, list, list]:
        sim = random_simulator(stats, 4, device="cuda", temperature=1.0, seed=seed)
        sim.reset_from_store(store, game, [1500, 2000, 2500, 3000])
        saved = sim.state()

        def branch(controllers) -> list:
            sim.restore(saved)
            return [sim.step(controllers) for _ in range(10)]

        push = [Controller(main_x=0.8, buttons=("a",)), IDLE]
        first, again = branch(push), branch(push)
        other = branch([Controller(main_x=-0.8, main_y=1.0, buttons=("b",)), IDLE])
        return first, again, other

    first, again, other = run(3)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a.ints, b.ints)
        torch.testing.assert_close(a.floats, b.floats, rtol=1e-6, atol=1e-6)
    assert any(not torch.allclose(a.position, b.position) for a, b in zip(first, other, strict=True))
    assert all(torch.equal(a.ints, b.ints) for a, b in zip(first, run(3)[0], strict=True))
    assert any(not torch.equal(a.action, b.action) for a, b in zip(first, run(4)[0], strict=True))


def test_a_finished_game_stays_finished_on_cuda(store, stats):
    """Adversarial outputs on CUDA: percent stays >= 0, stocks never rise nor go below 0, and a world whose game
    ended keeps its final frame."""
    sim = random_simulator(stats, 16, gain=50.0, device="cuda")
    games = long_games(store)
    sim.reset_from_store(store, [games[i % len(games)] for i in range(16)], list(range(1000, 5000, 250)))
    ended_at = step_checking_invariants(sim)
    assert ended_at, "no world's game ended: the finished-game rule was not exercised"
