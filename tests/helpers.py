"""Small helpers shared by several test modules."""

from __future__ import annotations

import lightning as L


def quiet_trainer(**kwargs) -> L.Trainer:
    """A Lightning Trainer without loggers, checkpoints, progress bar or summary, using our own batch sampler
    (`use_distributed_sampler=False`); validation off unless `limit_val_batches` is given."""
    options = {
        "limit_val_batches": 0,
        "use_distributed_sampler": False,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return L.Trainer(**(options | kwargs))
