"""Shared fixtures: the real sample replays and a store built from them once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from melee_wm.data.store import Store
from melee_wm.data.store_writer import build_store
from melee_wm.encoding.config import EncodingConfig
from melee_wm.samples import SAMPLES_ENV, sample_dir
from melee_wm.training.compose import compose_train_config, train_config_from_dict

SAMPLE_SHARD_FRAMES = 8000  # small, so the six games (39,188 frames) span several shards


@pytest.fixture(scope="session")
def replay_dir() -> Path:
    """Folder with the six sample replays (`MELEE_WM_SAMPLES`, else the verified/fetched cache)."""
    return Path(os.environ.get(SAMPLES_ENV) or sample_dir())


@pytest.fixture(scope="session")
def sample_store(replay_dir, tmp_path_factory) -> Store:
    """A store of the six sample replays with the default EncodingConfig, in several shards."""
    out = tmp_path_factory.mktemp("sample_store") / "store"
    return build_store([replay_dir], out, EncodingConfig(), shard_frames=SAMPLE_SHARD_FRAMES, progress=False)


@pytest.fixture(scope="session")
def smoke_config():
    """The composed `experiment=smoke` config (`TrainConfig`), as `train.py experiment=smoke` builds it."""
    return train_config_from_dict(compose_train_config(["experiment=smoke"]))
