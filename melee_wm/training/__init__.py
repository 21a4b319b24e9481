"""Training: the LightningModule, the typed Hydra config and `train(cfg) -> metrics`."""

from omegaconf import DictConfig

from melee_wm.training.compose import register_configs
from melee_wm.training.run import train


def objective_value(cfg: DictConfig, metrics: dict[str, float]) -> float | None:
    """The run's value of `checkpoint.monitor` (what a sweeper optimizes), or None when it was not logged."""
    return metrics.get(cfg.checkpoint.monitor)


__all__ = ["objective_value", "register_configs", "train"]
