"""The end-of-run picture: train/val loss and the headline validation metrics beside both baselines."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

PLOT_FILE = "training.png"
# (metric key without the stage prefix, panel title); the baselines' values of the same key are drawn flat.
HEADLINE = (("pos_mae/all", "position MAE (game units)"), ("change_acc/all", "action change accuracy"))


def series(rows: list[dict[str, float]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of `key` over the history rows that hold a finite value of it."""
    points = [(r["step"], r[key]) for r in rows if key in r and math.isfinite(r[key])]
    return [p[0] for p in points], [p[1] for p in points]


def plot_training(history: Path, baselines: dict[str, dict[str, float]], out: Path) -> Path | None:
    """Draw the loss curves and the headline metrics of `history` (the `MetricHistory` JSON) into `out`;
    None when there is no history (a run stopped before its first validation)."""
    if not history.is_file():
        return None
    rows = json.loads(history.read_text())
    fig, axes = plt.subplots(1, 1 + len(HEADLINE), figsize=(5 * (1 + len(HEADLINE)), 4))
    for key, label in (("train/loss", "train"), ("val/loss", "val")):
        steps, values = series(rows, key)
        axes[0].plot(steps, values, label=label, marker="o" if label == "val" else None, markersize=3)
    axes[0].set(title="loss", xlabel="optimizer step")
    axes[0].legend()
    for ax, (key, title) in zip(axes[1:], HEADLINE, strict=True):
        steps, values = series(rows, f"val/{key}")
        ax.plot(steps, values, marker="o", markersize=3, label="model (val)")
        for name, scores in baselines.items():
            if math.isfinite(scores.get(key, math.nan)):
                ax.axhline(scores[key], linestyle="--", color="grey" if name == "persistence" else "black", label=name)
        ax.set(title=title, xlabel="optimizer step")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
