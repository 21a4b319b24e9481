"""FrameMetrics on hand-made frames with hand-computed numbers; baselines and action categories on real replays."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from melee_wm.data.batch import ColumnMask, build_batch
from melee_wm.data.config import DataConfig
from melee_wm.data.dataset import MeleeDataset
from melee_wm.encoding.config import EncodingConfig
from melee_wm.encoding.layout import Layout
from melee_wm.encoding.missing import invalid_columns
from melee_wm.eval.action_categories import CATEGORY_NAMES, category_of
from melee_wm.eval.baselines import score_baselines
from melee_wm.eval.frame_metrics import FrameMetrics
from melee_wm.frames.frame import (
    NextFrame,
    constant_velocity,
    current_frame,
    persistence,
    positions_with_previous,
    previous_frame,
    select_positions,
    true_next_frame,
)

LAYOUT = Layout(EncodingConfig())


def zeros(*shape: int) -> NextFrame:
    """A NextFrame of zeros, (*shape, width) per group."""
    return NextFrame(
        floats={
            g: torch.zeros(*shape, LAYOUT.float_slice(g).stop - LAYOUT.float_slice(g).start)
            for g in LAYOUT.target_float_groups
        },
        categorical={f: torch.zeros(*shape, 2, dtype=torch.long) for f in LAYOUT.categorical_targets},
    )


def col(group: str, name: str) -> int:
    """Position of float column `name` inside its group's slice."""
    return LAYOUT.float_index(name) - LAYOUT.float_slice(group).start


def actions(frame: NextFrame, ids: list) -> NextFrame:
    frame.categorical["action"] = torch.tensor(ids)
    return frame


@pytest.mark.filterwarnings("ignore:The ``compute`` method")  # compute after reset
def test_change_and_action_accuracy_micro_over_updates_of_different_sizes():
    m = FrameMetrics(LAYOUT)
    # Update 1, (B=1, P=2): p0 changes 14 -> 20 at position 0 (predicted); p1 changes 14 -> 44 at 1 (missed).
    current = actions(zeros(1, 2), [[[14, 14], [14, 14]]])
    true = actions(zeros(1, 2), [[[20, 14], [14, 44]]])
    pred = actions(zeros(1, 2), [[[20, 50], [14, 14]]])
    m.update(pred, true, current)
    # Update 2, (B=3, P=1): every action changes 0 -> 1, 2, 3; p0 gets the first right, p1 the last.
    current = actions(zeros(3, 1), [[[0, 0]], [[0, 0]], [[0, 0]]])
    true = actions(zeros(3, 1), [[[1, 1]], [[2, 2]], [[3, 3]]])
    pred = actions(zeros(3, 1), [[[1, 0]], [[0, 0]], [[0, 3]]])
    m.update(pred, true, current)
    out = m.compute()
    assert out["change_acc/p0"] == pytest.approx(2 / 4)
    assert out["change_acc/p1"] == pytest.approx(1 / 4)
    assert out["change_acc/all"] == pytest.approx(3 / 8) != pytest.approx((1 / 2 + 2 / 6) / 2)  # not batch means
    assert out["action_acc/p0"] == pytest.approx(3 / 5)
    assert out["action_acc/p1"] == pytest.approx(1 / 5)
    assert out["action_acc/all"] == pytest.approx(4 / 10)
    # Categories of the TRUE next action: 20 movement (1/1), 14 idle (1/2), 44 ground_attack (0/1), 1-3 other (2/6).
    expected = {"movement": 1.0, "idle": 1 / 2, "ground_attack": 0.0, "other": 2 / 6}
    for name in CATEGORY_NAMES:
        value = out[f"action_cat_acc/{name}"]
        assert value == pytest.approx(expected[name]) if name in expected else math.isnan(value), name
    m.reset()
    assert math.isnan(m.compute()["change_acc/all"]) and math.isnan(m.compute()["action_acc/all"])


def test_float_errors_in_game_units():
    m = FrameMetrics(LAYOUT)  # scales: position 0.01, percent 0.01, velocity 0.1
    true, pred = zeros(2, 1), zeros(2, 1)
    pred.floats["continuous"][:, 0, col("continuous", "p0.x")] = 0.03  # 3 units off, both windows
    pred.floats["continuous"][1, 0, col("continuous", "p1.y")] = -0.01  # 1 unit off, window 1
    pred.floats["continuous"][0, 0, col("continuous", "p0.percent")] = 0.05  # 5 % off
    pred.floats["velocity"][0, 0, col("velocity", "p1.vel_self_y")] = 0.2  # 2 units per frame off
    m.update(pred, true, true)
    out = m.compute()
    assert out["pos_mae/p0"] == pytest.approx(6 / 4)
    assert out["pos_mae/p1"] == pytest.approx(1 / 4)
    assert out["pos_mae/all"] == pytest.approx(7 / 8)
    assert out["percent_mae"] == pytest.approx(5 / 4)  # 2 windows x 2 players
    assert out["velocity_mae"] == pytest.approx(2 / 20)  # 2 windows x 2 players x 5 fields


def test_binary_accuracy_and_flip_accuracy():
    m = FrameMetrics(LAYOUT)
    current, true, pred = zeros(1, 2), zeros(1, 2), zeros(1, 2)
    width = true.floats["binary"].shape[-1]
    true.floats["binary"][0, 0, [0, 1]] = 1.0  # two bits flip at position 0
    true.floats["binary"][0, 1, 0] = 1.0  # one at position 1
    pred.floats["binary"][0, 0, 0] = 0.7  # a probability past 0.5 reads 1: right
    pred.floats["binary"][0, 1, 5] = 1.0  # a bit that does not flip, predicted to: wrong, not a flip entry
    m.update(pred, true, current)
    out = m.compute()
    assert out["binary_acc"] == pytest.approx((2 * width - 3) / (2 * width))
    assert out["binary_flip_acc"] == pytest.approx(1 / 3)
    still = FrameMetrics(LAYOUT)
    still.update(current, true, current)  # persistence never predicts a flip
    assert still.compute()["binary_flip_acc"] == 0.0 and still.compute()["binary_acc"] == (2 * width - 3) / (2 * width)


def test_masked_entries_leave_every_sum_and_count():
    current, true, pred = zeros(2, 1), zeros(2, 1), zeros(2, 1)
    true.categorical["action"][:, 0, 0] = 20  # p0 changes action in both windows
    pred.categorical["action"][0, 0, 0] = 20  # right in window 0, wrong in window 1
    pred.floats["velocity"][1] = 0.5  # every velocity of window 1 off
    pred.floats["binary"][1, 0, col("binary", "p0.on_ground")] = 1.0  # window 1's on_ground wrong
    pred.floats["continuous"][1, 0, col("continuous", "p1.x")] = 0.02  # window 1's position off
    # Window 1's game lacks the velocity fields and `airborne` (-> on_ground); its actions are masked too.
    float_invalid, int_invalid = invalid_columns(
        LAYOUT, ["airborne", "vel_self_x_air", "vel_self_y", "vel_knockback_x", "vel_knockback_y", "vel_self_x_ground"]
    )
    float_valid = torch.stack([torch.ones_like(float_invalid), ~float_invalid])
    int_valid = torch.stack([torch.ones_like(int_invalid), ~int_invalid])
    valid = ColumnMask.from_columns(LAYOUT, float_valid, int_valid)
    valid.categorical["action"] = torch.tensor([True, False]).reshape(2, 1, 1).expand(2, 1, 2)
    valid.floats["continuous"] = valid.floats["continuous"].clone()
    valid.floats["continuous"][1, 0, col("continuous", "p1.x")] = False
    m = FrameMetrics(LAYOUT)
    m.update(pred, true, current, valid)
    out = m.compute()
    assert out["change_acc/p0"] == 1.0 and out["action_acc/all"] == 1.0  # window 1's actions not counted
    assert out["velocity_mae"] == 0.0 and int(m.velocity.count) == 10  # only window 0's 2 x 5 entries
    width = true.floats["binary"].shape[-1]
    assert out["binary_acc"] == 1.0 and int(m.binary.count) == 2 * width - 2  # on_ground of both players out
    # Window 1's p1.x is masked: p1's x and y of that window are out, p0's stay (2 + 2 + 2 coordinates counted).
    assert out["pos_mae/all"] == 0.0 and m.position.count.tolist() == [4, 2]
    unmasked = FrameMetrics(LAYOUT)
    unmasked.update(pred, true, current)
    assert unmasked.compute()["velocity_mae"] > 0 and unmasked.compute()["change_acc/p0"] == 0.5


def window(k: int) -> torch.Tensor:
    """(1, k + 1, num_floats) frames: p0.x goes 0, 1, 3, 6, 10, ...; p1.y 0, -2, -2, -1, 0; percent rises."""
    floats = torch.zeros(1, k + 1, LAYOUT.num_floats)
    floats[0, :, LAYOUT.float_index("p0.x")] = torch.tensor([0.0, 1, 3, 6, 10])[: k + 1]
    floats[0, :, LAYOUT.float_index("p1.y")] = torch.tensor([0.0, -2, -2, -1, 0])[: k + 1]
    floats[0, :, LAYOUT.float_index("p0.percent")] = torch.arange(k + 1.0)
    return floats


def test_constant_velocity_on_a_hand_made_sequence():
    k = 4
    ints = torch.zeros(1, k + 1, LAYOUT.num_ints, dtype=torch.int16)
    x, y, pct = (col("continuous", n) for n in ("p0.x", "p1.y", "p0.percent"))
    for p, expected_positions, x_pred, y_pred in (
        (k, slice(1, 4), [2.0, 5, 9], [-4.0, -2, 0]),
        (1, slice(0, 1), [9.0], [0.0]),
    ):
        batch = build_batch(window(k), ints, LAYOUT, p)
        positions = positions_with_previous(batch)
        assert positions == expected_positions
        targets = select_positions(batch.targets, positions)
        cv = constant_velocity(targets, previous_frame(batch, LAYOUT, positions).continuous, LAYOUT)
        assert cv.floats["continuous"][0, :, x].tolist() == x_pred  # x[t] + (x[t] - x[t-1])
        assert cv.floats["continuous"][0, :, y].tolist() == y_pred
        current = current_frame(targets)
        assert torch.equal(cv.floats["continuous"][..., pct], current.floats["continuous"][..., pct])  # persists
        assert true_next_frame(targets, LAYOUT).floats["continuous"][0, :, x].tolist() == [3.0, 6, 10][-len(x_pred) :]
        assert torch.equal(persistence(targets).floats["continuous"], targets.current_floats["continuous"])
    with pytest.raises(ValueError, match="t >= 1"):  # position 0 of P == K has no frame before it
        previous_frame(build_batch(window(k), ints, LAYOUT, k), LAYOUT, slice(0, k))


def test_category_table():
    table = category_of(400)
    names = [CATEGORY_NAMES[int(c)] for c in table[[0, 14, 20, 25, 44, 66, 80, 179, 212, 252, 341, 399]]]
    assert names == ["other", "idle", "movement", "aerial", "ground_attack", "aerial_attack", "damage",
                     "shield_dodge", "grab", "edge", "special", "special"]  # fmt: skip
    assert category_of(300).tolist() == table[:300].tolist()


def test_categories_of_real_frames_are_plausible(sample_store):
    layout = sample_store.layout
    table = category_of(layout.int_vocab("action"))
    ids = np.concatenate(
        [
            np.asarray(sample_store.game(g)[1][:, layout.int_slice("action")]).ravel()
            for g in range(sample_store.num_games)
        ]
    )
    counts = torch.bincount(table[torch.from_numpy(ids.astype(np.int64))], minlength=len(CATEGORY_NAMES))
    share = {name: round(float(c) / len(ids), 4) for name, c in zip(CATEGORY_NAMES, counts, strict=True)}
    assert all(share.values()), f"a category never occurs: {share}"
    assert share["idle"] > 0.1 and float(np.mean(ids == 14)) > 0.1, share  # Wait is the most common state
    assert share["other"] < 0.08, share
    # What is left over is mostly dead (0-10), the revival platform (12-13) and the entry (322-324).
    other = ids[table[torch.from_numpy(ids.astype(np.int64))].numpy() == CATEGORY_NAMES.index("other")]
    assert np.isin(other, [*range(11), 12, 13, 322, 323, 324]).mean() > 0.8, np.unique(other, return_counts=True)


@pytest.mark.slow
def test_baselines_on_the_real_store(sample_store):
    k = 30
    ds = MeleeDataset.from_store(sample_store.path, "all", DataConfig(context_len=k))
    scores = score_baselines(ds, batch_size=2048)
    persist, cv = scores["persistence"], scores["constant_velocity"]
    print({name: {m: round(v, 4) for m, v in s.items()} for name, s in scores.items()})
    for s in (persist, cv):
        assert s["change_acc/p0"] == s["change_acc/p1"] == s["change_acc/all"] == 0.0  # by construction
        assert s["binary_flip_acc"] == 0.0
    for key in ("pos_mae/p0", "pos_mae/p1", "pos_mae/all"):
        assert cv[key] < persist[key], (key, cv[key], persist[key])
    assert 0.1 < persist["pos_mae/all"] < 10 and cv["pos_mae/all"] < 0.5 * persist["pos_mae/all"]
    same = ("percent_mae", "velocity_mae", "binary_acc", "action_acc/all")
    assert all(cv[key] == persist[key] for key in same)  # only x and y differ between the baselines
    # Independent check with one position per window: window s scores the step from frame s+K-1 to s+K.
    single = score_baselines(
        MeleeDataset.from_store(sample_store.path, "all", DataConfig(context_len=k, multi_position=False))
    )
    errors = {"persistence": [], "constant_velocity": []}
    for g in range(sample_store.num_games):
        f = np.asarray(sample_store.game(g)[0], dtype=np.float64)
        xy = f[:, [sample_store.layout.float_index(n) for n in ("p0.x", "p0.y", "p1.x", "p1.y")]]
        errors["persistence"].append(np.abs(xy[k:] - xy[k - 1 : -1]))
        errors["constant_velocity"].append(np.abs(xy[k:] - (2 * xy[k - 1 : -1] - xy[k - 2 : -2])))
    for name, errs in errors.items():
        expected = np.concatenate(errs).mean() / sample_store.config.position_scale
        assert single[name]["pos_mae/all"] == pytest.approx(expected, rel=1e-5), name
