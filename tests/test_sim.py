"""The simulator (`melee_wm.sim`) on the real sample store: it reproduces the rollout evaluator's frames, branches
and batches exactly, holds the game's invariants whatever the model outputs, encodes controllers as the encoder
does, and drives `melee-wm play` and a Gymnasium environment."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from melee_wm.cli import main
from melee_wm.data.config import DataConfig
from melee_wm.encoding import EncodingConfig, Layout
from melee_wm.encoding.config import BUTTON_BITS
from melee_wm.eval.rollout import rollout
from melee_wm.eval.rollout_eval import draw_starts, rollout_windows
from melee_wm.frames.targets import TargetStats
from melee_wm.game.names import action_name
from melee_wm.replay.parse import parse_replay
from melee_wm.sim import IDLE, Controller, Simulator
from melee_wm.sim.controller import CONTROLLER_GROUP, STICKS, encode_controllers
from tests.helpers import (
    SIM_CONTEXT,
    long_games,
    quick_run,
    random_simulator,
    replay_controls,
    step_checking_invariants,
    store_target_stats,
)


@pytest.fixture(scope="module")
def checkpoint(sample_store, tmp_path_factory):
    """A smoke run's last checkpoint (four training batches)."""
    _, run_dir = quick_run(sample_store, tmp_path_factory.mktemp("sim_run"))
    return run_dir / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def stats(sample_store) -> TargetStats:
    return store_target_stats(sample_store)


# Controllers ---------------------------------------------------------------------------------------------------


def test_controllers_encode_as_the_encoder_does(replay_dir, sample_store):
    """Each frame of a real replay, its parsed sticks, trigger and buttons given as `Controller`s (one world per
    frame), encodes to exactly the columns the store holds for it."""
    game = long_games(sample_store)[0]
    row = sample_store.games[game]
    parsed = parse_replay(row.path)
    layout = sample_store.layout
    raw = [parsed.players[p] for p in range(2)]
    names = {"main_x": "joystick_x", "main_y": "joystick_y", "c_x": "cstick_x", "c_y": "cstick_y"}
    controllers = [
        Controller(
            **{s: np.clip(raw[p][names[s]], -1, 1) for s in STICKS},
            trigger=raw[p]["trigger"],
            buttons={b: (raw[p]["buttons"] & BUTTON_BITS[b]) != 0 for b in layout.cfg.buttons},
        )
        for p in range(2)
    ]
    encoded = encode_controllers(layout, controllers, row.length)
    floats, _ = sample_store.game(game)
    stored = np.array(floats[:, layout.float_slice(CONTROLLER_GROUP)])
    in_range = np.all([np.abs(raw[p][names[s]]) <= 1 for p in range(2) for s in STICKS], axis=0)
    assert in_range.mean() > 0.99  # the clip above touches almost nothing
    np.testing.assert_array_equal(encoded[in_range], stored[in_range])
    assert stored[:, layout.float_fields(CONTROLLER_GROUP).index("button_a")].any()  # buttons were pressed


def test_controller_forms_agree():
    """A number and a list of one value per world, held buttons named and given per world as a mapping, encode to
    the same columns; each world's column holds its own value."""
    layout = Layout(EncodingConfig())
    fields = layout.float_fields(CONTROLLER_GROUP)
    one = encode_controllers(layout, [Controller(main_x=0.5, trigger=0.25, buttons=("a", "b")), IDLE], 3)
    per_world = Controller(main_x=[0.5] * 3, trigger=[0.25] * 3, buttons={"a": [True] * 3, "b": True, "x": False})
    np.testing.assert_array_equal(one, encode_controllers(layout, [per_world, IDLE], 3))
    mixed = encode_controllers(layout, [IDLE, Controller(c_y=[-1.0, 0.0, 1.0], buttons={"z": [False, True, False]})], 3)
    player1 = mixed[:, len(fields) :]  # the group holds player 0's fields, then player 1's
    np.testing.assert_array_equal(player1[:, fields.index("c_y")], [-1.0, 0.0, 1.0])
    np.testing.assert_array_equal(player1[:, fields.index("c_down")], [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(player1[:, fields.index("button_z")], [0.0, 1.0, 0.0])
    assert not mixed[:, : len(fields)].any()  # player 0 idle


def test_controller_errors_name_the_player_and_field():
    layout = Layout(EncodingConfig())
    with pytest.raises(ValueError, match=r"player 1 main_x: expected values in \[-1.0, 1.0\]"):
        encode_controllers(layout, [IDLE, Controller(main_x=1.5)], 1)
    with pytest.raises(ValueError, match="player 0 button 'dpad_up': a button the game has, but not one this model"):
        encode_controllers(layout, [Controller(buttons=("dpad_up",)), IDLE], 1)
    with pytest.raises(ValueError, match="player 0 button 'jump': no button"):
        encode_controllers(layout, [Controller(buttons=("jump",)), IDLE], 1)
    with pytest.raises(ValueError, match=r"expected one number or 3 \(one per world\)"):
        encode_controllers(layout, [Controller(trigger=[0.1, 0.2]), IDLE], 3)
    with pytest.raises(ValueError, match=r"player 1 c_x: expected one number or 3 .*got shape \(3, 1\)"):
        encode_controllers(layout, [IDLE, Controller(c_x=np.zeros((3, 1)))], 3)
    with pytest.raises(ValueError, match=r"player 0 button 'a': expected one flag or 3 .*got shape \(2,\)"):
        encode_controllers(layout, [Controller(buttons={"a": [True, False]}), IDLE], 3)
    with pytest.raises(ValueError, match="expected 2 controllers"):
        encode_controllers(layout, [IDLE], 1)


# Reset, decoding, errors ---------------------------------------------------------------------------------------


def test_reset_decodes_the_real_frame_in_game_units(replay_dir, sample_store, stats):
    """After `reset_from_store` the current frame is the store's frame, and its named fields are the replay's
    parsed values in game units."""
    game = long_games(sample_store)[0]
    start = 2000
    sim = random_simulator(stats, 1)
    frame = sim.reset_from_store(sample_store, game, start)
    parsed = parse_replay(sample_store.games[game].path)
    for p in range(2):
        raw = parsed.players[p]
        assert frame.position[0, p].tolist() == pytest.approx([raw["x"][start], raw["y"][start]], abs=1e-3)
        assert float(frame.percent[0, p]) == pytest.approx(float(raw["percent"][start]), abs=1e-3)
        assert int(frame.stocks[0, p]) == int(raw["stocks"][start])
        assert int(frame.action[0, p]) == int(raw["state"][start])
        assert bool(frame.facing_right[0, p]) == bool(raw["direction"][start] > 0)
        described = frame.players(0)[p]
        assert described["action_name"] == action_name(int(raw["state"][start]))
        assert described["on_ground"] == bool(raw["airborne"][start] == 0)
    assert int(frame.stage[0]) == sample_store.games[game].stage and frame.frame == 0


def test_simulator_errors(sample_store, stats):
    sim = random_simulator(stats, 2)
    with pytest.raises(RuntimeError, match="call reset"):
        sim.step([IDLE, IDLE])
    game = long_games(sample_store)[0]
    length = sample_store.games[game].length
    with pytest.raises(ValueError, match=rf"game {game}: frame {length} cannot start a world"):
        sim.reset_from_store(sample_store, game, length)
    with pytest.raises(ValueError, match=r"no game 99 \(it holds games 0..5\)"):
        sim.reset_from_store(sample_store, 99, 10)
    with pytest.raises(ValueError, match=r"game needs one value or 2 \(one per world\), got 3"):
        sim.reset_from_store(sample_store, [game] * 3, 100)
    floats, ints = (np.array(a[:40]) for a in sample_store.game(game))
    with pytest.raises(ValueError, match=f"40 context frames; expected 2 to {SIM_CONTEXT}"):
        sim.reset(floats, ints)
    with pytest.raises(ValueError, match=rf"valid must be \({sim.layout.num_floats},\) or \(2, "):
        sim.reset(floats[:SIM_CONTEXT], ints[:SIM_CONTEXT], valid=np.ones(3, dtype=bool))
    sim.reset(floats[:SIM_CONTEXT], ints[:SIM_CONTEXT])
    with pytest.raises(ValueError, match=r"encoded controllers must be \(2, "):
        sim.step(np.zeros((1, 3), dtype=np.float32))


# Equality with the rollout evaluator, branching, batching ------------------------------------------------------


@pytest.mark.slow
def test_from_checkpoint_reproduces_the_rollout_evaluator(checkpoint, sample_store):
    """A checkpoint's simulator fed the replays' own controllers gives exactly the frames the rollout evaluator
    predicts from the same starts (same code path: one recurrent step per frame)."""
    sim = Simulator.from_checkpoint(checkpoint, batch_size=8)
    context, horizon = sim.context_len, 12
    data = DataConfig(store=str(sample_store.path), context_len=context, val_fraction=0.34)
    windows = rollout_windows(sample_store, "val", data, sample_store.config, context, horizon)
    starts = draw_starts(len(windows), 8, seed=1)
    floats, ints = windows.gather(starts)
    _, games = windows.window_games(starts)
    valid, valid_ints = windows.game_valid_floats[games], windows.game_valid_ints[games]
    assert not valid.all()  # some start is in a game whose replay format lacks fields (its indicators are on)
    stocks = [sim.layout.player_float_index(p, "stocks") for p in range(2)]
    assert (floats[..., stocks] > 0).all()  # no game ends inside these windows (a finished world stops)
    want_f, want_i = rollout(sim.net, sim.codec, floats, ints, context, valid=valid, valid_ints=valid_ints)
    sim.reset(floats[:, :context], ints[:, :context], valid, valid_ints)
    ctrl = sim.layout.float_slice(CONTROLLER_GROUP)
    for h in range(horizon):
        frame = sim.step(floats[:, context + h, ctrl])
        assert torch.equal(frame.floats, want_f[:, h]) and torch.equal(frame.ints, want_i[:, h]), h


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_restore_replays_a_branch_and_branches_differ_only_by_input(sample_store, stats, temperature):
    sim = random_simulator(stats, 2, temperature=temperature, seed=3)
    game = long_games(sample_store)[0]
    sim.reset_from_store(sample_store, game, [1500, 3000])
    for _ in range(5):
        sim.step([IDLE, IDLE])
    saved = sim.state()
    a = [Controller(main_x=0.8, buttons=("a",)), IDLE]
    b = [Controller(main_x=-0.8, main_y=1.0, buttons=("b",)), IDLE]

    def branch(controllers) -> list[tuple[torch.Tensor, torch.Tensor]]:
        sim.restore(saved)
        return [(f.floats.clone(), f.ints.clone()) for f in (sim.step(controllers) for _ in range(10))]

    first, again, other = branch(a), branch(a), branch(b)
    assert sim.restore(saved).frame == 5
    for (f1, i1), (f2, i2) in zip(first, again, strict=True):
        assert torch.equal(f1, f2) and torch.equal(i1, i2)
    assert any(not torch.equal(f1, f3) for (f1, _), (f3, _) in zip(first, other, strict=True))


def test_a_batch_of_worlds_equals_single_worlds(sample_store, stats):
    games = long_games(sample_store)
    starts = [(games[0], 1200), (games[1], 2500), (games[-1], 4000)]
    batched = random_simulator(stats, len(starts))
    batched.reset_from_store(sample_store, [g for g, _ in starts], [f for _, f in starts])
    controls = [replay_controls(sample_store, g, f, 20, batched.layout) for g, f in starts]
    frames = [batched.step(np.stack([c[k] for c in controls])) for k in range(20)]
    for world, (game, start) in enumerate(starts):
        single = random_simulator(stats, 1)
        single.reset_from_store(sample_store, game, start)
        for k in range(20):
            alone = single.step(controls[world][k : k + 1])
            torch.testing.assert_close(alone.floats[0], frames[k].floats[world], rtol=1e-4, atol=1e-4)
            assert torch.equal(alone.ints[0], frames[k].ints[world])


def test_sampling_is_deterministic_for_a_seed_and_varies_across_seeds(sample_store, stats):
    game = long_games(sample_store)[0]

    def actions(seed: int) -> torch.Tensor:
        sim = random_simulator(stats, 4, temperature=1.0, seed=seed)
        sim.reset_from_store(sample_store, game, 2000)
        return torch.stack([sim.step([IDLE, IDLE]).action for _ in range(8)])

    assert torch.equal(actions(1), actions(1))
    assert not torch.equal(actions(1), actions(2))


def test_invariants_hold_on_an_adversarial_model(sample_store, stats):
    """Random output weights scaled far beyond a trained model's: percent stays >= 0, stocks never rise or go
    below 0, and a world whose game ended keeps its final frame."""
    sim = random_simulator(stats, 16, gain=50.0)
    games = long_games(sample_store)
    sim.reset_from_store(sample_store, [games[i % len(games)] for i in range(16)], list(range(1000, 5000, 250)))
    ended_at = step_checking_invariants(sim)
    assert ended_at, "no world's game ended: the finished-game rule was not exercised"
    assert (sim.frame.percent == 0).any()  # the model pushed percent down and the clamp held it


# Entry points --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_play_writes_gif_png_and_json(checkpoint, sample_store, tmp_path, capsys):
    game = long_games(sample_store)[0]
    out = tmp_path / "play.gif"
    argv = ["play", str(checkpoint), "--store", str(sample_store.path), "--frames", "40", "--out", str(out)]
    assert main([*argv, "--game", str(game), "--frame", "1000"]) == 0
    printed = capsys.readouterr().out
    names = (out, tmp_path / "play_trajectories.png", tmp_path / "play_frames.json")
    for path in names:
        assert path.stat().st_size > 0 and f"wrote {path}" in printed.replace("\n", "")
    record = json.loads(names[2].read_text())
    assert record["game"] == game and record["start_frame"] == 1000 and record["controller"] == "replay"
    assert len(record["frames"]) == len(record["truth"]) == 41 and len(record["controllers"]) == 40
    assert record["frames"][0]["players"] == record["truth"][0]["players"]  # the start is the real frame
    parsed = parse_replay(sample_store.games[game].path)
    assert record["truth"][40]["players"][1]["x"] == pytest.approx(float(parsed.players[1]["x"][1040]), abs=1e-3)
    assert record["controllers"][0][0]["main_x"] == pytest.approx(float(parsed.players[0]["joystick_x"][1001]))
    from PIL import Image

    assert Image.open(out).n_frames == 21  # every other frame of 41
    # A JSON file of inputs drives it too, and a bad one is named with the frame at fault.
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps([[{"main_x": 1.0, "buttons": ["a"]}, {}]] * 5))
    assert main(["play", str(checkpoint), "--store", str(sample_store.path), "--frames", "5",
                 "--controller", str(inputs), "--out", str(tmp_path / "file.gif")]) == 0  # fmt: skip
    record = json.loads((tmp_path / "file_frames.json").read_text())
    assert record["truth"] is None and record["controllers"][4][0] == {
        "main_x": 1.0, "main_y": 0.0, "c_x": 0.0, "c_y": 0.0, "trigger": 0.0, "buttons": ["a"]}  # fmt: skip
    inputs.write_text(json.dumps([[{"main_x": 2.0}, {}]] * 5))
    assert main(["play", str(checkpoint), "--store", str(sample_store.path), "--frames", "5",
                 "--controller", str(inputs)]) == 1  # fmt: skip
    assert "inputs.json: frame 0: player 0 main_x: expected values in [-1.0, 1.0]" in capsys.readouterr().err
    assert main([*argv, "--game", "0", "--frames", "100000"]) == 1
    assert "a start needs" in capsys.readouterr().err


def test_gymnasium_environment_passes_the_checker(sample_store, stats):
    pytest.importorskip("gymnasium", reason="the `sim` extra (gymnasium) is not installed")
    from gymnasium.utils.env_checker import check_env

    from melee_wm.sim.gym_env import MeleeWorldEnv

    rewards = []

    def reward(before, after, player) -> float:
        rewards.append(player)
        return float(after.percent[0, 1 - player] - before.percent[0, 1 - player])

    env = MeleeWorldEnv(random_simulator(stats, 1), sample_store, player=1, reward=reward, max_steps=30)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=True)
    unexpected = [str(w.message) for w in caught if "infinity" not in str(w.message)]
    assert not unexpected, unexpected  # only the note that encoded frames are unbounded
    obs, info = env.reset(seed=7)
    assert env.observation_space.contains(obs)
    steps, truncated = 0, False
    while not truncated:
        obs, r, terminated, truncated, info = env.step(env.action_space.sample())
        steps += 1
        assert not terminated and isinstance(r, float)
    assert steps == 30 and set(rewards) == {1} and info["steps"] == 30
    # Player 0 follows the replay: its controller columns are the game's own.
    floats, _ = sample_store.game(info["game"])
    layout = env.sim.layout
    p0 = [layout.float_index(f"p0.{f}") for f in layout.float_fields(CONTROLLER_GROUP)]
    assert np.array_equal(obs["floats"][p0], np.array(floats[info["start_frame"] + 30, p0]))
