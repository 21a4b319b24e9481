"""`evaluate_checkpoint`: rollout evaluation of a saved world model on a store (what `melee-wm eval` runs).

Which games count as evaluation data: by default the checkpoint's validation split (its `val_fraction` and
`split_salt`), in whatever store is given. The split is a hash of each game's md5, so a game the model trained
on is never scored, whichever store holds it. `all_games=True` scores every game, for a store known to hold
only games the model never saw; when the store is not the run's training store (its game list differs from the
run's `data_fingerprint.json`) the report says so, and the CLI suggests the flag. The store's encoding config
must equal the checkpoint's (`StoreConfigError` names the differing fields).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from melee_wm.data.store import open_store
from melee_wm.eval.pictures import save_pictures
from melee_wm.eval.rollout_eval import RolloutReport, evaluate_rollouts, rollout_windows, save_report
from melee_wm.training.checkpoint import CHECKPOINT_DIR, FINGERPRINT_FILE, data_fingerprint, load_world_model


def training_fingerprint(checkpoint: Path) -> dict[str, Any] | None:
    """The run's `data_fingerprint.json` when the checkpoint sits in a run's `checkpoints/` folder."""
    path = checkpoint.parent.parent / FINGERPRINT_FILE
    if checkpoint.parent.name != CHECKPOINT_DIR or not path.is_file():
        return None
    return json.loads(path.read_text())


def default_out_dir(checkpoint: Path) -> Path:
    """<run>/eval/<checkpoint stem> for a checkpoint in a run's `checkpoints/`, else eval_<stem> beside it."""
    if checkpoint.parent.name == CHECKPOINT_DIR:
        return checkpoint.parent.parent / "eval" / checkpoint.stem
    return checkpoint.parent / f"eval_{checkpoint.stem}"


def evaluate_checkpoint(
    checkpoint: str | Path,
    store: str | Path,
    horizon: int = 20,
    samples: int = 300,
    seed: int = 42,
    out: str | Path | None = None,
    all_games: bool = False,
    device: str | None = None,
    pictures: bool = True,
    batch_size: int = 256,
) -> tuple[RolloutReport, Path]:
    """Roll out `samples` seeded starts of `store` for `horizon` frames with the checkpoint's model and both
    baselines; write `eval_rollout.json` (and the pictures) into `out`. Returns the report and the folder."""
    checkpoint = Path(checkpoint)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    module = load_world_model(checkpoint, device)
    cfg = module.cfg
    opened = open_store(store, expected_config=cfg.encoding)
    split = "all" if all_games else "val"
    windows = rollout_windows(opened, split, cfg.data, cfg.encoding, cfg.data.context_len, horizon)
    if len(windows) == 0:
        raise ValueError(
            f"store {opened.path}: split {split!r} has no window of {cfg.data.context_len + horizon} frames "
            f"({windows.num_games} games; val_fraction={cfg.data.val_fraction}, split_salt={cfg.data.split_salt!r})"
        )
    report = evaluate_rollouts(
        module.net, module.codec, windows, cfg.data.context_len, samples, seed, batch_size, module.table
    )
    trained_on = training_fingerprint(checkpoint)
    same = None if trained_on is None else trained_on["games_md5"] == data_fingerprint(opened)["games_md5"]
    report.meta = {
        "checkpoint": str(checkpoint),
        "store": str(opened.path),
        "split": split,
        "training_store": None if trained_on is None else trained_on["store"],
        "same_games_as_training_store": same,
    }
    folder = Path(out) if out is not None else default_out_dir(checkpoint)
    save_report(report, folder)
    if pictures:
        save_pictures(report, module.layout, folder)
    return report, folder
