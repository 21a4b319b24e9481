"""Print a Markdown table of finished runs beside the strongest baselines, from their `final_metrics.json`.

    python scripts/ablation_table.py runs/campaign_*/*      # every job of one or more multiruns

Each row is a run (its overrides from `.hydra/overrides.yaml` when Hydra wrote one, else its folder name) with
the validation headline metrics; the last rows are the baselines of the first run (all runs of one split score
the same baseline numbers on the same frames: the table says so when they differ).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from melee_wm.eval.baselines import BASELINES

METRICS = (  # (key, column title)
    ("pos_mae/all", "pos all"),
    ("pos_mae_smooth/all", "pos no-jump"),
    ("action_acc/all", "action acc"),
    ("change_acc/all", "change acc"),
    ("false_change/all", "false change"),
)


def overrides(run: Path) -> list[str]:
    """The command-line overrides Hydra recorded for a run (empty when it wrote none)."""
    path = run / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    return [line.strip().removeprefix("- ") for line in path.read_text().splitlines() if line.strip()]


def run_labels(runs: list[Path]) -> dict[Path, str]:
    """Each run's overrides that not every run shares (what the row changes), else the run folder's name."""
    shared = set.intersection(*(set(overrides(r)) for r in runs)) if len(runs) > 1 else set()
    labels = {}
    for run in runs:
        own = [o for o in overrides(run) if o not in shared and not o.startswith(("run_name=", "paths."))]
        labels[run] = " ".join(own) or ("defaults" if overrides(run) else run.name)
    return labels


def table(runs: list[Path]) -> str:
    """Markdown rows: one per run, then one per baseline (from the first run)."""
    metrics = {run: json.loads((run / "final_metrics.json").read_text()) for run in runs}
    head = "| run | " + " | ".join(title for _, title in METRICS) + " |"
    rows = [head, "|" + "---|" * (len(METRICS) + 1)]
    labels = run_labels(runs)
    for run, m in metrics.items():
        rows.append(f"| {labels[run]} | " + " | ".join(f"{m[f'val/{k}']:.4f}" for k, _ in METRICS) + " |")
    first = metrics[runs[0]]
    for name in BASELINES:
        values = [first.get(f"baseline/{name}/{k}", float("nan")) for k, _ in METRICS]
        rows.append(f"| baseline: {name} | " + " | ".join(f"{v:.4f}" for v in values) + " |")
    differ = any(
        abs(m.get(f"baseline/{b}/{k}", math.nan) - first.get(f"baseline/{b}/{k}", math.nan)) > 1e-6
        for m in metrics.values()
        for b in BASELINES
        for k, _ in METRICS
    )
    if differ:
        rows.append("\nThe runs' baseline numbers differ: they were not scored on the same frames (another split?).")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    runs = [Path(a) for a in argv if (Path(a) / "final_metrics.json").is_file()]
    if not runs:
        print("no finished run (a folder holding final_metrics.json) among the arguments", file=sys.stderr)
        return 1
    print(table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
