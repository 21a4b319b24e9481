"""`Batch`: context frames, next controller inputs and next-frame targets, built from gathered windows.

A window is K + 1 consecutive frames s..s+K of one game. Position t (0 <= t < K) sees frames s..s+t and the
controller of frame s+t+1, and predicts frame s+t+1. With P predicted positions (K or 1) the targets cover
the last P positions, matching the last P positions of the model's (B, K, ...) outputs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

from melee_wm.encoding.layout import NUM_PLAYERS, POSITION_FIELDS, Layout, Target

T = TypeVar("T")


def map_tensors(obj: T, fn: Callable[[Tensor], Tensor]) -> T:
    """Apply `fn` to every tensor in a (nested) dataclass, dict, list or (named) tuple; other leaves are kept."""
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a NamedTuple takes its fields positionally
        return type(obj)(*(map_tensors(v, fn) for v in obj))
    if isinstance(obj, list | tuple):
        return type(obj)(map_tensors(v, fn) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return type(obj)(**{f.name: map_tensors(getattr(obj, f.name), fn) for f in dataclasses.fields(obj)})
    return obj


class _TensorTree:
    """`to` / `pin_memory` for a dataclass of tensors (what Lightning and the DataLoader call)."""

    def to(self: T, device: torch.device | str, non_blocking: bool = False) -> T:
        """A copy with every tensor moved to `device`."""
        return map_tensors(self, lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self: T) -> T:
        """A copy with every tensor in pinned (page-locked) host memory."""
        return map_tensors(self, lambda t: t.pin_memory())


@dataclass
class Targets(_TensorTree):
    """What the next frame is, and what the current frame was, at each of the P predicted positions.

    floats: group -> (B, P, width) per `layout.target_float_groups`: DELTA groups next - current, ABSOLUTE and
        BINARY groups the next value.
    categorical: field -> (B, P, 2) long ids of the next frame, per `layout.categorical_targets`.
    current_floats: group -> (B, P, width) the current frame's values (to turn predicted deltas into values).
    current_categorical: field -> (B, P, 2) long ids of the current frame (for change accuracy).
    """

    floats: dict[str, Tensor]
    categorical: dict[str, Tensor]
    current_floats: dict[str, Tensor]
    current_categorical: dict[str, Tensor]


@dataclass
class Batch(_TensorTree):
    """floats: (B, K, num_floats) and ints: (B, K, num_ints) context frames s..s+K-1 (ints keep the store's
    dtype); next_ctrl: (B, K, num_ctrl) controller columns of frames s+1..s+K, i.e. of the frame after every
    context position (the model's forward runs every position; targets cover the last P of them).
    valid_floats / valid_ints mark the columns whose field the window's game records (replay formats before
    some Slippi versions lack fields, which then hold defaults): losses and metrics skip the others. counted
    marks the windows that count at all: a DDP rank's last validation batch is padded with windows another rank
    also scores (`WindowItem`), and losses and metrics skip them, so every window is scored once."""

    floats: Tensor
    ints: Tensor
    next_ctrl: Tensor
    targets: Targets
    valid_floats: Tensor | None = None  # (B, num_floats) bool: False where the window's game lacks the field
    valid_ints: Tensor | None = None  # (B, num_ints) bool
    counted: Tensor | None = None  # (B,) bool: False for a padding repeat; None when every window counts

    def model_inputs(self) -> dict[str, Tensor | None]:
        """The keyword arguments of a world model's `forward` over this batch's context (frames, next
        controllers and the column validity its missing-field indicators read)."""
        return {
            "floats": self.floats,
            "ints": self.ints,
            "next_ctrl": self.next_ctrl,
            "valid": self.valid_floats,
            "valid_ints": self.valid_ints,
        }

    @property
    def num_counted(self) -> int:
        """Windows that count (all B unless some pad a DDP rank's batch)."""
        return self.floats.shape[0] if self.counted is None else int(self.counted.sum())

    @property
    def num_positions(self) -> int:
        """P: positions with targets (the last P of the K)."""
        return next(iter(self.targets.categorical.values())).shape[1]


@dataclass
class ColumnMask:
    """Which entries of a batch hold data and count, per window (broadcast over positions); absent keys are all
    valid.

    floats: group -> (B, 1, width) bool; categorical: field -> (B, 1, 2) bool.
    """

    floats: dict[str, Tensor]
    categorical: dict[str, Tensor]

    @classmethod
    def of_batch(cls, batch: Batch, layout: Layout) -> ColumnMask | None:
        """The mask of a `Batch`'s windows: its `valid_floats` / `valid_ints`, every column of a window that is not
        `counted` cleared; None when the batch has neither."""
        if batch.valid_floats is None and batch.counted is None:
            return None
        b, device = batch.floats.shape[0], batch.floats.device
        valid_f, valid_i = batch.valid_floats, batch.valid_ints
        if valid_f is None:
            valid_f = torch.ones(b, layout.num_floats, dtype=torch.bool, device=device)
            valid_i = torch.ones(b, layout.num_ints, dtype=torch.bool, device=device)
        if batch.counted is not None:
            valid_f, valid_i = valid_f & batch.counted[:, None], valid_i & batch.counted[:, None]
        return cls.from_columns(layout, valid_f, valid_i)

    @classmethod
    def from_columns(cls, layout: Layout, float_valid: Tensor, int_valid: Tensor) -> ColumnMask:
        """From per-window column validity: float_valid (B, num_floats) and int_valid (B, num_ints) bool (e.g. the
        negation of `melee_wm.encoding.missing.invalid_columns` of each window's game)."""
        return cls(
            floats={g: float_valid[:, None, layout.float_slice(g)] for g in layout.target_float_groups},
            categorical={f: int_valid[:, None, layout.int_slice(f)] for f in layout.categorical_targets},
        )


def build_batch(window_floats: Tensor, window_ints: Tensor, layout: Layout, num_positions: int) -> Batch:
    """Split gathered windows into context and targets, on whatever device they live on.

    window_floats: (B, K + 1, num_floats); window_ints: (B, K + 1, num_ints); num_positions: P, 1 <= P <= K.
    """
    k = window_floats.shape[1] - 1
    if not 1 <= num_positions <= k:
        raise ValueError(f"num_positions must be in [1, {k}] for windows of {k + 1} frames, got {num_positions}")
    cur_f = window_floats[:, k - num_positions : k]
    nxt_f = window_floats[:, k - num_positions + 1 :]
    ids = window_ints[:, k - num_positions :].long()  # one conversion; current and next ids are views of it
    # One subtraction over the columns spanned by the DELTA groups (adjacent in the layout); groups are views.
    spans = [layout.float_slice(g) for g in layout.target_float_groups if layout.float_target(g) == Target.DELTA]
    lo, hi = min(s.start for s in spans), max(s.stop for s in spans)
    delta = nxt_f[..., lo:hi] - cur_f[..., lo:hi]
    floats, current_floats = {}, {}
    for group in layout.target_float_groups:
        cols = layout.float_slice(group)
        current_floats[group] = cur_f[..., cols]
        is_delta = layout.float_target(group) == Target.DELTA
        floats[group] = delta[..., cols.start - lo : cols.stop - lo] if is_delta else nxt_f[..., cols]
    categorical = {f: ids[:, 1:, layout.int_slice(f)] for f in layout.categorical_targets}
    current_categorical = {f: ids[:, :-1, layout.int_slice(f)] for f in layout.categorical_targets}
    return Batch(
        floats=window_floats[:, :k],
        ints=window_ints[:, :k],
        next_ctrl=window_floats[:, 1:, layout.float_slice("controller")],
        targets=Targets(floats, categorical, current_floats, current_categorical),
    )


def select_xy(group_values: Tensor, layout: Layout) -> Tensor:
    """group_values: (..., width) of `layout.position_group` -> (..., 2 players, 2 coords) x and y."""
    xy = torch.tensor(layout.position_offsets, device=group_values.device)
    return group_values[..., xy].unflatten(-1, (NUM_PLAYERS, len(POSITION_FIELDS)))


def next_values(layout: Layout, group: str, values: Tensor, current: Tensor) -> Tensor:
    """Next-frame values of a target float group from a target or prediction `values` (..., width): DELTA
    groups add the current frame's `current` (..., width), the others already are next-frame values."""
    return current + values if layout.float_target(group) == Target.DELTA else values
