"""Keep the framework's advertisements and notices a user cannot act on out of a run's output."""

from __future__ import annotations

import logging
import warnings

# Lightning info lines that say nothing about this run: an advertisement and restatements of our own settings.
NOISE = ("💡 Tip:", "was configured so", "Loading `train_dataloader`", "Loading `val_dataloader`")
LIGHTNING_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
# Under DDP Lightning asks for `sync_dist=True` on every epoch-level value; the module's metric dicts are
# `FrameMetrics.compute()` results, already reduced over all ranks (tests/test_val_scoring.py), one warning each.
REDUCED_METRICS_ADVICE = r"It is recommended to use `self\.log(_dict)?\('(train|val|baseline|rollout)/"


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(part in record.getMessage() for part in NOISE)


def silence_framework_noise() -> None:
    """Drop the lines of `NOISE`, Lightning's sync advice for values already reduced over ranks and a deprecation
    inside Lightning itself (torch's pytree API); idempotent."""
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=REDUCED_METRICS_ADVICE)
