"""Rollout evaluation: frame reconstruction, recurrent rollout, baselines, physical checks, the callback and
`melee-wm eval`, on the sample replays."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from melee_wm.cli import main
from melee_wm.data.batch import build_batch
from melee_wm.data.config import DataConfig
from melee_wm.data.dataset import MeleeDataset
from melee_wm.encoding.layout import NUM_PLAYERS, STAGE_FIELD, Layout
from melee_wm.eval.constraints import physical_violations
from melee_wm.eval.rollout import constant_velocity_rollout, persistence_rollout, rollout, rollout_by_rerun
from melee_wm.eval.rollout_eval import BASELINES, rollout_windows, score_frames
from melee_wm.frames.reconstruct import advance_state_age, reconstruct_frame
from melee_wm.frames.targets import RESIDUAL, TargetCodec, target_statistics
from melee_wm.game.stages import STAGES, is_dead_action, outside_blast_zone, stage_table
from melee_wm.model.build import build_model
from melee_wm.model.config import ModelConfig, load_model_config
from melee_wm.model.heads import Prediction
from melee_wm.paths import config_dir
from melee_wm.training.compose import compose_train_config
from melee_wm.training.run import train

CONTEXT, HORIZON = 10, 12


@pytest.fixture(scope="module")
def layout(sample_store) -> Layout:
    return sample_store.layout


@pytest.fixture(scope="module")
def codecs(sample_store, layout) -> dict[str, TargetCodec]:
    train_set = MeleeDataset.from_store(sample_store, "train", DataConfig(context_len=CONTEXT))
    return {p: TargetCodec(layout, target_statistics(train_set, p), p) for p in ("delta", RESIDUAL)}


@pytest.fixture(scope="module")
def windows(sample_store):
    """(floats, ints, games) of 24 windows of CONTEXT + HORIZON frames spread over every sample game."""
    data = rollout_windows(sample_store, "all", DataConfig(), sample_store.config, CONTEXT, HORIZON)
    idx = torch.linspace(0, len(data) - 1, 24).long()
    floats, ints = data.gather(idx)
    _, games = data.window_games(idx)
    return floats, ints, data.game_valid_floats[games], data.game_valid_ints[games]


class Oracle(torch.nn.Module):
    """A `WorldModelInterface` model that outputs the true next frame of known windows (B, T, ...): the
    standardized true targets, binary logits of +-20, one-hot categorical logits. Its state is the position."""

    def __init__(self, codec: TargetCodec, floats: torch.Tensor, ints: torch.Tensor) -> None:
        super().__init__()
        layout = codec.layout
        batch = build_batch(floats, ints, layout, floats.shape[1] - 1)
        cont = floats[..., layout.float_slice("continuous")]
        prev_delta = torch.cat([torch.zeros_like(cont[:, :1]), cont[:, 1:-1] - cont[:, :-2]], 1)
        self.out = codec.encode(batch.targets, prev_delta if codec.parameterization == RESIDUAL else None)
        self.out["binary"] = (batch.targets.floats["binary"] * 2 - 1) * 20
        self.cat = {f: F.one_hot(v, layout.int_vocab(f)).float() * 20 for f, v in batch.targets.categorical.items()}

    def _at(self, lo: int, hi: int) -> Prediction:
        return Prediction({g: v[:, lo:hi] for g, v in self.out.items()}, {f: v[:, lo:hi] for f, v in self.cat.items()})

    def forward(self, floats, ints, next_ctrl, state=None, need_state=True, valid=None, valid_ints=None):
        start = 0 if state is None else state
        return self._at(start, start + floats.shape[1]), start + floats.shape[1]

    def step(self, floats_t, ints_t, next_ctrl_t, state, inplace=False):
        return self._at(state, state + 1).at(0), state + 1


@pytest.mark.parametrize("parameterization", ["delta", RESIDUAL])
def test_oracle_rollout_has_zero_error_at_every_horizon(parameterization, codecs, layout, windows):
    floats, ints, valid_f, valid_i = windows
    codec = codecs[parameterization]
    pred_f, pred_i = rollout(Oracle(codec, floats, ints), codec, floats, ints, CONTEXT)
    sums = score_frames(
        layout,
        pred_f,
        pred_i,
        floats[:, CONTEXT:],
        ints[:, CONTEXT:],
        floats[:, CONTEXT - 1],
        ints[:, CONTEXT - 1],
        valid_f,
        valid_i,
    )
    for metric in ("pos_mae", "vel_mae", "percent_mae"):
        assert max(sums.per_horizon(metric)) < 1e-3, metric
    assert sums.per_horizon("action_acc") == [1.0] * HORIZON
    assert sums.over("change_acc", 1, HORIZON) == 1.0
    assert torch.equal(pred_i, ints[:, CONTEXT:].to(pred_i.dtype))  # categoricals, character and stage


def test_reconstruction_advances_state_age_by_rule(codecs, layout, windows):
    floats, ints, _, _ = windows
    codec = codecs[RESIDUAL]
    oracle = Oracle(codec, floats, ints)
    t = CONTEXT
    next_f, next_i = reconstruct_frame(
        oracle(floats, ints, None)[0].at(t),
        codec,
        floats[:, t],
        ints[:, t],
        (floats[:, t - 1], ints[:, t - 1]),
        floats[:, t + 1, layout.float_slice("controller")],
    )
    act, scale = layout.int_slice("action"), layout.cfg.state_age_scale
    ages = next_f[:, [layout.player_float_index(p, "state_age") for p in range(NUM_PLAYERS)]]
    changed = next_i[:, act] != ints[:, t, act]
    assert changed.any() and (~changed).any()
    assert torch.equal(ages[changed], torch.zeros_like(ages[changed]))
    current = floats[:, t, [layout.player_float_index(p, "state_age") for p in range(NUM_PLAYERS)]]
    assert torch.allclose(ages[~changed], current[~changed] + scale)
    assert torch.equal(next_f[:, layout.float_slice("controller")], floats[:, t + 1, layout.float_slice("controller")])
    # Hand-made: player 0 changes action, player 1 keeps it.
    f0 = torch.zeros(1, layout.num_floats)
    f0[0, layout.player_float_index(0, "state_age")] = 0.05
    f0[0, layout.player_float_index(1, "state_age")] = 0.07
    i0 = torch.zeros(1, layout.num_ints, dtype=torch.int16)
    i1 = i0.clone()
    i1[0, layout.int_index("p0.action")] = 14
    assert torch.allclose(advance_state_age(layout, f0, i0, i1), torch.tensor([[0.0, 0.07 + scale]]))


def tiny_models(layout: Layout) -> dict[str, torch.nn.Module]:
    tiny = load_model_config(config_dir() / "model" / "tiny.yaml")
    mlp = ModelConfig(arch="mlp", d_model=32, embed_dim=4, head_hidden=32, mlp_frames=4, mlp_hidden=[48])
    return {"mamba2": build_model(tiny, layout, CONTEXT), "mlp": build_model(mlp, layout, CONTEXT)}


@pytest.mark.parametrize("arch", ["mamba2", "mlp"])
def test_recurrent_rollout_equals_rerunning_the_window(arch, codecs, layout, windows):
    torch.manual_seed(0)
    net = tiny_models(layout)[arch].double().eval()
    floats, ints, valid_f, valid_i = windows
    floats = floats[::4].double()
    valid = {"valid": valid_f[::4], "valid_ints": valid_i[::4]}
    assert not valid["valid"].all()  # some starts lie in games of old replay formats: the indicators are on
    codec = codecs[RESIDUAL]
    fast_f, fast_i = rollout(net, codec, floats, ints[::4], CONTEXT, **valid)
    slow_f, slow_i = rollout_by_rerun(net, codec, floats, ints[::4], CONTEXT, **valid)
    assert fast_f.shape == (6, HORIZON, layout.num_floats)
    assert torch.equal(fast_i, slow_i)
    assert torch.allclose(fast_f, slow_f, atol=1e-5)
    assert not torch.allclose(fast_f, floats[:, CONTEXT:], atol=1e-3)  # it did predict something


def hand_made(layout: Layout) -> tuple[torch.Tensor, torch.Tensor]:
    """One window, context 3, horizon 5: p0.x = 0, 1, 3, 6, 10, 15, 21, 28 game units (everything else 0); p0's
    action 14 until the truth's second predicted frame, then 20; p1 still."""
    floats = torch.zeros(1, 8, layout.num_floats)
    floats[0, :, layout.player_float_index(0, "x")] = torch.tensor([0, 1, 3, 6, 10, 15, 21, 28]) * 0.01
    ints = torch.zeros(1, 8, layout.num_ints, dtype=torch.int16)
    ints[0, :, layout.int_index("p0.action")] = torch.tensor([14, 14, 14, 14, 20, 20, 20, 20])
    return floats, ints


def test_baselines_on_a_hand_made_sequence(layout):
    floats, ints = hand_made(layout)
    xy = torch.tensor(layout.position_columns)
    valid_f, valid_i = torch.ones(1, layout.num_floats, dtype=bool), torch.ones(1, layout.num_ints, dtype=bool)
    true_f, true_i, last_f, last_i = floats[:, 3:], ints[:, 3:], floats[:, 2], ints[:, 2]
    pers = score_frames(layout, *persistence_rollout(floats, ints, 3), true_f, true_i, last_f, last_i, valid_f, valid_i)
    cv_f, cv_i = constant_velocity_rollout(floats, ints, 3, xy)
    assert torch.allclose(cv_f[0, :, xy[0]] / 0.01, torch.tensor([5.0, 7, 9, 11, 13]))
    cv = score_frames(layout, cv_f, cv_i, true_f, true_i, last_f, last_i, valid_f, valid_i)
    # x errors: persistence 3, 7, 12, 18, 25; constant velocity 1, 3, 6, 10, 15; four coordinates per frame.
    assert np.allclose(pers.per_horizon("pos_mae"), [3 / 4, 7 / 4, 12 / 4, 18 / 4, 25 / 4], atol=1e-4)
    assert np.allclose(cv.per_horizon("pos_mae"), [1 / 4, 3 / 4, 6 / 4, 10 / 4, 15 / 4], atol=1e-4)
    assert pers.over("pos_mae", 1, 5) == pytest.approx(65 / 20, abs=1e-4)
    assert cv.over("pos_mae", 1, 5) == pytest.approx(35 / 20, abs=1e-4)
    assert pers.per_horizon("action_acc") == [1.0, 0.5, 0.5, 0.5, 0.5]
    assert pers.over("change_acc", 1, 5) == 0.0 and pers.counts["change_acc"].sum() == 4


def test_physical_violations_on_hand_made_frames(layout):
    def frame(x: float, y: float, action: int = 14, stocks: float = 4, on_ground: float = 0.0):
        f = torch.zeros(1, 1, layout.num_floats)
        for p in range(NUM_PLAYERS):
            f[..., layout.player_float_index(p, "stocks")] = stocks * layout.cfg.stocks_scale
        f[..., layout.player_float_index(0, "x")] = x * 0.01
        f[..., layout.player_float_index(0, "y")] = y * 0.01
        f[..., layout.player_float_index(0, "on_ground")] = on_ground
        i = torch.zeros(1, 1, layout.num_ints, dtype=torch.int16)
        i[..., layout.int_index(STAGE_FIELD)] = 32  # Final Destination: x +-246, top 188, bottom -140
        i[..., layout.int_index("p0.action")] = action
        return f, i

    last = frame(0.0, 0.0)[0][:, 0]
    valid = torch.ones(1, layout.num_floats, dtype=bool)

    def count(kind: str, **kwargs) -> float:
        return physical_violations(layout, *frame(**kwargs), last, valid)[kind][0].item()

    assert count("outside_blast_zone", x=250.0, y=0.0) == 1
    assert count("outside_blast_zone", x=-240.0, y=180.0) == 0
    assert count("outside_blast_zone", x=0.0, y=-141.0) == 1
    assert count("outside_blast_zone", x=250.0, y=0.0, action=2) == 0  # DeadRight
    assert count("outside_blast_zone", x=250.0, y=0.0, stocks=3) == 0  # the stock was lost
    assert count("ground_above_platforms", x=0.0, y=50.0, on_ground=1.0) == 1
    assert count("ground_above_platforms", x=0.0, y=10.0, on_ground=1.0) == 0
    assert count("stocks_increase", x=0.0, y=0.0, stocks=5) == 2  # both players
    assert count("stocks_increase", x=0.0, y=0.0) == 0


def test_blast_zones_hold_on_every_sample_game(sample_store, layout):
    """Every real position lies inside its stage's blast zone, except while the character is dead or dying
    (Dead* actions, from ~130 frames before a stock loss to 60 frames after it); every stage we have a replay of is
    in the table, and the zones are tight: a character whose stock is taken is at most 8 units past the zone."""
    data = MeleeDataset.from_store(sample_store, "all", DataConfig(context_len=1))
    table = stage_table(layout.int_vocab(STAGE_FIELD))
    cfg = layout.cfg
    seen = set()
    for game in range(data.num_games):
        shard, start, length = (int(t[game]) for t in (data.game_shard, data.game_start, data.game_length))
        floats, ints = (a[start : start + length] for a in data.shards[shard])
        stage = int(ints[0, layout.int_index(STAGE_FIELD)])
        assert stage in STAGES
        seen.add(stage)
        v = physical_violations(
            layout,
            floats[1:, None],
            ints[1:, None],
            floats[:-1],
            data.game_valid_floats[game : game + 1].expand(length - 1, -1),
        )
        assert all(c == 0 for c, _ in (t.tolist() for t in v.values())), (stage, v)
        for p in range(NUM_PLAYERS):
            x, y = (floats[:, layout.player_float_index(p, c)] / cfg.position_scale for c in ("x", "y"))
            stocks = torch.round(floats[:, layout.player_float_index(p, "stocks")] / cfg.stocks_scale)
            action = ints[:, layout.int_index(f"p{p}.action")].long()
            out = outside_blast_zone(x, y, table[stage]).nonzero().squeeze(1)
            drops = ((stocks[1:] < stocks[:-1]).nonzero().squeeze(1) + 1).tolist()
            assert is_dead_action(action[out]).all()
            for k in out.tolist():
                assert any(-60 <= d - k <= 140 for d in drops), (stage, p, k, drops)
            zone = STAGES[stage]
            for d in drops:
                if int(action[d]) in (0, 1, 2):  # blown off the bottom, left or right side
                    over = max(zone.left - x[d], x[d] - zone.right, zone.bottom - y[d])
                    assert 0 < over < 8, (stage, p, d, float(over))
    assert seen == {2, 3, 8, 31, 32}


# Training with the callback, then `melee-wm eval` on the same checkpoint -------------------------------------


@pytest.fixture(scope="module")
def rollout_run(sample_store, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rollout_run")
    cfg = compose_train_config(
        [
            "experiment=smoke",
            f"data.store={sample_store.path}",
            "data.from_samples=false",
            f"paths.runs_dir={tmp / 'runs'}",
            "run_name=rollout",
            "trainer.limit_train_batches=4",
            "trainer.limit_val_batches=2",
            "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false",
            "logger=none",
            "rollout.enabled=true",
            "rollout.samples=16",
            "rollout.horizon=10",
            "rollout.pictures=false",
            "checkpoint.monitor=rollout/pos_mae_h1_5",
            "drift.self_forcing.share=0.5",
            "drift.context_noise.std=0.01",
        ]
    )
    return train(cfg), tmp / "runs" / "rollout"


@pytest.mark.slow
def test_callback_metric_picks_best_and_equals_the_cli(rollout_run, sample_store, tmp_path, capsys):
    metrics, run_dir = rollout_run
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert (run_dir / "rollout" / "epoch=000" / "eval_rollout.json").is_file()
    assert "train/loss_self_forced" in metrics and "rollout/constant_velocity/pos_mae_h1_5" in metrics
    out = tmp_path / "eval"
    argv = ["eval", str(run_dir / "checkpoints" / "last.ckpt"), "--store", str(sample_store.path)]
    assert main([*argv, "--horizon", "10", "--samples", "16", "--seed", "42", "--out", str(out)]) == 0
    assert "pos_mae_h1_5" in capsys.readouterr().out
    for name in ("eval_rollout.json", "rollout_error.png", "rollout_trajectories.png", "rollout.gif"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "eval_rollout.json").read_text())
    assert report["split"] == "val" and report["starts"] == 16 and report["same_games_as_training_store"] is True
    for key in ("pos_mae_h1_5", "pos_mae_h1_10", "action_acc_h1_10", "vel_mae_h1_5"):
        entry = report["summaries"][key]
        assert entry["model"] == pytest.approx(metrics[f"rollout/{key}"], rel=1e-5)
        assert entry["constant_velocity"] == pytest.approx(metrics[f"rollout/constant_velocity/{key}"], rel=1e-5)
        assert entry["ratio_model_over_persistence"] == pytest.approx(entry["model"] / entry["persistence"])
    assert set(report["violations"]["outside_blast_zone"]) == {"model", *BASELINES, "true"}  # the table travels
    every = tmp_path / "every"
    assert main([*argv, "--horizon", "5", "--samples", "8", "--all-games", "--out", str(every)]) == 0
    report = json.loads((every / "eval_rollout.json").read_text())
    assert report["split"] == "all" and report["games"] == 6 and "pos_mae_h1_10" not in report["summaries"]


@pytest.mark.slow
def test_cli_eval_errors(rollout_run, sample_store, tmp_path, capsys):
    _, run_dir = rollout_run
    last = run_dir / "checkpoints" / "last.ckpt"
    store = str(sample_store.path)

    def fails(*argv: str) -> str:
        assert main(["eval", *argv]) == 1
        return capsys.readouterr().err

    assert "does not exist" in fails(str(tmp_path / "none.ckpt"), "--store", store)
    assert "no manifest.json" in fails(str(last), "--store", str(tmp_path / "no_store"))
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    assert "not a readable checkpoint: not a zip archive" in fails(str(junk), "--store", store)
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": 1.0}}, other)
    assert "not a world-model checkpoint" in fails(str(other), "--store", store)
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["config"]["encoding"]["position_scale"] = 0.02
    changed = tmp_path / "changed.ckpt"
    torch.save(ckpt, changed)
    assert "position_scale" in fails(str(changed), "--store", store)
