"""Missing-field indicators: the column groups a replay format can lack, their flags on the real sample games, and
the model contract (forward == step with indicators, all valid == no validity, the ablation switch)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from melee_wm.data.batch import Batch
from melee_wm.data.config import DataConfig
from melee_wm.data.dataset import MeleeDataset
from melee_wm.encoding.config import STATE_FLAG_BITS, EncodingConfig
from melee_wm.encoding.layout import Layout
from melee_wm.encoding.missing import MISSING_FIELD_COLUMNS, invalid_columns, missing_groups
from melee_wm.model.build import build_model
from melee_wm.model.config import ARCH_KEYS, ModelConfig, load_model_config
from melee_wm.model.heads import Prediction
from melee_wm.model.missing_inputs import MissingIndicators
from melee_wm.paths import config_dir

CONTEXT = 12
ARCHS = ("mamba2", "mlp")
FP32 = {"rtol": 1e-5, "atol": 1e-5}  # one float32 computation against another that orders its sums differently


def tiny(arch: str, **overrides) -> ModelConfig:
    """The `tiny` preset (for the MLP: its shared keys with a small frame stack)."""
    cfg = load_model_config(config_dir() / "model" / "tiny.yaml")
    if arch == "mlp":
        shared = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ARCH_KEYS["mamba2"]}
        cfg = ModelConfig(**{**shared, "arch": "mlp", "mlp_frames": 3, "mlp_hidden": [64]})
    return dataclasses.replace(cfg, **overrides)


def make(arch: str, layout: Layout, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(tiny(arch, **overrides), layout, CONTEXT).eval()


def flat(pred: Prediction) -> torch.Tensor:
    parts = [pred.floats[g] for g in sorted(pred.floats)]
    return torch.cat(parts + [pred.categorical[f].flatten(-2) for f in sorted(pred.categorical)], -1)


@pytest.fixture(scope="module")
def games(sample_store) -> tuple[MeleeDataset, Batch, list[list[str]]]:
    """The first window of every sample game, with each game's manifest `missing_fields`."""
    windows = MeleeDataset.from_store(sample_store, "all", DataConfig(context_len=CONTEXT))
    has_windows = (windows.window_offsets[1:] > windows.window_offsets[:-1]).nonzero().squeeze(1)
    missing = {g.md5: list(g.missing_fields) for g in sample_store.games}
    batch = windows.get_batch(windows.window_offsets[has_windows])
    return windows, batch, [missing[windows.md5s[g]] for g in has_windows.tolist()]


@pytest.mark.parametrize("flags", [EncodingConfig().state_flags, list(STATE_FLAG_BITS)])
def test_groups_partition_the_columns_a_format_can_lack(flags):
    """Each parsed field empties exactly the groups that name it; groups never share a column."""
    layout = Layout(EncodingConfig(state_flags=flags))
    groups = missing_groups(layout)
    float_cols = [c for g in groups for c in g.float_columns]
    int_cols = [c for g in groups for c in g.int_columns]
    assert len(set(float_cols)) == len(float_cols) and len(set(int_cols)) == len(int_cols)
    for parsed in MISSING_FIELD_COLUMNS:
        invalid_f, invalid_i = invalid_columns(layout, [parsed])
        emptied = [g for g in groups if parsed in g.sources]
        assert set(invalid_f.nonzero().squeeze(1).tolist()) == {c for g in emptied for c in g.float_columns}, parsed
        assert set(invalid_i.nonzero().squeeze(1).tolist()) == {c for g in emptied for c in g.int_columns}, parsed
    assert {g.name for g in groups} >= {"hitlag", "state_age", "misc_as+state_flags", "hurtbox_state", "ground"}


def test_indicators_flag_exactly_the_fields_each_sample_game_lacks(games):
    """On the real sample games (Slippi 1.0.0 to 3.15), a group is flagged iff the manifest names one of its
    sources among the game's missing fields."""
    windows, batch, missing_fields = games
    indicators = MissingIndicators(windows.layout, 4)
    flags = indicators.flags(batch.valid_floats, batch.valid_ints)
    groups = missing_groups(windows.layout)
    expected = torch.tensor([[bool(set(g.sources) & set(fields)) for g in groups] for fields in missing_fields])
    assert torch.equal(flags, expected)
    assert len({tuple(row) for row in expected.tolist()}) >= 3  # full formats, a 2.x and the 1.0.0 replay
    assert not expected.all(1).any() and (~expected).all(1).any()  # no game lacks everything, some lack nothing
    # Float validity alone flags every group with a float column; groups of int columns only need valid_ints.
    float_only = indicators.flags(batch.valid_floats)
    has_floats = torch.tensor([bool(g.float_columns) for g in groups])
    assert torch.equal(float_only[:, has_floats], expected[:, has_floats])
    assert not float_only[:, ~has_floats].any() and expected[:, ~has_floats].any()


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_equals_repeated_step_with_indicators(arch, games):
    """forward over real windows with their validity equals forward over the first frame then a step per frame
    (the state carries the indicators); the indicators change what an old-format window predicts."""
    windows, batch, missing_fields = games
    model = make(arch, windows.layout)
    valid = {"valid": batch.valid_floats, "valid_ints": batch.valid_ints}
    floats, ints, ctrl = batch.floats, batch.ints, batch.next_ctrl
    with torch.no_grad():
        whole, _ = model(floats, ints, ctrl, **valid)
        first, state = model(floats[:, :1], ints[:, :1], ctrl[:, :1], **valid)
        steps = [flat(first)[:, 0]]
        for t in range(1, CONTEXT):
            pred, state = model.step(floats[:, t], ints[:, t], ctrl[:, t], state)
            steps.append(flat(pred))
        unflagged, _ = model(floats, ints, ctrl)
    torch.testing.assert_close(torch.stack(steps, 1), flat(whole), **FP32)
    old = torch.tensor([bool(fields) for fields in missing_fields])
    moved = (flat(whole) - flat(unflagged)).abs().amax((1, 2))
    assert (moved[old] > 1e-3).all() and (moved[~old] < 1e-6).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_an_all_valid_window_equals_no_validity(arch, games):
    """Validity that marks every column valid gives the outputs and the carried steps of valid=None."""
    windows, batch, _ = games
    model = make(arch, windows.layout)
    floats, ints, ctrl = batch.floats, batch.ints, batch.next_ctrl
    every = {"valid": torch.ones_like(batch.valid_floats), "valid_ints": torch.ones_like(batch.valid_ints)}
    with torch.no_grad():
        a, state_a = model(floats[:, :-1], ints[:, :-1], ctrl[:, :-1], **every)
        b, state_b = model(floats[:, :-1], ints[:, :-1], ctrl[:, :-1])
        step_a, _ = model.step(floats[:, -1], ints[:, -1], ctrl[:, -1], state_a)
        step_b, _ = model.step(floats[:, -1], ints[:, -1], ctrl[:, -1], state_b)
        init_step, _ = model.step(floats[:, 0], ints[:, 0], ctrl[:, 0], model.init_state(floats.shape[0]))
        no_state, _ = model(floats[:, :1], ints[:, :1], ctrl[:, :1])
    torch.testing.assert_close(flat(a), flat(b), **FP32)
    torch.testing.assert_close(flat(step_a), flat(step_b), **FP32)
    torch.testing.assert_close(flat(init_step), flat(no_state)[:, 0], **FP32)  # init_state: every column valid


@pytest.mark.parametrize("arch", ARCHS)
def test_without_missing_inputs_the_validity_changes_nothing(arch, games):
    """`model.missing_inputs: false` (the ablation) has no indicator weights and ignores the validity."""
    windows, batch, _ = games
    off, on = make(arch, windows.layout, missing_inputs=False), make(arch, windows.layout)
    groups = len(missing_groups(windows.layout))
    assert off.missing is None and on.num_parameters() - off.num_parameters() == groups * on.missing.embed.out_features
    with torch.no_grad():
        a, _ = off(**batch.model_inputs())
        b, _ = off(batch.floats, batch.ints, batch.next_ctrl)
    assert torch.equal(flat(a), flat(b))
