"""A store's summary as rich tables (`melee-wm info`, the end of `encode` and `merge`).

Apart from `store.py` so that reading a store needs no table printer (the GPU check's machine reads stores
without it being required).
"""

from __future__ import annotations

from collections import Counter

from rich.console import Console
from rich.table import Table


def print_summary(manifest: dict, console: Console, *, added: Counter | None = None, details: bool = False) -> None:
    """Print a store's counts, skip reasons and repairs; with `details`, stage/character counts and column
    statistics too. `added` (what one build run contributed) is shown beside the totals."""
    counts = manifest["counts"]
    console.print(f"config hash {manifest['config_hash']}, complete: {manifest['complete']}")
    table = Table(title="store")
    table.add_column("")
    table.add_column("total", justify="right")
    if added is not None:
        table.add_column("this run", justify="right")
    for key in ("games", "frames", "shards", "duplicates", "skipped"):
        cells = [key, f"{counts[key]:,}"]
        if added is not None:
            cells.append("" if key == "shards" else f"{added[key]:,}")
        table.add_row(*cells)
    console.print(table)
    reasons = Counter(r["reason"] for r in manifest["skipped"])
    if reasons:
        skipped = Table(title="skipped by reason")
        skipped.add_column("files", justify="right")
        skipped.add_column("reason")
        for reason, n in reasons.most_common():
            skipped.add_row(str(n), reason)
        console.print(skipped)
    repairs = manifest["repairs"]
    if repairs["nonfinite"] or repairs["clamped"]:
        fixed = Table(title="repaired values")
        for name in ("kind", "column", "values"):
            fixed.add_column(name)
        for kind, columns in repairs.items():
            for column, n in columns.items():
                fixed.add_row(kind, column, f"{n:,}")
        console.print(fixed)
    else:
        console.print("repaired values: none")
    if not details:
        return
    for key, title in (("stage", "stage ids"), ("characters", "character ids (external)")):
        values = Counter(c for g in manifest["games"] for c in (g[key] if key == "characters" else [g[key]]))
        tally = Table(title=f"games by {title}")
        tally.add_column("id", justify="right")
        tally.add_column("count", justify="right")
        for value, n in sorted(values.items()):
            tally.add_row(str(value), str(n))
        console.print(tally)
    stats = Table(title="column statistics")
    for name in ("column", "mean", "std", "min", "max"):
        stats.add_column(name, justify="left" if name == "column" else "right")
    for column, s in manifest["column_stats"].items():
        stats.add_row(column, *("-" if s[k] is None else f"{s[k]:.4g}" for k in ("mean", "std", "min", "max")))
    console.print(stats)
