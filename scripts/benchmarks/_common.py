"""Helpers shared by the benchmarks (not a benchmark itself: the runner skips modules starting with "_").

Every line a benchmark yields is a `record`: a dict whose first key, `name`, says what was measured; the last
line is the `summary` (`name: "summary"`, `ratio`, `target`, `passed`, then anything else it reports).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from melee_wm.data.batch import Targets
from melee_wm.encoding.layout import Layout, Target
from melee_wm.model.heads import Prediction

SUMMARY = "summary"
SUMMARY_KEYS = ("name", "ratio", "target", "passed")


def record(name: str, **fields: Any) -> dict[str, Any]:
    """One JSON line of a benchmark: `name` (what was measured), then its fields."""
    if "name" in fields:
        raise ValueError(f"record {name!r}: 'name' is given twice")
    return {"name": name, **fields}


def summary(ratio: float, target: float, passed: bool, **fields: Any) -> dict[str, Any]:
    """The last line of every benchmark: the measured `ratio`, the `target` it should reach, whether it `passed`
    (every check the benchmark makes), then any other fields."""
    return record(SUMMARY, ratio=ratio, target=target, passed=bool(passed), **fields)


def stand_in_loss(pred: Prediction, targets: Targets, layout: Layout) -> Tensor:
    """A loss touching every head, standing in for the training code's: BCE on logits for BINARY float groups,
    MSE for the other float groups, NLL of `log_probs` for categorical fields.

    pred: (B, K, ...) outputs at every position; targets: (B, P, ...) for the last P of them (P <= K).
    """
    losses = []
    for g in layout.target_float_groups:
        target = targets.floats[g]
        out = pred.floats[g][:, -target.shape[1] :]
        if layout.float_target(g) == Target.BINARY:
            losses.append(F.binary_cross_entropy_with_logits(out, target))
        else:
            losses.append(F.mse_loss(out, target))
    for f in layout.categorical_targets:
        target = targets.categorical[f]
        logp = pred.log_probs(f)[:, -target.shape[1] :]
        losses.append(F.nll_loss(logp.flatten(0, -2), target.flatten()))
    return sum(losses)


def alternating_medians(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median wall time in seconds of each function, called in turn once per round (so a busy neighbour slows
    them alike)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def median_time(fn: Callable[[], object], reps: int) -> float:
    """Median wall time of `reps` calls of `fn`, in seconds."""
    return alternating_medians({"fn": fn}, reps)["fn"]
