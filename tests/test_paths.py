"""`config_dir`: the repository's conf/ by default, an environment override, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from melee_wm.paths import CONFIG_DIR_ENV, config_dir


def test_default_is_the_repository_conf(monkeypatch):
    monkeypatch.delenv(CONFIG_DIR_ENV, raising=False)
    assert config_dir() == Path(__file__).resolve().parents[1] / "conf"
    assert (config_dir() / "model" / "tiny.yaml").is_file()


def test_environment_override(monkeypatch, tmp_path):
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path))
    assert config_dir() == tmp_path.resolve()
    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path / "missing"))
    with pytest.raises(NotADirectoryError, match=CONFIG_DIR_ENV):
        config_dir()
