"""Fields a game's replay format lacks are masked out of the loss and the target statistics."""

from __future__ import annotations

from melee_wm.data.config import DataConfig
from melee_wm.data.dataset import MeleeDataset
from melee_wm.frames.table import TableBaseline
from melee_wm.frames.targets import target_statistics
from melee_wm.training.compose import compose_train_config, to_container, train_config_from_dict
from melee_wm.training.module import WorldModelModule

# Loss masking ----------------------------------------------------------------------------------------------


def test_missing_fields_are_masked_out_of_the_loss(sample_store):
    """Windows of the Slippi 1.0.0 game carry defaults for velocities (among 13 fields): their velocity
    predictions get no gradient, while a complete game's do."""
    data = DataConfig(context_len=10, multi_position=True, val_fraction=0.0)
    windows = MeleeDataset.from_store(sample_store, "train", data)
    games = sample_store.games
    (old,) = [windows.md5s.index(g.md5) for g in games if g.slippi_version == "1.0.0"]
    assert "vel_self_x_air" in games[[g.md5 for g in games].index(windows.md5s[old])].missing_fields
    complete = next(windows.md5s.index(g.md5) for g in games if not g.missing_fields)
    first_old, first_new = int(windows.window_offsets[old]), int(windows.window_offsets[complete])
    batch = windows.get_batch([first_old, first_new])
    assert not batch.valid_floats[0, windows.layout.float_slice("velocity")].any()
    assert batch.valid_floats[1].all()
    cfg = train_config_from_dict(compose_train_config(["experiment=smoke", "data.context_len=10"]))
    stats = target_statistics(windows, cfg.objective.position_parameterization)
    module = WorldModelModule(to_container(cfg), stats.to_dict(), TableBaseline.fit(windows))
    module.net.heads.out.weight.data.normal_(0, 0.1)
    captured = {}
    original = module.net.heads.forward

    def keep(*args):
        pred = original(*args)
        pred.floats["velocity"].retain_grad()
        captured["pred"] = pred
        return pred

    module.net.heads.forward = keep
    module.forward_loss(batch).terms["velocity"].backward()
    grad = captured["pred"].floats["velocity"].grad
    assert grad[0].abs().max() == 0
    assert grad[1].abs().max() > 0


def test_target_statistics_skip_missing_fields(sample_store):
    windows = MeleeDataset.from_store(sample_store, "all", DataConfig(val_fraction=0.0))
    stats = target_statistics(windows, "delta")
    # Velocity deltas from the games that record them only: none of the scales is the floor value 1.
    assert all(0 < s < 1 for s in stats.scale["velocity"])
    fields = windows.layout.float_fields("velocity")
    assert stats.scale["velocity"][: len(fields)] == stats.scale["velocity"][len(fields) :]  # pooled players
