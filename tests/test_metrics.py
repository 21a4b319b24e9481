"""Metric math on hand-made tensors, and the persistence baseline on the real sample store."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from melee_wm.data.config import DataConfig
from melee_wm.data.dataset import MeleeDataset
from melee_wm.encoding.layout import Layout
from melee_wm.eval.baselines import score_baselines
from melee_wm.eval.metrics import ChangeAccuracy, PositionMAE


def test_change_accuracy_counts_change_frames_only_and_micro_averages():
    m = ChangeAccuracy()
    # Batch 1: 2 frames. p0 changes once (correct); p1 never changes (wrong predictions there do not count).
    current = torch.tensor([[1, 5], [1, 5]])
    target = torch.tensor([[2, 5], [1, 5]])
    pred = torch.tensor([[2, 9], [7, 9]])
    m.update(pred, target, current)
    # Batch 2: 3 frames, every action changes for p0 (1 of 3 right) and p1 (0 of 3 right).
    current = torch.tensor([[0, 0], [0, 0], [0, 0]])
    target = torch.tensor([[1, 1], [2, 2], [3, 3]])
    pred = torch.tensor([[1, 0], [0, 0], [0, 0]])
    m.update(pred, target, current)
    out = m.compute()
    assert out["p0"].item() == pytest.approx(2 / 4)  # (1 + 1) / (1 + 3)
    assert out["p1"].item() == pytest.approx(0 / 3)
    assert out["all"].item() == pytest.approx(2 / 7)  # micro: total correct / total change frames
    macro_batches = (1 / 1 + 1 / 6) / 2  # mean of per-batch accuracies: the inflated number we must not report
    macro_players = (2 / 4 + 0 / 3) / 2
    assert out["all"].item() != pytest.approx(macro_batches) and out["all"].item() != pytest.approx(macro_players)
    still = ChangeAccuracy()
    still.update(current, current, current)
    assert torch.isnan(still.compute()["all"])  # no change frame seen: undefined, not 0 or 1


def test_position_mae_in_game_units_micro_averaged():
    m = PositionMAE(position_scale=0.01)
    target = torch.zeros(1, 2, 2)
    m.update(torch.tensor([[[0.01, 0.0], [0.0, 0.0]]]), target)  # 1 game unit off on one coordinate of 4
    m.update(torch.full((3, 2, 2), 0.05), torch.zeros(3, 2, 2))  # 5 units off everywhere, 12 coordinates
    out = m.compute()
    assert out["p0"].item() == pytest.approx((1 + 5 * 6) / 8)
    assert out["p1"].item() == pytest.approx(5 * 6 / 8)
    assert out["all"].item() == pytest.approx((1 + 5 * 12) / 16)
    assert out["all"].item() != pytest.approx((0.25 + 5) / 2)  # not the mean of per-batch means
    with pytest.raises(ValueError, match="PositionMAE"):
        m.update(torch.zeros(3, 2), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="ChangeAccuracy"):
        ChangeAccuracy().update(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(4, 2))


def test_persistence_baseline_on_the_real_store(sample_store):
    k = 30
    ds = MeleeDataset.from_store(sample_store.path, "all", DataConfig(context_len=k, multi_position=False))
    scores = score_baselines(ds, batch_size=8192)["persistence"]
    # By construction: on a change frame the current action (persistence's prediction) is the wrong one.
    assert scores["change_acc/all"] == 0.0 and scores["change_acc/p0"] == 0.0 and scores["change_acc/p1"] == 0.0
    # Independent check: with P = 1, window s scores the step from frame s+K-1 to s+K, i.e. every step of a
    # game whose later frame is at index >= K.
    layout = Layout(sample_store.config)
    errors = {0: [], 1: []}
    for g in range(sample_store.num_games):
        f = np.asarray(sample_store.game(g)[0], dtype=np.float64)
        for p in (0, 1):
            xy = f[:, [layout.float_index(f"p{p}.x"), layout.float_index(f"p{p}.y")]]
            errors[p].append(np.abs(xy[k:] - xy[k - 1 : -1]).ravel())
    scale = sample_store.config.position_scale
    for p in (0, 1):
        assert scores[f"pos_mae/p{p}"] == pytest.approx(np.concatenate(errors[p]).mean() / scale, rel=1e-5)
    both = np.concatenate(errors[0] + errors[1]).mean() / scale
    assert scores["pos_mae/all"] == pytest.approx(both, rel=1e-5)
    assert 0.1 < scores["pos_mae/all"] < 10  # game units per frame: players do move, but not far
    multi_ds = MeleeDataset.from_store(sample_store.path, "all", DataConfig(context_len=k))
    multi = score_baselines(multi_ds, max_windows=4096)["persistence"]
    assert multi["change_acc/all"] == 0.0 and multi["pos_mae/all"] > 0
