"""Cloud GPUs on Modal (README, "Cloud GPUs (Modal)"): the image, the volume, the functions and the entrypoints.

    modal run modal_launcher.py::encode --replays replays --out all
    modal run modal_launcher.py::smoke [OVERRIDE ...]
    modal run modal_launcher.py::train [--gpu=TYPE[:N]] [--fused] OVERRIDE ...
    modal run modal_launcher.py::sweep [--gpu=TYPE[:N]] [--fused] "OVERRIDES OF RUN 1" "OVERRIDES OF RUN 2" ...

Thin on purpose: every body is a plain function of `melee_wm.cloud.jobs`. One Volume (named by
$MELEE_WM_VOLUME, default `melee-wm`) is mounted at /vol: /vol/replays, /vol/stores/<name>, /vol/runs/<run_name>.
W&B: set $MELEE_WM_WANDB_SECRET to the name of a Modal Secret holding WANDB_API_KEY; without it W&B runs offline.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import modal

from melee_wm.cloud import jobs, spec

ROOT = Path(__file__).resolve().parent
CONF_DIR = ROOT / "conf"


def _runtime(base: modal.Image) -> modal.Image:
    """A CUDA build of torch and the package's pinned dependencies on `base`."""
    return (
        base.pip_install(spec.TORCH)
        .pip_install(*spec.PACKAGES)
        .env({"PYTHONUNBUFFERED": "1", "MELEE_WM_CONFIG_DIR": spec.REMOTE_CONF})
    )


def _with_source(image: modal.Image) -> modal.Image:
    """This package from the local source, and conf/ (YAML, which add_local_python_source would leave out)."""
    return image.add_local_python_source("melee_wm").add_local_dir(CONF_DIR, spec.REMOTE_CONF)


image = _with_source(_runtime(modal.Image.debian_slim(python_version=spec.PYTHON_VERSION)))
# The variant with mamba-ssm's fused kernels: a CUDA devel base (nvcc) in case no prebuilt wheel matches.
fused_image = _with_source(
    _runtime(modal.Image.from_registry(spec.CUDA_DEVEL_IMAGE, add_python=spec.PYTHON_VERSION))
    .env(spec.MAMBA_BUILD_ENV)
    .pip_install(*spec.MAMBA_BUILD_DEPS)
    .pip_install(*spec.MAMBA_PACKAGES, *spec.MAMBA_RUNTIME_PINS, extra_options="--no-build-isolation")
)

volume = modal.Volume.from_name(spec.volume_name(), create_if_missing=True)
VOLUMES = {spec.VOLUME_PATH: volume}
SECRETS = [modal.Secret.from_name(name)] if (name := spec.wandb_secret_name()) else []

app = modal.App(spec.APP_NAME)


def _commit_volume() -> None:
    """Commit the volume. A module-level function, so ddp_spawn's workers can unpickle it (by reference)."""
    volume.commit()


def _commit_or_none():
    """The volume's commit inside a container; None under `.local()` (where a commit raises AuthError)."""
    return None if modal.is_local() else _commit_volume


def _reload() -> None:
    """See what other containers committed (a warm container keeps its old view otherwise)."""
    if not modal.is_local():
        volume.reload()


# ----- functions (run in containers) -----

_TRAIN = {"timeout": spec.TRAIN_TIMEOUT_S, "volumes": VOLUMES, "secrets": SECRETS, "gpu": spec.DEFAULT_GPU}


@app.function(image=image, **_TRAIN)
def train_run(overrides: list[str], volume_root: str = spec.VOLUME_PATH) -> dict:
    """One training run (pure-PyTorch image)."""
    return jobs.train_job(overrides, volume_root, _commit_or_none())


@app.function(image=fused_image, **_TRAIN)
def train_run_fused(overrides: list[str], volume_root: str = spec.VOLUME_PATH) -> dict:
    """One training run on the image with mamba-ssm (fused kernels)."""
    return jobs.train_job(overrides, volume_root, _commit_or_none())


@app.function(image=image, gpu=spec.SMOKE_GPU, timeout=spec.SMOKE_TIMEOUT_S, volumes=VOLUMES, secrets=SECRETS)
def smoke_run(overrides: list[str], volume_root: str = spec.VOLUME_PATH) -> dict:
    """A short run that must show batches, a committed checkpoint and the W&B URL (or offline)."""
    commit = _commit_or_none()
    result = jobs.train_job(overrides, volume_root, commit)
    return {**result, "lines": jobs.smoke_lines(result, committed=commit is not None)}


@app.function(image=image, volumes=VOLUMES, timeout=spec.LIST_TIMEOUT_S)
def list_replays(folder: str) -> list[str]:
    _reload()
    return jobs.list_replays(folder)


@app.function(
    image=image,
    volumes=VOLUMES,
    cpu=spec.ENCODE_CPUS,
    memory=spec.ENCODE_MEMORY_MIB,
    timeout=spec.ENCODE_TIMEOUT_S,
    retries=1,
)
def encode_group(
    files: list[str], part: str, encoding: list[str], workers: int = spec.ENCODE_WORKERS, shard_frames: int = 1_000_000
) -> dict:
    _reload()
    summary = jobs.encode_group(files, part, encoding, None, workers, shard_frames)
    if (commit := _commit_or_none()) is not None:
        commit()
    return summary


@app.function(image=image, volumes=VOLUMES, memory=spec.ENCODE_MEMORY_MIB, timeout=spec.MERGE_TIMEOUT_S)
def merge_parts(parts: list[str], out: str, shard_frames: int = 1_000_000, keep_parts: bool = False) -> dict:
    _reload()
    summary = jobs.merge_parts(parts, out, shard_frames, keep_parts)
    if (commit := _commit_or_none()) is not None:
        commit()
    return summary


# ----- local entrypoints (`modal run modal_launcher.py::NAME ...`) -----


def _trainer(options: jobs.LaunchOptions, plans: list[list[str]]) -> modal.Function:
    fused = options.fused or any(jobs.needs_fused(p) for p in plans)
    return (train_run_fused if fused else train_run).with_options(gpu=str(options.gpu))


@app.local_entrypoint()
def train(*args: str) -> None:
    """`[--gpu=TYPE[:N]] [--fused] OVERRIDE ...`: one run; prints its directory and final metrics."""
    options, overrides = jobs.split_launcher_args(args, spec.default_gpu())
    plan = jobs.plan_train(overrides, options.gpu, spec.VOLUME_PATH)
    print(f"run {jobs.run_dir_of(plan)} on {options.gpu}: {shlex.join(plan)}")
    result = _trainer(options, [plan]).remote(plan)
    print(f"run {result['run_dir']}: checkpoints {result['checkpoints']}, W&B {result['wandb']}")
    print(json.dumps(jobs.summary_metrics(result["metrics"]), indent=2))


@app.local_entrypoint()
def sweep(*args: str) -> None:
    """`[--gpu=...] [--fused] "SET 1" "SET 2" ...`: parallel runs, one per quoted override set; exits non-zero
    if any failed."""
    options, sets = jobs.split_launcher_args(args, spec.default_gpu())
    plans = jobs.plan_sweep([shlex.split(s) for s in sets], options.gpu, spec.VOLUME_PATH)
    for plan in plans:
        print(f"run {jobs.run_dir_of(plan)}: {shlex.join(plan)}")
    jobs.run_sweep(plans, _trainer(options, plans).spawn)


@app.local_entrypoint()
def smoke(*args: str) -> None:
    """`[--gpu=TYPE] [OVERRIDE ...]`: the smoke experiment on one GPU for one short epoch."""
    options, extra = jobs.split_launcher_args(args, spec.SMOKE_GPU)
    if options.gpu.count != 1:
        raise ValueError(f"smoke runs on one GPU, got --gpu={options.gpu}")
    plan = jobs.plan_train([*jobs.SMOKE_OVERRIDES, *extra], options.gpu, spec.VOLUME_PATH)
    result = smoke_run.with_options(gpu=str(options.gpu)).remote(plan)
    print("\n".join(result["lines"]))


@app.local_entrypoint()
def encode(
    replays: str = spec.REPLAYS_SUBDIR,
    out: str = "all",
    files_per_group: int = spec.DEFAULT_FILES_PER_GROUP,
    encoding: str = "",
    shard_frames: int = 1_000_000,
    keep_parts: bool = False,
) -> None:
    """Encode /vol/<replays> into /vol/stores/<out>: groups of files on parallel containers, then one merge.
    `encoding`: EncodingConfig overrides, space-separated KEY=VALUE."""
    folder = jobs.volume_path(spec.VOLUME_PATH, replays)
    store = jobs.volume_path(spec.VOLUME_PATH, out, spec.STORES_SUBDIR)
    settings = shlex.split(encoding)
    jobs.run_encode(
        folder,
        store,
        files_per_group,
        list_files=list_replays.remote,
        encode_all=lambda pairs: encode_group.starmap(
            [(files, part, settings, spec.ENCODE_WORKERS, shard_frames) for files, part in pairs]
        ),
        merge=lambda parts, target: merge_parts.remote(parts, target, shard_frames, keep_parts),
    )
