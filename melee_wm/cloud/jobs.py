"""The bodies of the Modal functions and entrypoints in `modal_launcher.py`, as plain functions.

Everything here runs without Modal: paths are plain folders (the volume's mount point in a container, a
temporary folder in tests), the volume's `commit` is passed in, and remote calls are passed in as callables.
A local entrypoint composes and checks a run's overrides (`plan_train`) before any container starts, so a typo
costs nothing; the container composes the same `conf/` again (`train_job`).
"""

from __future__ import annotations

import secrets
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from melee_wm.cloud.callbacks import CommitVolumeOnSave, RunReport
from melee_wm.cloud.spec import NO_BF16, RUNS_SUBDIR, STORES_SUBDIR, GpuSpec, check_gpu
from melee_wm.data.merge import merge_stores
from melee_wm.data.pipeline import StoreFilters, find_replays
from melee_wm.data.store_writer import build_store
from melee_wm.encoding.config import load_encoding_config
from melee_wm.training import train
from melee_wm.training.checkpoint import CHECKPOINT_DIR, LAST_CHECKPOINT
from melee_wm.training.compose import ConfigError, compose_train_config, train_config_from_dict
from melee_wm.training.run import resolve_run_dir

RUN_REPORT_FILE = "run_report.json"  # what the run showed, written by rank 0 (see RunReport)
# Paths the launcher owns: they point at the volume.
VOLUME_KEYS = ("paths.runs_dir", "paths.stores_dir", "paths.run_dir")
# The cloud smoke test: the smoke experiment on one GPU, both loggers, one short epoch.
SMOKE_OVERRIDES = (
    "experiment=smoke",
    "trainer=gpu",
    "logger=both",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=50",
    "trainer.limit_val_batches=5",
    "trainer.enable_progress_bar=false",
)


class SweepError(RuntimeError):
    """One or more runs of a sweep failed (the message lists them)."""


@dataclass
class LaunchOptions:
    """Launcher flags given among a `modal run` entrypoint's raw arguments (everything else is a Hydra override)."""

    gpu: GpuSpec
    fused: bool = False  # the image with mamba-ssm (fused kernels)


def split_launcher_args(args: Sequence[str], default_gpu: str) -> tuple[LaunchOptions, list[str]]:
    """(`--gpu=TYPE[:N]`, `--fused`) from the arguments, and the rest as Hydra overrides (which never start
    with `--`). An unknown `--flag` is a ValueError naming it. `--fused` adds `model.backend=mamba_ssm` (a run
    that asked for the kernels fails when they do not load, never falls back to PyTorch); it refuses another
    backend and GPUs the fused build has no kernels for."""
    gpu, fused, overrides = default_gpu, False, []
    for arg in args:
        if arg.startswith("--gpu="):
            gpu = arg.split("=", 1)[1]
        elif arg == "--fused":
            fused = True
        elif arg.startswith("--"):
            raise ValueError(f"unknown launcher option {arg!r}: use --gpu=TYPE[:COUNT] or --fused")
        else:
            overrides.append(arg)
    options = LaunchOptions(check_gpu(gpu), fused)
    if fused:
        backends = [o for o in overrides if override_key(o) == "model.backend"]
        if any(o.split("=", 1)[1] != "mamba_ssm" for o in backends):
            raise ValueError(f"--fused selects model.backend=mamba_ssm, but the overrides set {backends}")
        if options.gpu.type in NO_BF16:
            raise ValueError(f"--fused: the fused image has no kernels for {options.gpu.type}")
        if not backends:
            overrides.append("model.backend=mamba_ssm")
    return options, overrides


def override_key(override: str) -> str:
    """The key a Hydra override sets (`+a.b=1` -> `a.b`)."""
    return override.split("=", 1)[0].lstrip("+~")


def with_volume_paths(overrides: Sequence[str], volume_root: str | Path) -> list[str]:
    """The overrides with paths.runs_dir / paths.stores_dir on the volume (any earlier values replaced)."""
    root = Path(volume_root)
    kept = [o for o in overrides if override_key(o) not in ("paths.runs_dir", "paths.stores_dir")]
    return [*kept, f"paths.runs_dir={root / RUNS_SUBDIR}", f"paths.stores_dir={root / STORES_SUBDIR}"]


def unique_run_name(prefix: str) -> str:
    """`prefix_<UTC time>_<6 random hex>`: unique even for runs started in the same second."""
    return f"{prefix}_{time.strftime('%Y-%m-%d_%H-%M-%S', time.gmtime())}_{secrets.token_hex(3)}"


def plan_train(
    overrides: Sequence[str], gpu: GpuSpec, volume_root: str | Path, run_name: str | None = None
) -> list[str]:
    """The complete overrides of one cloud run, checked by composing `conf/` here (ConfigError on any problem).

    Adds the volume's paths and an explicit, unique `run_name` (Hydra's default, name + time to the second,
    collides for runs started together), unless the overrides name one (a resume must: `resume=true
    run_name=...`). Several GPUs get `trainer.devices=N trainer.strategy=ddp_spawn`: DDP that starts its workers
    from the running process, since plain `ddp` re-executes an entrypoint a container does not have.
    """
    user = list(overrides)
    keys = {override_key(o) for o in user}
    owned = sorted(keys & set(VOLUME_KEYS))
    if owned:
        raise ConfigError(f"{owned}: the launcher sets these to the volume ({volume_root}); leave them out")
    planned = with_volume_paths(user, volume_root)
    config = train_config_from_dict(compose_train_config(planned))
    if "run_name" not in keys:
        if config.resume:
            raise ConfigError(f"resume=true needs run_name=<the run's folder under {Path(volume_root) / RUNS_SUBDIR}>")
        planned.append(f"run_name={run_name or unique_run_name(config.name)}")
    if gpu.count > 1 and "trainer.devices" not in keys:
        planned.append(f"trainer.devices={gpu.count}")
        if "trainer.strategy" not in keys:
            planned.append("trainer.strategy=ddp_spawn")
    t = train_config_from_dict(compose_train_config(planned)).trainer
    if t.accelerator == "cpu":
        raise ConfigError("trainer.accelerator is 'cpu' on a GPU container: add trainer=gpu (or a GPU experiment)")
    if gpu.type in NO_BF16 and "bf16" in str(t.precision):
        raise ConfigError(f"{gpu.type} has no bf16 but trainer.precision={t.precision!r}: use 16-mixed or another GPU")
    if t.devices > gpu.count:
        raise ConfigError(f"trainer.devices={t.devices} but the container has {gpu} ({gpu.count} GPU)")
    if t.devices > 1 and t.strategy != "ddp_spawn":
        raise ConfigError(f"trainer.strategy={t.strategy!r} with {t.devices} GPUs in one container: use ddp_spawn")
    return planned


def plan_sweep(override_sets: Sequence[Sequence[str]], gpu: GpuSpec, volume_root: str | Path) -> list[list[str]]:
    """One planned run per override set, named `<sweep id>/<index>` (all under one folder of the runs dir).
    A set may not name its own run_name or resume (two members could then share a directory)."""
    if not override_sets:
        raise ConfigError("a sweep needs at least one override set")
    sweep_id = unique_run_name("sweep")
    plans = []
    for index, overrides in enumerate(override_sets):
        named = [o for o in overrides if override_key(o) in ("run_name", "resume")]
        if named:
            raise ConfigError(f"sweep member {index}: {named}: the sweep names its runs; leave run_name/resume out")
        plans.append(plan_train(overrides, gpu, volume_root, run_name=f"{sweep_id}/{index:02d}"))
    return plans


def run_dir_of(overrides: Sequence[str]) -> Path:
    """The run directory a planned override list trains into."""
    return resolve_run_dir(train_config_from_dict(compose_train_config(overrides)))


def needs_fused(overrides: Sequence[str]) -> bool:
    """Whether a planned run selects the fused kernels outright (model.backend=mamba_ssm): it then needs the
    image with mamba-ssm. `auto` runs on either image (pure PyTorch where mamba-ssm is missing)."""
    return train_config_from_dict(compose_train_config(overrides)).model.backend == "mamba_ssm"


def volume_path(volume_root: str | Path, name: str, under: str = "") -> Path:
    """`name` on the volume: an absolute path as it is (it must lie under the volume), else
    `<volume_root>/<under>/<name>`."""
    root = Path(volume_root)
    path = Path(name) if Path(name).is_absolute() else root / under / name
    if root != path and root not in path.parents:
        raise ValueError(f"{path} is not on the volume (mounted at {root})")
    return path


def train_job(
    overrides: Sequence[str], volume_root: str | Path, commit: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Body of the `train` function: compose `conf/` with `overrides` and the volume's paths, train, and return
    {run_dir, metrics, checkpoints, commits, first_losses, global_step, wandb}.

    commit: the volume's commit (None outside Modal), called after checkpoint saves and once at the end, also
    when training fails (so a crashed run's checkpoints survive). A resume whose checkpoint is missing is a
    FileNotFoundError naming it; so is a missing store (from `open_store`).
    """
    cfg = compose_train_config(with_volume_paths(overrides, volume_root))
    config = train_config_from_dict(cfg)
    run_dir = resolve_run_dir(config)
    last = run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
    if config.resume and not last.is_file():
        raise FileNotFoundError(f"resume=true but there is no checkpoint {last} (no run to continue in {run_dir})")
    committer = CommitVolumeOnSave(commit) if commit is not None else None
    report = RunReport(run_dir / RUN_REPORT_FILE, committer)
    callbacks = ([committer] if committer else []) + [report]  # the committer first: its last commit is counted
    failed = True
    try:
        metrics = train(config, extra_callbacks=callbacks)
        failed = False
    finally:
        if commit is not None:
            try:
                commit()
            except Exception as err:
                if not failed:
                    raise
                warnings.warn(f"final volume commit failed after a failed run: {err}", stacklevel=2)
    checkpoints = sorted(p.name for p in (run_dir / CHECKPOINT_DIR).glob("*.ckpt"))
    shown = report.read()  # written by rank 0: under ddp_spawn this process's own callbacks saw nothing
    return {
        "run_dir": str(run_dir),
        "metrics": metrics,
        "checkpoints": checkpoints,
        **shown,
        "commits": shown["commits"] + 1 if committer else 0,  # + the final commit above
    }


def smoke_lines(result: dict[str, Any], committed: bool) -> list[str]:
    """What the cloud smoke run proved, one line each; raises RuntimeError when it proved less (`committed`:
    the run had a volume to commit, so at least one commit must have happened)."""
    if result["global_step"] < 1 or not result["first_losses"]:
        raise RuntimeError(f"smoke: no training batch ran ({result['run_dir']})")
    if LAST_CHECKPOINT not in result["checkpoints"]:
        raise RuntimeError(f"smoke: no {LAST_CHECKPOINT} in {result['run_dir']}/{CHECKPOINT_DIR}")
    if committed and result["commits"] < 1:
        raise RuntimeError(f"smoke: the checkpoints in {result['run_dir']} were never committed to the volume")
    losses = ", ".join(f"{v:.4f}" for v in result["first_losses"])
    return [
        f"first batches: losses {losses}; {result['global_step']} steps",
        f"checkpoints in {result['run_dir']}/{CHECKPOINT_DIR}: {result['checkpoints']}",
        f"volume commits: {result['commits']}",
        f"W&B: {result['wandb'] or 'no W&B logger'}",
    ]


def summary_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The run's own metrics for printing (the baselines, logged beside them, are left out)."""
    return {k: round(v, 6) for k, v in sorted(metrics.items()) if not k.startswith("baseline/")}


def run_sweep(
    plans: Sequence[Sequence[str]], start: Callable[[list[str]], Any], echo: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """Start every planned run (`start(overrides)` returns a handle with `.get()`, e.g. Modal's `spawn`), wait
    for all, print each run's directory and metrics, and raise SweepError naming the failed runs."""
    handles = [(plan, start(list(plan))) for plan in plans]
    results, failures = [], []
    for plan, handle in handles:
        run_name = next(o.split("=", 1)[1] for o in plan if override_key(o) == "run_name")
        try:
            result = handle.get()
        except Exception as err:
            failures.append(f"{run_name}: {type(err).__name__}: {err}")
            echo(f"FAILED {run_name}: {type(err).__name__}: {err}")
            continue
        results.append(result)
        echo(f"run {result['run_dir']}")
        echo(f"  metrics {summary_metrics(result['metrics'])}")
    if failures:
        raise SweepError(f"{len(failures)} of {len(plans)} sweep runs failed:\n" + "\n".join(failures))
    return results


# ----- encoding on many containers, then one merge -----


def list_replays(folder: str | Path) -> list[str]:
    """Every `*.slp` under `folder`, sorted; FileNotFoundError naming the folder when it is missing or empty."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"replay folder {folder} does not exist (upload with `modal volume put`)")
    files = [str(p) for p in find_replays([folder])]
    if not files:
        raise FileNotFoundError(f"no *.slp replay files under {folder}")
    return files


def group_files(files: Sequence[str], files_per_group: int) -> list[list[str]]:
    """Consecutive groups of the (sorted) file list: merged in order they give a one-shot build's store, and
    the same files give the same groups, so a rerun resumes each group's part."""
    if files_per_group < 1:
        raise ValueError(f"files_per_group must be >= 1, got {files_per_group}")
    return [list(files[i : i + files_per_group]) for i in range(0, len(files), files_per_group)]


def parts_dir(out: str | Path) -> Path:
    """Where the parts of the store `out` are encoded: `<out>.parts/` beside it."""
    out = Path(out)
    return out.with_name(f"{out.name}.parts")


def encode_group(
    files: Sequence[str],
    part: str | Path,
    encoding: Sequence[str] = (),
    filters: dict[str, Any] | None = None,
    workers: int = 1,
    shard_frames: int = 1_000_000,
) -> dict[str, Any]:
    """Body of `encode_group`: `build_store` of one group into its part (resumed when rerun)."""
    cfg = load_encoding_config(None, list(encoding))
    filters = StoreFilters(**(filters or {}))
    store = build_store(list(files), part, cfg, filters, workers=workers, shard_frames=shard_frames, progress=False)
    return {"part": str(part), **store.manifest["counts"]}


def merge_parts(parts: Sequence[str], out: str | Path, shard_frames: int = 1_000_000, keep_parts: bool = False) -> dict:
    """Body of `merge_parts`: merge the parts into `out`, then remove the parts (unless `keep_parts`)."""
    store = merge_stores(parts, out, shard_frames=shard_frames, progress=False)
    if not keep_parts:
        for part in parts:
            shutil.rmtree(part)
        folder = parts_dir(out)
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return {"store": str(store.path), **store.manifest["counts"]}


def run_encode(
    replays: str | Path,
    out: str | Path,
    files_per_group: int,
    *,
    list_files: Callable[[str], list[str]],
    encode_all: Callable[[list[tuple[list[str], str]]], Iterable[dict[str, Any]]],
    merge: Callable[[list[str], str], dict[str, Any]],
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The `encode` entrypoint: list the replays, encode groups of them in parallel (`encode_all` maps
    `encode_group` over (files, part) pairs), then merge the parts in group order into `out`."""
    files = list_files(str(replays))
    groups = group_files(files, files_per_group)
    parts = [str(parts_dir(out) / f"part_{i:05d}") for i in range(len(groups))]
    echo(f"{len(files)} replays in {len(groups)} groups of up to {files_per_group}")
    for summary in encode_all(list(zip(groups, parts, strict=True))):
        echo(f"  {summary['part']}: {summary['games']} games, {summary['frames']} frames, {summary['skipped']} skipped")
    merged = merge(parts, str(out))
    echo(f"store {merged['store']}: {merged['games']} games, {merged['frames']} frames")
    echo(f"  {merged['duplicates']} duplicates, {merged['skipped']} skipped, {merged['shards']} shards")
    return merged
