"""Hydra wiring of `TrainConfig`: registration in the ConfigStore, composing `conf/`, and strict validation.

Hydra checks YAML files against the schema while composing, but lets `+key=` / `++key=` appends through, so
`validate` merges the composed config onto the schema once more: whatever was added, misspelt or mistyped
anywhere is a `ConfigError` naming the key before any data is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from melee_wm.paths import config_dir
from melee_wm.schema import merge_structured
from melee_wm.training.config import TrainConfig

SCHEMA_NAME = "train_schema"
PRIMARY_CONFIG = "train"


class ConfigError(ValueError):
    """A training config that does not fit the schema or fails a cross-field check."""


def register_configs() -> None:
    """Put the root schema in Hydra's ConfigStore (`conf/train.yaml` lists it first in its defaults)."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=TrainConfig)


def train_config_from_dict(data: dict[str, Any] | DictConfig) -> TrainConfig:
    """A `TrainConfig` from plain containers or a composed DictConfig; unknown keys, wrong types and values
    a schema refuses are ConfigErrors naming the key."""
    if isinstance(data, DictConfig):
        data = OmegaConf.to_container(data, resolve=True)
    data = {k: v for k, v in data.items() if k != "hydra"}
    return merge_structured(TrainConfig, [data], "training config", ConfigError)


def to_container(cfg: TrainConfig) -> dict[str, Any]:
    """Plain dicts and lists of a `TrainConfig` (what checkpoints store, so they load with weights_only)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def compose_train_config(overrides: Sequence[str] = (), conf: str | Path | None = None) -> DictConfig:
    """Compose `conf/train.yaml` with command-line style overrides, as `train.py` would (no Hydra run dir)."""
    register_configs()
    folder = Path(conf) if conf is not None else config_dir()
    try:
        with initialize_config_dir(config_dir=str(folder.resolve()), version_base="1.3"):
            return compose(config_name=PRIMARY_CONFIG, overrides=list(overrides), return_hydra_config=False)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"invalid training config ({' '.join(overrides)}): {err}") from None
