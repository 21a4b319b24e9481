"""The run directory's checkpoints: their names, the data fingerprint beside them, writing them so that a crash
never leaves a partial file under a final name, and reading them back (a world model with its codec, or the
newest readable checkpoint to resume from) with errors that name the file and what is wrong with it.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from melee_wm.data.store import Store
from melee_wm.training.module import WorldModelModule

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
BEST_STEM = "best"
EPOCH_STEM = "epoch={epoch:03d}"
EPOCH_GLOB = "epoch=*.ckpt"
FINGERPRINT_FILE = "data_fingerprint.json"
PARTIAL_SUFFIX = ".partial"  # a checkpoint being written; renamed to its final name once complete
HPARAM_KEYS = ("config", "target_stats")
EXPECTED = "a checkpoint written by `python train.py` (a PyTorch zip archive holding state_dict and hyperparameters)"


class CheckpointError(ValueError):
    """A file that is not a readable world-model checkpoint (the message names it and what is wrong)."""


def data_fingerprint(store: Store) -> dict[str, Any]:
    """What identifies the data a run saw: encoding config hash, game count and the md5 of the game list."""
    md5s = sorted(g.md5 for g in store.games)
    return {
        "store": str(store.path),
        "config_hash": store.manifest["config_hash"],
        "games": len(md5s),
        "frames": store.num_frames,
        "games_md5": hashlib.md5("\n".join(md5s).encode()).hexdigest(),
    }


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint as `<name>.partial` in its own folder, fsync it, then rename it over `<name>`: a
    process killed mid-save leaves the previous file intact. (Lightning's own save goes through a temporary file
    in the system temp folder, and moving it onto another filesystem is a copy onto the final name.)"""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """Save `checkpoint` to `path` atomically (`storage_options` is not supported, as in TorchCheckpointIO)."""
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + PARTIAL_SUFFIX)
        with open(partial, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)


def _what_is_wrong(path: Path, err: BaseException) -> str:
    """One phrase for why torch could not read `path` (torch's own text for a non-archive is unpickler internals)."""
    size = path.stat().st_size
    if size == 0:
        return "the file is empty"
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            zip_header = f.read(4) == b"PK\x03\x04"
        return f"truncated or damaged zip archive ({size:,} bytes)" if zip_header else "not a zip archive"
    return f"damaged archive ({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else 'no detail'})"


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """The dict a checkpoint file holds, loaded with `weights_only=True` on the CPU (`mmap`: tensors stay on disk).

    FileNotFoundError when the file is absent; CheckpointError, naming the file, what is wrong and what was
    expected, when it cannot be read as a checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{path} is not a readable checkpoint: {_what_is_wrong(path, err)}; expected {EXPECTED}"
        ) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(
            f"{path} is not a readable checkpoint: it holds a {type(ckpt).__name__}; expected {EXPECTED}"
        )
    return ckpt


def load_world_model(path: str | Path, device: str | torch.device = "cpu") -> WorldModelModule:
    """A `WorldModelModule` from a checkpoint written by training, in eval mode on `device`.

    FileNotFoundError when the file is absent; CheckpointError when it is not a readable checkpoint or not one
    of a world model (no `config` / `target_stats` hyperparameters or a state dict that does not fit)."""
    ckpt = read_checkpoint(path)
    hparams = ckpt.get("hyper_parameters")
    if not isinstance(hparams, dict) or not all(k in hparams for k in HPARAM_KEYS) or "state_dict" not in ckpt:
        raise CheckpointError(
            f"{path} is not a world-model checkpoint: it lacks the WorldModelModule hyperparameters {HPARAM_KEYS} "
            "or a state_dict"
        )
    try:
        module = WorldModelModule(hparams["config"], hparams["target_stats"])
        module.load_state_dict(ckpt["state_dict"])
        module.on_load_checkpoint(ckpt)  # the fitted table baseline (and RNG states)
    except (RuntimeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: its weights do not fit the model its config describes ({err})") from None
    return module.to(device).eval()


@dataclass
class ResumePoint:
    """Where a resumed run continues: `path` (None: no checkpoint was written yet, so from the first step), the
    run's checkpoints that could not be read (file -> what is wrong) and the partial files removed."""

    path: Path | None
    global_step: int = 0
    unreadable: dict[Path, str] = field(default_factory=dict)
    removed_partials: list[Path] = field(default_factory=list)

    def describe(self) -> list[str]:
        """What the resume does, one line each, for the console."""
        lines = [f"removed {p}: a checkpoint whose save was interrupted" for p in self.removed_partials]
        lines += [f"cannot resume from {p}: {why}" for p, why in self.unreadable.items()]
        if self.path is None:
            lines.append("no checkpoint was written before the run stopped: starting it again from its first step")
        else:
            newest = "the newest readable checkpoint" if self.unreadable else "the newest checkpoint"
            lines.append(f"resuming from {self.path} (global step {self.global_step}), {newest}")
        return lines


def find_resume_point(checkpoint_dir: Path) -> ResumePoint:
    """The newest readable checkpoint of a run (highest global step among `last.ckpt` and `epoch=NNN.ckpt`; the
    `last` file on a tie), after removing the partial files a crash mid-save leaves behind.

    A run killed between writing `epoch=NNN.ckpt` and `last.ckpt` resumes from the epoch file, so it ends with
    the files a clean run has. Raises CheckpointError when checkpoints exist and none of them can be read."""
    removed = sorted(checkpoint_dir.glob(f"*{PARTIAL_SUFFIX}"))
    for partial in removed:
        partial.unlink()
    candidates = [*sorted(checkpoint_dir.glob(EPOCH_GLOB)), checkpoint_dir / LAST_CHECKPOINT]
    steps: dict[Path, int] = {}
    unreadable: dict[Path, str] = {}
    for path in (p for p in candidates if p.is_file()):
        try:
            steps[path] = int(read_checkpoint(path, mmap=True)["global_step"])
        except (CheckpointError, KeyError, TypeError, ValueError) as err:
            unreadable[path] = str(err) if isinstance(err, CheckpointError) else f"no global_step ({err})"
    if not steps:
        if unreadable:
            raise CheckpointError(
                f"no readable checkpoint in {checkpoint_dir}: "
                + "; ".join(unreadable.values())
                + ". Start a new run (another run_name), or remove this run's folder to reuse its name"
            )
        return ResumePoint(None, 0, {}, removed)
    newest = max(steps, key=lambda p: (steps[p], p.name == LAST_CHECKPOINT))
    return ResumePoint(newest, steps[newest], unreadable, removed)
