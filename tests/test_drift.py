"""Training against drift: context noise and self-forcing (melee_wm/training/drift.py)."""

from __future__ import annotations

import pytest
import torch

from melee_wm.data.dataset import MeleeDataset
from melee_wm.frames.frame import true_next_frame
from melee_wm.frames.table import TableBaseline
from melee_wm.frames.targets import target_statistics
from melee_wm.training.compose import ConfigError, compose_train_config, to_container, train_config_from_dict
from melee_wm.training.config import ContextNoiseConfig, DriftConfig, SelfForcingConfig
from melee_wm.training.drift import DriftTraining, add_context_noise, self_forcing_loss
from melee_wm.training.module import WorldModelModule


def config(store, *extra: str):
    overrides = [
        "experiment=smoke",
        f"data.store={store.path}",
        "data.context_len=10",
        "objective.zero_init_output=false",
    ]
    return train_config_from_dict(compose_train_config([*overrides, *extra]))


@pytest.fixture(scope="module")
def module_and_batch(sample_store):
    cfg = config(sample_store)
    train_set = MeleeDataset.from_store(sample_store, "train", cfg.data)
    stats = target_statistics(train_set, cfg.objective.position_parameterization)
    torch.manual_seed(0)
    module = WorldModelModule(to_container(cfg), stats.to_dict(), TableBaseline.fit(train_set))
    batch = train_set.get_batch(torch.linspace(0, len(train_set) - 1, 16).long())
    return module, batch


def gradients(module: WorldModelModule, loss: torch.Tensor) -> torch.Tensor:
    module.zero_grad()
    loss.backward()
    return torch.cat([p.grad.flatten() for p in module.net.parameters() if p.grad is not None])


def test_context_noise_perturbs_inputs_not_the_true_next_frame(module_and_batch):
    module, batch = module_and_batch
    layout = module.layout
    noisy = add_context_noise(batch, layout, ContextNoiseConfig(std=0.01))
    for g in ("continuous", "velocity", "dynamics"):
        cols = layout.float_slice(g)
        assert not torch.equal(noisy.floats[..., cols], batch.floats[..., cols])
    for g in ("binary", "controller"):
        cols = layout.float_slice(g)
        assert torch.equal(noisy.floats[..., cols], batch.floats[..., cols])
    assert torch.equal(noisy.next_ctrl, batch.next_ctrl)
    clean, perturbed = true_next_frame(batch.targets, layout), true_next_frame(noisy.targets, layout)
    for g in clean.floats:
        assert torch.allclose(clean.floats[g], perturbed.floats[g], atol=1e-6), g
    assert add_context_noise(batch, layout, ContextNoiseConfig()) is batch  # std 0: off

    torch.manual_seed(1)
    with_noise = gradients(module, module.forward_loss(noisy).total)
    without = gradients(module, module.forward_loss(batch).total)
    assert torch.isfinite(with_noise).all() and not torch.allclose(with_noise, without)


@pytest.mark.parametrize("steps", [1, 2, 3])
@pytest.mark.parametrize("detach", [True, False])
def test_self_forcing_losses_are_finite_and_change_the_gradients(module_and_batch, steps, detach):
    module, batch = module_and_batch
    cfg = SelfForcingConfig(share=1.0, steps=[steps], detach_feedback=detach, feed_back_categorical=steps != 2)
    teacher = module.forward_loss(batch).total
    forced = self_forcing_loss(module.net, module.codec, module.loss_fn, batch, steps, cfg)
    assert torch.isfinite(forced.total) and all(torch.isfinite(v) for v in forced.terms.values())
    base = gradients(module, module.forward_loss(batch).total)
    both = gradients(module, teacher + forced.total)
    assert torch.isfinite(both).all() and not torch.allclose(both, base)


def test_share_and_curriculum():
    drift = DriftTraining(
        DriftConfig(self_forcing=SelfForcingConfig(share=0.25, steps=[1, 2, 3], epochs_per_stage=2)), None
    )
    assert sum(drift.selects(i) for i in range(100)) == 25
    assert [drift.steps_at(e) for e in range(8)] == [1, 1, 2, 2, 3, 3, 3, 3]
    off = DriftTraining(DriftConfig(), None)
    assert not any(off.selects(i) for i in range(100))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["drift.self_forcing.share=0.5", "drift.self_forcing.steps=[9]"], "drift.self_forcing.steps"),
        (["drift.self_forcing.share=1.5"], "drift.self_forcing.share"),
        (["drift.context_noise.groups=[controller]"], "drift.context_noise.groups"),
        (["drift.context_noise.std=-1"], "drift.context_noise.std"),
        (["drift.context_nois.std=1"], "context_nois"),
        (["rollout.horizon=0"], "rollout.horizon"),
    ],
)
def test_drift_and_rollout_config_errors_name_the_key(sample_store, overrides, message):
    with pytest.raises(ConfigError, match=message):
        config(sample_store, *overrides)
