"""The baselines a model is shown beside: robust constant velocity and the fitted table on hand-made sequences
(a respawn jump, gravity arcs), the tail split, and every baseline on the real replays against an independent
numpy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from melee_wm.cli import main
from melee_wm.data.batch import build_batch
from melee_wm.data.config import DataConfig
from melee_wm.data.dataset import MeleeDataset
from melee_wm.data.split import tail_cut
from melee_wm.encoding.config import EncodingConfig
from melee_wm.encoding.layout import Layout
from melee_wm.eval.baselines import BASELINES, score_baselines
from melee_wm.frames.frame import (
    constant_velocity,
    current_ids,
    position_jumps,
    positions_with_previous,
    previous_frame,
    robust_constant_velocity,
    select_positions,
)
from melee_wm.frames.table import MIN_COUNT, TableBaseline, age_bucket
from melee_wm.frames.targets import RESIDUAL_TABLE, TargetCodec, target_statistics
from melee_wm.game.physics import MAX_SPEED, REBIRTH_ACTION
from melee_wm.model.config import ModelConfig
from melee_wm.model.world_model import WorldModel
from melee_wm.training import train
from melee_wm.training.compose import compose_train_config, train_config_from_dict

LAYOUT = Layout(EncodingConfig())
SCALE = LAYOUT.cfg.position_scale
FALL = 29  # an airborne action state id


def frames(x: list[float], y: list[float], action: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """One game of len(x) frames: player 0 at (x, y) game units in `action`, player 1 standing at the origin."""
    n = len(x)
    floats = torch.zeros(n, LAYOUT.num_floats)
    ints = torch.zeros(n, LAYOUT.num_ints, dtype=torch.int16)
    floats[:, LAYOUT.float_index("p0.x")] = torch.tensor(x) * SCALE
    floats[:, LAYOUT.float_index("p0.y")] = torch.tensor(y) * SCALE
    ints[:, LAYOUT.int_index("p0.action")] = torch.tensor(action, dtype=torch.int16)
    ints[:, LAYOUT.int_index("p1.action")] = 14  # Wait
    age = torch.zeros(n)
    for t in range(1, n):  # frames since the action began, as the game counts them
        age[t] = age[t - 1] + 1 if action[t] == action[t - 1] else 0
    floats[:, LAYOUT.float_index("p0.state_age")] = age * LAYOUT.cfg.state_age_scale
    return floats, ints


def scored(floats: torch.Tensor, ints: torch.Tensor):
    """(targets, previous frame) of every position of one window holding the whole sequence."""
    k = floats.shape[0] - 1
    batch = build_batch(floats[None], ints[None], LAYOUT, k)
    positions = positions_with_previous(batch)
    return select_positions(batch.targets, positions), previous_frame(batch, LAYOUT, positions), batch, positions


def test_robust_constant_velocity_persists_across_a_respawn():
    # Falling off the bottom (dead, frozen below the blast zone), then respawning on the platform above.
    x = [10.0, 12.0, 14.0, 14.0, 14.0, 0.0, 0.0, 0.0]
    y = [-150.0, -160.0, -170.0, -170.0, -170.0, 50.0, 49.0, 48.0]
    action = [FALL, FALL, FALL, 0, 0, REBIRTH_ACTION, REBIRTH_ACTION, REBIRTH_ACTION]
    targets, previous, _, _ = scored(*frames(x, y, action))
    x_col, y_col = (LAYOUT.float_index(f"p0.{c}") - LAYOUT.float_slice("continuous").start for c in ("x", "y"))
    cv = constant_velocity(targets, previous.continuous, LAYOUT).floats["continuous"][0] / SCALE
    robust = robust_constant_velocity(targets, previous, LAYOUT).floats["continuous"][0] / SCALE
    # Position j predicts frame j + 2 from frames j and j + 1. Frame 5 is the jump; from it, cv doubles it.
    assert cv[4, y_col].item() == pytest.approx(50 + 220)
    assert robust[4, y_col].item() == pytest.approx(50)  # persists across the jump
    assert robust[4, x_col].item() == pytest.approx(0)
    assert robust[5, y_col].item() == pytest.approx(48) and cv[5, y_col].item() == pytest.approx(48)  # after it
    assert robust[0, x_col].item() == pytest.approx(14) and robust[0, y_col].item() == pytest.approx(-170)
    into_current, into_next = position_jumps(targets, previous, LAYOUT)
    assert into_current[0, :, 0].tolist() == [False, False, False, False, True, False]
    assert into_next[0, :, 0].tolist() == [False, False, False, True, False, False]
    assert not into_current[..., 1].any()  # player 1 never moves
    assert MAX_SPEED < 220


def gravity_game(length: int, gravity: float, start_y: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Player 0 falling from rest in one action: y_t = start_y - gravity * t (t + 1) / 2 (acceleration -gravity)."""
    t = np.arange(length)
    y = start_y - gravity * t * (t + 1) / 2
    return frames([5.0] * length, y.tolist(), [FALL] * length)


def test_table_learns_gravity_and_backs_off_to_robust_constant_velocity():
    arcs = [gravity_game(20, 0.1, 100.0 + 10 * i) for i in range(3)]  # three arcs of one gravity
    floats = torch.cat([f for f, _ in arcs])
    ints = torch.cat([i for _, i in arcs])
    lengths = np.array([20, 20, 20])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    train = MeleeDataset.from_tensors(floats, ints, offsets, lengths, 3, DataConfig(context_len=4), EncodingConfig())
    table = TableBaseline.fit(train)
    # A fresh arc of the same action: the table adds exactly -gravity to constant velocity's y at every age.
    f, i = gravity_game(12, 0.1, 80.0)
    targets, previous, batch, positions = scored(f, i)
    rows = slice(batch.floats.shape[1] - batch.num_positions + positions.start, None)
    character = batch.ints[:, rows, LAYOUT.int_slice("character")].long()
    pred = table.predict(targets, previous, character).floats["continuous"][0]
    true = (targets.current_floats["continuous"] + targets.floats["continuous"])[0]
    y_col = LAYOUT.float_index("p0.y") - LAYOUT.float_slice("continuous").start
    ages = age_bucket(
        targets.current_floats["dynamics"][0, :, LAYOUT.float_fields("dynamics").index("state_age")] / 0.01
    )
    seen = ages < 19  # ages the training arcs reached (every key needs MIN_COUNT frames: three arcs)
    assert MIN_COUNT <= 3 and seen.any()
    torch.testing.assert_close(pred[seen, y_col], true[seen, y_col], atol=1e-6, rtol=0)
    cv = constant_velocity(targets, previous.continuous, LAYOUT).floats["continuous"][0]
    assert (cv[seen, y_col] - true[seen, y_col]).abs().min() > 0.05 * SCALE  # constant velocity misses gravity
    # An action the table never saw backs off to robust constant velocity, and its ids to persistence.
    i_unseen = i.clone()
    i_unseen[:, LAYOUT.int_index("p0.action")] = 88
    targets, previous, _, _ = scored(f, i_unseen)
    pred = table.predict(targets, previous, character)
    robust = robust_constant_velocity(targets, previous, LAYOUT)
    torch.testing.assert_close(pred.floats["continuous"], robust.floats["continuous"])
    assert torch.equal(pred.categorical["action"], targets.current_categorical["action"])


def test_tail_split_never_shares_a_frame_and_honours_the_gap(sample_store):
    cfg = DataConfig(context_len=30, split="tail", val_fraction=0.2, tail_gap=90)
    train = MeleeDataset.from_store(sample_store, "train", cfg)
    val = MeleeDataset.from_store(sample_store, "val", cfg)
    assert train.num_games == val.num_games == sample_store.num_games  # every game, so every character, in both
    games = {g.md5: g for g in sample_store.games}
    for ds, name in ((train, "train"), (val, "val")):
        for j, md5 in enumerate(ds.md5s):
            game = games[md5]
            first = int(ds.game_start[j]) - game.offset
            n = int(ds.game_length[j])
            end, val_start = tail_cut(game.length, 0.2, 90)
            if name == "train":
                assert first == 0 and n == end
            else:
                assert first == val_start and first + n == game.length and val_start - end == 90
    # Every training window ends at least the gap before the first validation frame of its game.
    shard, start = train.window_starts(torch.arange(len(train)))
    train_rows = {(int(s), int(a) + k) for s, a in zip(shard, start, strict=True) for k in range(cfg.window_len)}
    shard, start = val.window_starts(torch.arange(len(val)))
    val_rows = {(int(s), int(a) + k) for s, a in zip(shard, start, strict=True) for k in range(cfg.window_len)}
    assert not train_rows & val_rows
    with pytest.raises(ValueError, match="tail_gap"):
        DataConfig(context_len=30, split="tail", tail_gap=20)
    with pytest.raises(ValueError, match="split"):
        DataConfig(split="random")


def numpy_reference(store, cfg: DataConfig) -> dict[str, float]:
    """Position MAE of robust constant velocity and the table on the last frame of every val window of the tail
    split, computed from the raw arrays with numpy alone (the definitions of DESIGN.md, "Metrics")."""
    layout, k = store.layout, cfg.context_len
    samples = {"train": [], "val": []}
    for g in range(store.num_games):
        f, i = (np.asarray(a) for a in store.game(g))
        end, val_start = tail_cut(len(f), cfg.val_fraction, cfg.tail_gap)
        for split, lo, hi in (("train", 0, end), ("val", val_start, len(f))):
            for p in range(2):
                xy = f[lo:hi, [layout.player_float_index(p, "x"), layout.player_float_index(p, "y")]].astype(np.float64)
                act = i[lo:hi, layout.int_index(f"p{p}.action")].astype(np.int64)
                char = i[lo:hi, layout.int_index(f"p{p}.character")].astype(np.int64)
                age = f[lo:hi, layout.player_float_index(p, "state_age")] / layout.cfg.state_age_scale
                samples[split].append((xy, act, char, np.asarray(age_bucket(age.astype(np.float64)))))

    def jump(a, b, act_a, act_b):
        return (np.abs(b - a).max(-1) / SCALE > MAX_SPEED) | ((act_b == REBIRTH_ACTION) & (act_a != REBIRTH_ACTION))

    table: dict[tuple, list] = {}
    for xy, act, char, bucket in samples["train"]:
        j = jump(xy[:-1], xy[1:], act[:-1], act[1:])
        for t in range(1, len(xy) - 1):
            if not (j[t - 1] or j[t]):
                table.setdefault((char[t], act[t], bucket[t]), []).append(xy[t + 1] - 2 * xy[t] + xy[t - 1])
    levels = [table, {}, {}]  # (character, action, age bucket), (action, age bucket), (action,)
    for (_, a, b), v in table.items():
        levels[1].setdefault((a, b), []).extend(v)
        levels[2].setdefault((a,), []).extend(v)
    medians = [{key: np.median(v, axis=0) for key, v in level.items() if len(v) >= MIN_COUNT} for level in levels]
    errors = {"robust_constant_velocity": [], "table": []}
    for xy, act, char, bucket in samples["val"]:
        for t in range(k - 1, len(xy) - 1):  # the last frame of every window: predict t + 1 from t and t - 1
            moved = not jump(xy[t - 1], xy[t], act[t - 1], act[t])
            robust = xy[t] + (xy[t] - xy[t - 1]) * moved
            keys = ((char[t], act[t], bucket[t]), (act[t], bucket[t]), (act[t],))
            accel = next((m[key] for m, key in zip(medians, keys, strict=True) if key in m), 0.0) * moved
            errors["robust_constant_velocity"].append(np.abs(robust - xy[t + 1]))
            errors["table"].append(np.abs(robust + accel - xy[t + 1]))
    return {name: float(np.mean(e)) / SCALE for name, e in errors.items()}


def test_every_baseline_on_the_real_replays(sample_store):
    cfg = DataConfig(context_len=30, split="tail", val_fraction=0.2, multi_position=False)
    train = MeleeDataset.from_store(sample_store, "train", cfg)
    val = MeleeDataset.from_store(sample_store, "val", cfg)
    scores = score_baselines(val, table=TableBaseline.fit(train))
    pos = {name: s["pos_mae/all"] for name, s in scores.items()}
    smooth = {name: s["pos_mae_smooth/all"] for name, s in scores.items()}
    print({name: {m: round(v, 4) for m, v in s.items() if "/all" in m} for name, s in scores.items()})
    reference = numpy_reference(sample_store, cfg)
    assert pos["robust_constant_velocity"] == pytest.approx(reference["robust_constant_velocity"], rel=1e-4)
    assert pos["table"] == pytest.approx(reference["table"], rel=1e-4)
    assert pos["table"] < pos["robust_constant_velocity"] < pos["constant_velocity"] < pos["persistence"]
    assert smooth["robust_constant_velocity"] == pytest.approx(smooth["constant_velocity"])  # they differ at jumps
    assert smooth["table"] < smooth["robust_constant_velocity"]
    # The table keeps action accuracy at persistence's level while predicting some changes, rarely falsely.
    table, persistence = scores["table"], scores["persistence"]
    assert table["action_acc/all"] >= persistence["action_acc/all"] - 0.005
    assert table["change_acc/all"] > 0.1 and table["false_change/all"] < 0.02
    assert persistence["false_change/all"] == 0.0 and persistence["change_acc/all"] == 0.0


@pytest.mark.slow
def test_model_and_baselines_are_scored_on_the_same_frames(sample_store, tmp_path):
    """Under limit_val_batches the baselines logged beside the model cover exactly the batches the model saw."""
    batches, batch_size = 2, 32
    cfg = compose_train_config(
        [
            "experiment=smoke",
            f"data.store={sample_store.path}",
            "data.from_samples=false",
            f"paths.runs_dir={tmp_path / 'runs'}",
            f"data.batch_size={batch_size}",
            "trainer.limit_train_batches=2",
            f"trainer.limit_val_batches={batches}",
            "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false",
            "logger=none",
        ]
    )
    metrics = train(cfg)
    data = train_config_from_dict(cfg).data
    val = MeleeDataset.from_store(sample_store, "val", data)
    table = TableBaseline.fit(MeleeDataset.from_store(sample_store, "train", data))
    expected = score_baselines(val, max_windows=batches * batch_size, table=table)
    everything = score_baselines(val, table=table)
    for name in BASELINES:
        for key in ("pos_mae/all", "pos_mae_smooth/all", "action_acc/all", "false_change/all"):
            assert metrics[f"baseline/{name}/{key}"] == pytest.approx(expected[name][key], rel=1e-6), (name, key)
    assert expected["table"]["pos_mae/all"] != pytest.approx(everything["table"]["pos_mae/all"], rel=1e-3)
    assert metrics["val/pos_mae/all"] > 0


@pytest.mark.slow
def test_melee_wm_baseline_reproduces_a_run_split(sample_store, capsys, monkeypatch):
    """`melee-wm baseline` with a run's split flags prints the numbers `score_baselines` gives on that split."""
    monkeypatch.setenv("COLUMNS", "200")
    data = DataConfig(context_len=30, split="tail", val_fraction=0.2, split_salt="smoke")
    val = MeleeDataset.from_store(sample_store, "val", data)
    table = TableBaseline.fit(MeleeDataset.from_store(sample_store, "train", data))
    scores = score_baselines(val, table=table)
    args = [
        "baseline",
        str(sample_store.path),
        "--split-kind",
        "tail",
        "--val-fraction",
        "0.2",
        "--split-salt",
        "smoke",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    for name in BASELINES:
        row = next(line for line in out.splitlines() if line.split("│")[1:2] and line.split("│")[1].strip() == name)
        assert f"{scores[name]['pos_mae/all']:.4f}" in row and f"{scores[name]['action_acc/all']:.4f}" in row, row


def test_an_untrained_model_over_the_table_predicts_the_table(sample_store):
    """With `residual_over_table` the x/y outputs are a correction to the table: zero outputs give its positions."""
    cfg = DataConfig(context_len=30, split="tail", val_fraction=0.2)
    train_set = MeleeDataset.from_store(sample_store, "train", cfg)
    table = TableBaseline.fit(train_set)
    codec = TargetCodec(LAYOUT, target_statistics(train_set, RESIDUAL_TABLE), RESIDUAL_TABLE, table)
    model = WorldModel(ModelConfig(d_model=32, n_layers=1, d_state=16, headdim=16), LAYOUT)
    torch.nn.init.zeros_(model.heads.out.weight)
    torch.nn.init.zeros_(model.heads.out.bias)
    batch = MeleeDataset.from_store(sample_store, "val", cfg).get_batch(torch.arange(0, 512, 7))
    with torch.no_grad():
        pred, _ = model(batch.floats, batch.ints, batch.next_ctrl)
    positions = positions_with_previous(batch)
    targets, previous = select_positions(batch.targets, positions), previous_frame(batch, LAYOUT, positions)
    character = current_ids(batch, LAYOUT, positions, "character")
    k, p = batch.floats.shape[1], batch.num_positions
    cut = pred.at(slice(k - p + positions.start, k - p + positions.stop))
    decoded = codec.decode(cut, targets, codec.position_prior(targets, previous, character))
    expected = table.predict(targets, previous, character)
    xy = LAYOUT.position_offsets
    group = LAYOUT.position_group
    torch.testing.assert_close(decoded.floats[group][..., xy], expected.floats[group][..., xy], atol=1e-6, rtol=0)
    robust = robust_constant_velocity(targets, previous, LAYOUT).floats[group][..., xy]
    assert (robust - expected.floats[group][..., xy]).abs().max() > 1e-3  # the table moves off robust cv
