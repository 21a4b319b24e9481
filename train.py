"""Train a Melee world model: `python train.py experiment=smoke` (see README.md and conf/train.yaml)."""

import hydra
from omegaconf import DictConfig

from melee_wm.paths import config_dir
from melee_wm.training import objective_value, register_configs, train
from melee_wm.training.user_errors import exit_on_user_error

register_configs()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Run one job; the returned monitored metric is what a Hydra sweeper (Optuna) minimizes."""
    with exit_on_user_error("train.py"):
        return objective_value(cfg, train(cfg))


if __name__ == "__main__":
    main()
