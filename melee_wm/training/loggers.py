"""Loggers of a run: a CSV log that always works offline, and W&B that never hangs or prompts.

The W&B mode is decided before the logger exists: `auto` runs online only when an API key is configured
(WANDB_API_KEY or a W&B entry in the netrc file), else offline, and says so. The key itself is never
written into configs, logs or checkpoints.
"""

from __future__ import annotations

import netrc
import os
import subprocess
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from rich.console import Console

from melee_wm.training.config import TrainConfig


def wandb_key_available() -> bool:
    """Whether W&B has an API key to use without asking: WANDB_API_KEY, or a W&B entry in the netrc file."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        hosts = netrc.netrc(os.environ.get("NETRC")).hosts
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return any("wandb" in host for host in hosts)


def wandb_mode(requested: str) -> str:
    """`online`, `offline` or `disabled`: `auto` becomes online only when a key is available."""
    if requested != "auto":
        return requested
    return "online" if wandb_key_available() else "offline"


def git_commit() -> str | None:
    """The checked-out commit of the source tree this package runs from, if it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def run_label(run_dir: Path, cfg: TrainConfig) -> str:
    """The run's name for dashboards: its folder relative to paths.runs_dir (`<run_name>/<job>` in a sweep)."""
    try:
        return str(run_dir.resolve().relative_to(Path(cfg.paths.runs_dir).resolve()))
    except ValueError:
        return run_dir.name


def build_loggers(
    cfg: TrainConfig,
    run_dir: Path,
    container: dict[str, Any],
    fingerprint: dict[str, Any],
    num_parameters: int,
    console: Console,
) -> list[Logger]:
    """The loggers `cfg.logger.loggers` names, all writing under `run_dir`."""
    loggers: list[Logger] = []
    if "csv" in cfg.logger.loggers:
        loggers.append(CSVLogger(save_dir=str(run_dir), name="logs", version=""))
    if "wandb" in cfg.logger.loggers:
        w = cfg.logger.wandb
        mode = wandb_mode(w.mode)
        if mode != "online":
            console.print(f"W&B runs {mode} (no API key configured)" if w.mode == "auto" else f"W&B mode: {mode}")
        loggers.append(
            WandbLogger(
                project=w.project,
                entity=w.entity,
                name=run_label(run_dir, cfg),
                save_dir=str(run_dir),
                mode=mode,
                tags=w.tags,
                log_model=w.log_model,
                config={
                    **container,
                    "data_fingerprint": fingerprint,
                    "git_commit": git_commit(),
                    "num_parameters": num_parameters,
                },
            )
        )
    return loggers


def finish_loggers(loggers: list[Logger]) -> None:
    """Close the W&B run, so the next job of a multirun starts its own run instead of reusing this one."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            wandb.finish()
