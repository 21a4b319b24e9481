"""`train(cfg) -> metrics`: one training run, called alike by `train.py`, tests and the cloud launcher.

Order matters: the config is validated, the strategy checked and the run directory claimed before any data
is read; then the store is opened (built from the sample replays when the data config says so) and its
encoding config compared with the run's; only then does Lightning start.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from melee_wm.data.datamodule import MeleeDataModule
from melee_wm.data.dataset import MeleeDataset
from melee_wm.data.store import Store, open_store
from melee_wm.data.store_writer import build_store
from melee_wm.encoding.config import config_diff, format_config_diff
from melee_wm.eval.baselines import BASELINES
from melee_wm.frames.table import TableBaseline
from melee_wm.frames.targets import target_statistics
from melee_wm.samples import sample_dir
from melee_wm.training.callbacks import HISTORY_FILE, build_callbacks
from melee_wm.training.checkpoint import (
    CHECKPOINT_DIR,
    FINGERPRINT_FILE,
    AtomicCheckpointIO,
    ResumePoint,
    data_fingerprint,
    find_resume_point,
)
from melee_wm.training.compose import ConfigError, to_container, train_config_from_dict
from melee_wm.training.config import TrainConfig
from melee_wm.training.loggers import build_loggers, finish_loggers
from melee_wm.training.module import WorldModelModule
from melee_wm.training.plots import PLOT_FILE, plot_training
from melee_wm.training.quiet import silence_framework_noise

CONFIG_FILE = "config.yaml"
METRICS_FILE = "final_metrics.json"
# Sections that must not change when a run is resumed (the trainer's budget and logging may).
RESUME_LOCKED = ("encoding", "data", "model", "objective", "optim", "seed")
OWN_TRAINER_OPTIONS = ("compile",)  # `TrainerConfig` fields that are not Lightning Trainer arguments


class RunDirError(RuntimeError):
    """A run directory that already holds a run (without resume), or a resume with nothing to resume."""


def hydra_output_dir() -> tuple[Path | None, bool]:
    """(Hydra's output folder for this job, whether it is a multirun job), or (None, False) outside Hydra."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None, False
    hydra_cfg = HydraConfig.get()
    return Path(hydra_cfg.runtime.output_dir), hydra_cfg.mode == RunMode.MULTIRUN


def resolve_run_dir(cfg: TrainConfig) -> Path:
    """paths.run_dir when set, else Hydra's output folder for this job, else paths.runs_dir/run_name."""
    if cfg.paths.run_dir:
        return Path(cfg.paths.run_dir)
    hydra_dir, _ = hydra_output_dir()
    return hydra_dir if hydra_dir is not None else Path(cfg.paths.runs_dir) / cfg.run_name


def check_strategy(cfg: TrainConfig, multirun: bool) -> None:
    """Refuse `strategy=ddp` with several devices inside a Hydra multirun: each DDP child re-executes the
    entrypoint and would run the whole sweep again. `ddp_spawn` starts the workers from this process."""
    if multirun and cfg.trainer.strategy == "ddp" and cfg.trainer.devices > 1:
        raise ConfigError(
            "trainer.strategy: 'ddp' re-runs the Hydra sweep in every child process; "
            "use trainer=ddp (strategy ddp_spawn) with -m/--multirun"
        )


def claim_run_dir(run_dir: Path, cfg: TrainConfig, joining: bool = False) -> ResumePoint | None:
    """Make sure no two runs write one folder. Returns where to resume (None for a new run).

    A folder that already holds a run is refused unless `resume` is set; a resume needs that run's own
    config (the same data, model, objective and optimizer) and continues from its newest readable checkpoint,
    or from the first step when the run stopped before writing one. joining: this process is a DDP worker that
    `strategy=ddp` started after rank 0 claimed the folder (and wrote its config) for the same run; it joins it.
    """
    saved = run_dir / CONFIG_FILE
    if cfg.resume:
        if not saved.is_file():
            raise RunDirError(f"resume=true but {saved} does not exist (nothing to resume in {run_dir})")
        before = OmegaConf.to_container(OmegaConf.load(saved), resolve=True)
        now = to_container(cfg)
        diff = {
            f"{section}.{key}": pair
            for section in RESUME_LOCKED
            for key, pair in _section_diff(before.get(section), now[section]).items()
        }
        if diff:
            raise ConfigError(
                f"resume of {run_dir}: the config differs from the run's own {saved}:\n"
                + format_config_diff(diff, "run", "now")
            )
        return find_resume_point(run_dir / CHECKPOINT_DIR)
    if not joining and (saved.exists() or (run_dir / CHECKPOINT_DIR).exists()):
        raise RunDirError(
            f"{run_dir} already holds a run; pick another run_name, or pass resume=true to continue that run"
        )
    return None


def _section_diff(before: Any, now: Any) -> dict[str, tuple[Any, Any]]:
    if isinstance(before, dict) and isinstance(now, dict):
        return config_diff(before, now)
    return {} if before == now else {"": (before, now)}


def prepare_store(cfg: TrainConfig, console: Console) -> Store:
    """Open the run's store, checking its encoding config against the run's (StoreConfigError names the
    differing fields). With `data.from_samples` a missing store is first built from the sample replays,
    through the same `build_store` as `melee-wm encode`."""
    path = Path(cfg.data.store)
    if cfg.data.from_samples and not (path / "manifest.json").is_file():
        replays = sample_dir(fetch=True)
        console.print(f"building the sample store {path} from {replays}", soft_wrap=True)
        build_store([replays], path, cfg.encoding, workers=1, progress=False)
    return open_store(path, expected_config=cfg.encoding)


def train(cfg: DictConfig | TrainConfig | dict, extra_callbacks: list[Callback] | None = None) -> dict[str, float]:
    """Run one training job and return its final metrics (every logged scalar, as floats).

    extra_callbacks: more Lightning callbacks (e.g. the cloud launcher's volume commit).
    """
    config = cfg if isinstance(cfg, TrainConfig) else train_config_from_dict(cfg)
    console = Console()
    silence_framework_noise()
    _, multirun = hydra_output_dir()
    check_strategy(config, multirun)
    run_dir = resolve_run_dir(config)
    # `strategy=ddp` re-runs the entry point (train.py) for ranks 1.. once rank 0 is inside `Trainer.fit`; they
    # know their rank from the launcher's environment, which Lightning reads on import.
    worker = rank_zero_only.rank > 0
    resume = claim_run_dir(run_dir, config, joining=worker)
    for line in resume.describe() if resume and not worker else []:
        console.print(line, soft_wrap=True)
    resume_from = resume.path if resume else None
    store = prepare_store(config, console)

    container = to_container(config)
    fingerprint = data_fingerprint(store)
    if not worker:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / CONFIG_FILE).write_text(OmegaConf.to_yaml(container))
        (run_dir / FINGERPRINT_FILE).write_text(json.dumps(fingerprint, indent=2))

    L.seed_everything(config.seed, workers=True, verbose=False)
    datamodule = MeleeDataModule(config.data, config.encoding)
    train_windows = MeleeDataset.from_store(store, "train", config.data)
    stats = target_statistics(train_windows, config.objective.position_parameterization)
    module = WorldModelModule(container, stats.to_dict(), TableBaseline.fit(train_windows))
    if not worker:
        console.print(module.net.summary(), soft_wrap=True)

    loggers = build_loggers(config, run_dir, container, fingerprint, module.net.num_parameters(), console)
    callbacks = build_callbacks(config, run_dir / CHECKPOINT_DIR, has_logger=bool(loggers))
    trainer = L.Trainer(
        **trainer_kwargs(config),
        default_root_dir=str(run_dir),
        logger=loggers or False,
        callbacks=callbacks + list(extra_callbacks or []),
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,  # the WindowBatchSampler splits windows across ranks itself
    )
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume_from) if resume_from else None)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.as_tensor(v).numel() == 1}
        if trainer.is_global_zero:
            (run_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True))
            plot = plot_training(run_dir / HISTORY_FILE, module.baseline_scores, run_dir / PLOT_FILE)
            if plot is not None:
                for logger in loggers:
                    if hasattr(logger, "log_image"):
                        logger.log_image(key="plots/training", images=[str(plot)])
    finally:
        finish_loggers(loggers)
    if trainer.is_global_zero:
        print_verdict(metrics, run_dir, config, console)
    return metrics


HEADLINE = (  # (metric key, what it says, True when higher is better)
    ("pos_mae/all", "position MAE, all frames", False),
    ("pos_mae_smooth/all", "position MAE, no-jump frames", False),
    ("action_acc/all", "action accuracy", True),
    ("change_acc/all", "action-change accuracy", True),
    ("false_change/all", "false-change rate", False),
)


def print_verdict(metrics: dict[str, float], run_dir: Path, cfg: TrainConfig, console: Console) -> None:
    """The end of a run: the model beside every baseline on the headline metrics (the last validation, the same
    frames for all), where the run is, and what to run next."""
    if "val/pos_mae/all" not in metrics:
        return
    split = f"{cfg.data.split} split, val_fraction {cfg.data.val_fraction}"
    table = Table(title=f"validation ({split}): model beside every baseline on the same frames")
    table.add_column("metric")
    for name in ("model", *BASELINES):
        table.add_column(name.replace("_", " "), justify="right")
    for key, label, higher in HEADLINE:
        values = [metrics.get(f"val/{key}")] + [metrics.get(f"baseline/{b}/{key}") for b in BASELINES]
        known = [v for v in values if v is not None]
        best = (max if higher else min)(known) if known else None
        cells = ["-" if v is None else (f"[bold]{v:.4f}[/bold]" if v == best else f"{v:.4f}") for v in values]
        table.add_row(label, *cells)
    console.print(table)
    console.print(f"run: {run_dir}")
    console.print(f"next: melee-wm eval {run_dir / CHECKPOINT_DIR / 'best.ckpt'} --store {cfg.data.store}")


def trainer_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    """Lightning Trainer arguments: every `TrainerConfig` field but our own options (`compile`, which
    `WorldModelModule.configure_model` applies); batch counts given as whole floats become ints."""
    t = cfg.trainer
    kwargs = {f.name: getattr(t, f.name) for f in dataclasses.fields(t) if f.name not in OWN_TRAINER_OPTIONS}
    for key in ("limit_train_batches", "limit_val_batches", "val_check_interval"):
        kwargs[key] = int(kwargs[key]) if kwargs[key] > 1 else kwargs[key]
    kwargs["gradient_clip_val"] = t.gradient_clip_val or None  # 0 means off
    kwargs["num_sanity_val_steps"] = 0 if t.fast_dev_run else 2
    return kwargs
