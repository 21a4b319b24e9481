"""Running statistics of a store's columns, merged game by game while the store is written."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from melee_wm.encoding.encoder import ColumnMoments, column_moments


class ColumnStats:
    """Streaming float64 count / sum / sum of squares / min / max of each column."""

    def __init__(self, num_columns: int) -> None:
        self.count = 0
        self.sum = np.zeros(num_columns)
        self.sumsq = np.zeros(num_columns)
        self.min = np.full(num_columns, np.inf)
        self.max = np.full(num_columns, -np.inf)

    def update(self, values: np.ndarray) -> None:
        """values: (rows, num_columns)."""
        self.merge(column_moments(np.ascontiguousarray(values.T)))

    def merge(self, moments: ColumnMoments) -> None:
        """Add the moments of more rows (e.g. one encoded game's, computed in the worker)."""
        if moments.count == 0:
            return
        self.count += moments.count
        self.sum += moments.sum
        self.sumsq += moments.sumsq
        self.min = np.minimum(self.min, moments.min)
        self.max = np.maximum(self.max, moments.max)

    def to_dict(self, names: Sequence[str]) -> dict[str, dict[str, float | None]]:
        """{column name: {mean, std, min, max}} as the manifest holds them (all None for no rows)."""
        if self.count == 0:
            return {n: {"mean": None, "std": None, "min": None, "max": None} for n in names}
        mean = self.sum / self.count
        std = np.sqrt(np.maximum(self.sumsq / self.count - mean**2, 0.0))
        return {
            n: {"mean": float(mean[i]), "std": float(std[i]), "min": float(self.min[i]), "max": float(self.max[i])}
            for i, n in enumerate(names)
        }
