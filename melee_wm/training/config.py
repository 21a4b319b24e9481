"""`TrainConfig`: the typed schema of a training run (the root of the Hydra tree in `conf/`).

Every YAML file, experiment and command-line override is checked against these dataclasses: an unknown key,
a wrong type or a value a `__post_init__` refuses stops the run before any data is read. Only plain types,
lists and dicts, so `OmegaConf.structured(TrainConfig)` can type-check every key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from melee_wm.data.config import DataConfig
from melee_wm.encoding.config import EncodingConfig
from melee_wm.encoding.layout import Layout
from melee_wm.model.config import ModelConfig
from melee_wm.schema import require

REGRESSION_LOSSES = ("mse", "l1", "huber", "symlog_mse")
POSITION_PARAMETERIZATIONS = ("delta", "residual_over_constant_velocity", "residual_over_table")
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
LOGGERS = ("csv", "wandb")
WANDB_MODES = ("auto", "online", "offline", "disabled")
STRATEGIES = ("auto", "ddp", "ddp_spawn")


def _fail(section: str, key: str, msg: str) -> None:
    raise ValueError(f"{section}.{key}: {msg}")


@dataclass
class ObjectiveConfig:
    """What the model is trained to predict and how each target group is weighted.

    Regression targets are standardized per column (statistics of the training split, kept in the
    checkpoint); `regression_loss` picks the loss per regression group (`continuous`, `velocity`, `dynamics`).
    `weights` maps a target group or categorical field of the layout (`continuous`, `velocity`, `dynamics`,
    `binary`, `action`, `jumps`, ...) to its weight; groups not named weigh 1. Names are checked against the
    layout before training.
    """

    position_parameterization: str = "residual_over_constant_velocity"
    regression_loss: dict[str, str] = field(
        default_factory=lambda: {"continuous": "l1", "velocity": "l1", "dynamics": "l1"}
    )
    huber_delta: float = 1.0  # in standardized units
    weights: dict[str, float] = field(default_factory=dict)
    action_change_weight: float = 1.0  # action CE weight of frames whose true next action differs from the current
    zero_init_output: bool = True  # untrained model predicts "no change" (or constant velocity)

    def __post_init__(self) -> None:
        self.regression_loss = dict(self.regression_loss)
        self.weights = dict(self.weights)
        if self.position_parameterization not in POSITION_PARAMETERIZATIONS:
            _fail(
                "objective",
                "position_parameterization",
                f"got {self.position_parameterization!r}, expected one of {list(POSITION_PARAMETERIZATIONS)}",
            )
        bad = {k: v for k, v in self.regression_loss.items() if v not in REGRESSION_LOSSES}
        if bad:
            _fail("objective", "regression_loss", f"unknown losses {bad}; expected one of {list(REGRESSION_LOSSES)}")
        bad = {k: v for k, v in self.weights.items() if v < 0}
        if bad:
            _fail("objective", "weights", f"weights must be >= 0, got {bad}")
        require(self.huber_delta > 0, "objective.huber_delta", self.huber_delta, "> 0")
        require(self.action_change_weight >= 0, "objective.action_change_weight", self.action_change_weight, ">= 0")


POSITION_TERM = "position"  # the loss term (and weight name) of the x and y columns


def loss_groups(layout: Layout) -> tuple[list[str], list[str]]:
    """(regression groups, every weighted name): the names `ObjectiveConfig` may use for this layout. The x and
    y columns of the position group are their own term, `position`; the group's other columns keep its name."""
    return layout.regression_groups, [*layout.target_float_groups, POSITION_TERM, *layout.categorical_targets]


def check_objective_names(objective: ObjectiveConfig, layout: Layout) -> None:
    """Every group named in `objective.weights` / `regression_loss` must exist in the layout (else ValueError)."""
    regression, weighted = loss_groups(layout)
    unknown = sorted(set(objective.weights) - set(weighted))
    if unknown:
        _fail("objective", "weights", f"unknown target groups {unknown}; the layout has {weighted}")
    unknown = sorted(set(objective.regression_loss) - set(regression))
    if unknown:
        _fail("objective", "regression_loss", f"unknown regression groups {unknown}; the layout has {regression}")


@dataclass
class OptimConfig:
    """AdamW with decay / no-decay groups; linear warmup then cosine decay, stepped per optimizer step."""

    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # the cosine ends at lr * min_lr_ratio

    def __post_init__(self) -> None:
        self.betas = list(self.betas)
        require(self.lr > 0, "optim.lr", self.lr, "> 0")
        require(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay, ">= 0")
        two_in_unit = len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas)
        require(two_in_unit, "optim.betas", self.betas, "two numbers in [0, 1)")
        require(self.warmup_steps >= 0, "optim.warmup_steps", self.warmup_steps, ">= 0")
        require(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio", self.min_lr_ratio, "in [0, 1]")


@dataclass
class TrainerConfig:
    """What Lightning's Trainer gets, plus the options of our loop around it."""

    accelerator: str = "cpu"
    devices: int = 1
    strategy: str = "auto"  # "ddp_spawn" for several processes (see melee_wm.training.run.check_strategy)
    precision: str = "32-true"
    max_epochs: int = 10  # total epochs, a resumed run included
    max_steps: int = -1
    max_time: str | None = None  # "DD:HH:MM:SS": stop (and checkpoint) after this long
    limit_train_batches: float = 1.0  # a float is a share of the epoch, an int-valued float >= 1 a batch count
    limit_val_batches: float = 1.0
    val_check_interval: float = 1.0
    check_val_every_n_epoch: int = 1
    gradient_clip_val: float = 1.0
    accumulate_grad_batches: int = 1
    log_every_n_steps: int = 20
    fast_dev_run: bool = False
    enable_progress_bar: bool = True
    compile: bool = False  # torch.compile the inner network in place
    deterministic: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            _fail("trainer", "precision", f"got {self.precision!r}, expected one of {list(PRECISIONS)}")
        if self.strategy not in STRATEGIES:
            _fail("trainer", "strategy", f"got {self.strategy!r}, expected one of {list(STRATEGIES)}")
        for key in ("devices", "max_epochs", "check_val_every_n_epoch", "accumulate_grad_batches", "log_every_n_steps"):
            require(getattr(self, key) >= 1, f"trainer.{key}", getattr(self, key), ">= 1")
        for key in ("limit_train_batches", "limit_val_batches", "val_check_interval"):
            v = getattr(self, key)
            ok = 0 < v <= 1 or v == int(v) > 0
            require(ok, f"trainer.{key}", getattr(self, key), "a share in (0, 1] or a whole number of batches")
        require(self.gradient_clip_val >= 0, "trainer.gradient_clip_val", self.gradient_clip_val, ">= 0 (0 = off)")


@dataclass
class WandbConfig:
    """W&B settings; `mode: auto` runs online when an API key is configured, else offline (never prompts)."""

    project: str = "melee_wm"
    entity: str | None = None
    mode: str = "auto"
    tags: list[str] = field(default_factory=list)
    log_model: bool = False

    def __post_init__(self) -> None:
        self.tags = list(self.tags)
        if self.mode not in WANDB_MODES:
            _fail("logger.wandb", "mode", f"got {self.mode!r}, expected one of {list(WANDB_MODES)}")


@dataclass
class LoggerConfig:
    """Which loggers run (`csv`, `wandb`; empty = none). The CSV log and the plots need no network."""

    loggers: list[str] = field(default_factory=lambda: ["csv"])
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def __post_init__(self) -> None:
        self.loggers = list(self.loggers)
        bad = [name for name in self.loggers if name not in LOGGERS]
        if bad:
            _fail("logger", "loggers", f"unknown {bad}; expected names from {list(LOGGERS)}")


@dataclass
class CheckpointConfig:
    """`last`, `best` (by `monitor`) and one checkpoint per epoch, all in the run's `checkpoints/` folder."""

    monitor: str = "val/loss"
    mode: str = "min"
    every_n_epochs: int = 1

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max"):
            _fail("checkpoint", "mode", f"got {self.mode!r}, expected 'min' or 'max'")
        require(self.every_n_epochs >= 1, "checkpoint.every_n_epochs", self.every_n_epochs, ">= 1")


@dataclass
class RolloutConfig:
    """Rollout evaluation during training (`melee_wm/training/rollout_callback.py`): every `every_n_val_epochs`
    validations, `samples` seeded starts in the val games rolled out `horizon` frames; its summaries
    (`rollout/pos_mae_h1_5`, ...) can be `checkpoint.monitor`. Results and pictures go to <run_dir>/rollout/."""

    enabled: bool = False
    every_n_val_epochs: int = 1
    horizon: int = 20
    samples: int = 300
    seed: int = 42
    pictures: bool = True  # error-vs-horizon and trajectory PNGs and a GIF at each rollout evaluation
    batch_size: int = 256  # starts rolled out at once

    def __post_init__(self) -> None:
        for key in ("every_n_val_epochs", "horizon", "samples", "batch_size"):
            require(getattr(self, key) >= 1, f"rollout.{key}", getattr(self, key), ">= 1")


@dataclass
class SelfForcingConfig:
    """Self-forcing (`melee_wm/training/drift.py`): a `share` of training batches is also unrolled N steps on the
    model's own reconstructed frames, with a loss at each step, weighted by `weight`. N follows the curriculum
    `steps`: entry i from epoch i * epochs_per_stage on, the last entry after that."""

    share: float = 0.0  # share of training batches that are also self-forced (0 = off)
    steps: list[int] = field(default_factory=lambda: [1, 2, 3])
    epochs_per_stage: int = 1
    weight: float = 1.0
    feed_back_categorical: bool = True  # False: the fed-back frames keep the true categorical columns
    detach_feedback: bool = True  # no gradient through the fed-back frames' values (only through the state)

    def __post_init__(self) -> None:
        self.steps = list(self.steps)
        section = "drift.self_forcing"
        require(0.0 <= self.share <= 1.0, f"{section}.share", self.share, "in [0, 1]")
        require(min(self.steps, default=0) >= 1, f"{section}.steps", self.steps, "a non-empty list of numbers >= 1")
        require(self.epochs_per_stage >= 1, f"{section}.epochs_per_stage", self.epochs_per_stage, ">= 1")
        require(self.weight >= 0, f"{section}.weight", self.weight, ">= 0")


@dataclass
class ContextNoiseConfig:
    """Gaussian noise of standard deviation `std` (encoded units: 0.01 is one game unit of position, one percent
    point, one frame of state age) added to the context's columns of `groups` during training (0 = off)."""

    std: float = 0.0
    groups: list[str] = field(default_factory=lambda: ["continuous", "velocity", "dynamics"])

    def __post_init__(self) -> None:
        self.groups = list(self.groups)
        require(self.std >= 0, "drift.context_noise.std", self.std, ">= 0")


@dataclass
class DriftConfig:
    """Training against the drift of autoregressive rollouts; both options are off by default."""

    self_forcing: SelfForcingConfig = field(default_factory=SelfForcingConfig)
    context_noise: ContextNoiseConfig = field(default_factory=ContextNoiseConfig)


def check_drift(drift: DriftConfig, data: DataConfig, layout: Layout) -> None:
    """Cross-checks of `DriftConfig` against the data and layout (ValueError naming the key)."""
    regression, _ = loss_groups(layout)
    unknown = sorted(set(drift.context_noise.groups) - set(regression))
    if unknown:
        _fail("drift.context_noise", "groups", f"unknown {unknown}; noise applies to the groups {regression}")
    longest = max(drift.self_forcing.steps)
    limit = min(data.num_positions, data.context_len - 2)
    if drift.self_forcing.share > 0 and longest > limit:
        _fail(
            "drift.self_forcing",
            "steps",
            f"{longest} steps need {longest} target positions and 2 true context frames before them; "
            f"data.context_len={data.context_len}, multi_position={data.multi_position} allow at most {limit}",
        )


@dataclass
class PathsConfig:
    """Where runs and stores live. `run_dir` empty: Hydra's output folder, else `runs_dir/run_name`."""

    runs_dir: str = "runs"
    stores_dir: str = "stores"
    run_dir: str = ""


@dataclass
class TrainConfig:
    """One training run: data, model, objective, optimizer, trainer, logging and where it writes."""

    name: str = "default"  # the experiment's name (the default run_name starts with it)
    run_name: str = MISSING  # folder under paths.runs_dir; conf/train.yaml sets name + timestamp
    seed: int = 0
    resume: bool = False  # continue this run_name's run from its own `last` checkpoint
    encoding: EncodingConfig = field(default_factory=EncodingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)

    def __post_init__(self) -> None:
        if not self.run_name or ".." in self.run_name.split("/"):
            _fail("train", "run_name", f"must be a non-empty folder name without '..', got {self.run_name!r}")
        check_objective_names(self.objective, Layout(self.encoding))
        check_drift(self.drift, self.data, Layout(self.encoding))
        if self.model.arch == "mlp" and self.model.mlp_frames > self.data.context_len:
            _fail(
                "model",
                "mlp_frames",
                f"{self.model.mlp_frames} exceeds data.context_len {self.data.context_len}",
            )
        if self.objective.position_parameterization == "residual_over_constant_velocity" and self.data.context_len < 2:
            _fail("data", "context_len", "residual_over_constant_velocity needs at least 2 context frames")
