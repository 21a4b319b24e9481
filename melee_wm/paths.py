"""Where the package finds files that live beside it rather than in it: the `conf/` folder of YAML configs."""

from __future__ import annotations

import os
from pathlib import Path

CONFIG_DIR_ENV = "MELEE_WM_CONFIG_DIR"


def config_dir() -> Path:
    """The top-level `conf/` folder: `$MELEE_WM_CONFIG_DIR` when set, else `conf/` beside the package (the
    repository checkout). Raises NotADirectoryError naming the variable when it points at no folder, and
    FileNotFoundError when there is no `conf/` beside the package (e.g. an installed wheel)."""
    override = os.environ.get(CONFIG_DIR_ENV)
    if override:
        path = Path(override).expanduser().resolve()
        if not path.is_dir():
            raise NotADirectoryError(f"{CONFIG_DIR_ENV}={override!r} is not a directory")
        return path
    path = Path(__file__).resolve().parents[1] / "conf"
    if not path.is_dir():
        raise FileNotFoundError(
            f"no config folder at {path} (conf/ beside the melee_wm package); set {CONFIG_DIR_ENV} to a conf/ folder"
        )
    return path
