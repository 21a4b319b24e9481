"""The Hydra config tree: every experiment and group composes, experiments inherit inside their group, and
every error names its key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from melee_wm.paths import config_dir
from melee_wm.training.compose import ConfigError, compose_train_config, train_config_from_dict

EXPERIMENTS = sorted(p.stem for p in (config_dir() / "experiment").glob("*.yaml"))


# Composition ---------------------------------------------------------------------------------------------


def test_every_experiment_and_group_composes():
    assert set(EXPERIMENTS) == {"smoke", "mamba2_base", "mamba2_large", "mlp_baseline"}
    for experiment in EXPERIMENTS:
        cfg = train_config_from_dict(compose_train_config([f"experiment={experiment}", "data.store=/some/store"]))
        assert cfg.name == experiment
        assert cfg.run_name.startswith(f"{experiment}_")
    base = train_config_from_dict(compose_train_config(["experiment=mamba2_base", "data.store=/s"]))
    assert (base.trainer.precision, base.data.batch_size, base.data.device_resident) == ("bf16-mixed", 512, True)
    assert base.model.backend == "auto" and base.trainer.accelerator == "gpu"
    for group in ("data", "model", "trainer", "logger", "debug"):
        for option in sorted(p.stem for p in (config_dir() / group).glob("*.yaml")):
            cfg = train_config_from_dict(compose_train_config([f"{group}={option}", "data.store=/s"]))
            assert cfg is not None
    mlp = train_config_from_dict(compose_train_config(["model=mlp"]))
    assert mlp.model.arch == "mlp"


def test_gpu_experiments_inherit_and_hold_their_model_and_learning_rate():
    """mamba2_large and mlp_baseline start from mamba2_base: only the model, the learning rate and the name
    differ. Its data settings hold with another data option too."""
    base, large, mlp = (
        train_config_from_dict(compose_train_config([f"experiment={e}", "data.store=/s", "run_name=r"]))
        for e in ("mamba2_base", "mamba2_large", "mlp_baseline")
    )
    for other in (large, mlp):
        assert (other.data, other.trainer, other.logger) == (base.data, base.trainer, base.logger)
    assert (large.model.d_model, large.optim.lr, mlp.model.arch) == (768, 6.0e-4, "mlp")
    assert base.data.batch_size == 512 and base.data.device_resident and base.data.store == "/s"
    samples = train_config_from_dict(compose_train_config(["experiment=mamba2_base", "data=samples"]))
    assert samples.data.device_resident and samples.data.swap_players_p == 0.5 and samples.data.from_samples


def test_debug_group_fits_any_experiment_on_the_cpu():
    cfg = train_config_from_dict(compose_train_config(["experiment=mamba2_base", "debug=cpu_tiny"]))
    assert (cfg.trainer.accelerator, cfg.trainer.precision, cfg.model.d_model) == ("cpu", "32-true", 32)
    assert (cfg.trainer.max_epochs, cfg.trainer.limit_train_batches, cfg.logger.loggers) == (1, 3, [])


def test_experiment_values_override_the_primary_config(smoke_config):
    """`_self_` comes first in conf/train.yaml: an experiment's values win over the root's."""
    smoke = smoke_config
    assert smoke.name == "smoke" and smoke.model.d_model == 64 and smoke.data.val_fraction == 0.2  # not the group's 0.5
    assert smoke.data.split == "tail"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["experiment=smok"], "experiment/smok"),
        (["model.not_a_key=1"], "not_a_key"),
        (["+model.not_a_key=1"], "not_a_key"),
        (["++not_a_key=1"], "not_a_key"),
        (["+objective.weights.not_a_group=2.0"], "not_a_group"),
        (["trainer.max_epochs=many"], "trainer.max_epochs"),
        (["model.headdim=7"], "headdim"),
        (["trainer.precision=fp8"], "precision"),
        (["logger.loggers=[tensorboard]"], "tensorboard"),
        (["objective.position_parameterization=accel"], "position_parameterization"),
    ],
)
def test_config_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        train_config_from_dict(compose_train_config(overrides))


def _conf_copy(tmp_path: Path) -> Path:
    conf = tmp_path / "conf"
    shutil.copytree(config_dir(), conf)
    return conf


def test_unknown_key_in_a_yaml_file_is_an_error(tmp_path):
    conf = _conf_copy(tmp_path)
    (conf / "model" / "tiny.yaml").write_text((conf / "model" / "tiny.yaml").read_text() + "d_modle: 64\n")
    with pytest.raises(ConfigError, match="d_modle"):
        train_config_from_dict(compose_train_config(["model=tiny"], conf=conf))


def test_unknown_key_in_an_experiment_file_is_an_error(tmp_path):
    conf = _conf_copy(tmp_path)
    path = conf / "experiment" / "smoke.yaml"
    text = path.read_text()
    assert "  lr: 1.0e-3" in text
    path.write_text(text.replace("  lr: 1.0e-3", "  learning_rate: 1.0e-3"))
    with pytest.raises(ConfigError, match="learning_rate"):
        train_config_from_dict(compose_train_config(["experiment=smoke"], conf=conf))
