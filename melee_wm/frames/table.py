"""The table baseline: the game's physics and action dynamics as lookup tables fitted on the training split.

Position: the median per-frame acceleration of x and y per (character, action state, state-age bucket), added
to robust constant velocity; keys with fewer than `MIN_COUNT` frames back off to (action, age bucket), then
(action), then to robust constant velocity itself. Categoricals: the most frequent next id per (character,
action, age bucket, current id), backing off to (action, age bucket, current id), then to persistence. Frames
whose position jumps (`melee_wm.game.physics`) are left out of the fit. A model that does not beat this has
not learned what a few lines of counting know.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from melee_wm.data.batch import Targets
from melee_wm.data.dataset import MeleeDataset
from melee_wm.encoding.layout import NUM_PLAYERS, Layout
from melee_wm.frames.frame import NextFrame, PreviousFrame, current_frame, jumped_into, robust_displacement
from melee_wm.game.physics import position_jump

MIN_COUNT = 3  # frames a key needs before its entry is trusted over the next coarser key


def age_bucket(age_frames: Tensor | np.ndarray) -> Tensor | np.ndarray:
    """State age in frames -> bucket: each frame up to 31, then 8-frame buckets to 63, 16-frame ones to 127, then
    one bucket (actions end at exact frame counts early on; late in a long state the age says little)."""
    lib = torch if isinstance(age_frames, Tensor) else np
    a = lib.floor(lib.clip(age_frames, 0, None) + 1e-3)
    a = a.long() if isinstance(a, Tensor) else a.astype(np.int64)
    return lib.where(a < 32, a, lib.where(a < 64, 32 + (a - 32) // 8, lib.where(a < 128, 36 + (a - 64) // 16, 40)))


AGE_BUCKETS = 41


def _pack(parts: list, radices: list[int]):
    """Mixed-radix key of int arrays/tensors `parts` (each < its radix)."""
    key = parts[0] * 0
    for part, radix in zip(parts, radices, strict=True):
        key = key * radix + part
    return key


def _position_levels(char, action, bucket, layout: Layout) -> list:
    """Keys of each back-off level of the position table, finest first."""
    nc, na = layout.int_vocab("character"), layout.int_vocab("action")
    return [
        _pack([char, action, bucket], [nc, na, AGE_BUCKETS]),
        _pack([action, bucket], [na, AGE_BUCKETS]),
        action,
    ]


def _id_levels(char, action, bucket, current, vocab: int, layout: Layout) -> list:
    """Keys of each back-off level of a categorical field's table, finest first."""
    nc, na = layout.int_vocab("character"), layout.int_vocab("action")
    return [
        _pack([char, action, bucket, current], [nc, na, AGE_BUCKETS, vocab]),
        _pack([action, bucket, current], [na, AGE_BUCKETS, vocab]),
    ]


def _medians(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique keys seen >= MIN_COUNT times and the per-key median of values (N, D)."""
    order = np.argsort(keys, kind="stable")
    keys, values = keys[order], values[order]
    unique, first, count = np.unique(keys, return_index=True, return_counts=True)
    keep = count >= MIN_COUNT
    medians = [np.median(values[s : s + c], axis=0) for s, c in zip(first[keep], count[keep], strict=True)]
    return unique[keep], np.array(medians, dtype=np.float32).reshape(-1, values.shape[1])


def _modes(keys: np.ndarray, nxt: np.ndarray, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique keys seen >= MIN_COUNT times and the most frequent next id of each."""
    pairs, pair_count = np.unique(keys * vocab + nxt, return_counts=True)
    pair_key, pair_next = pairs // vocab, pairs % vocab
    order = np.lexsort((-pair_count, pair_key))  # by key, most frequent next id first
    pair_key, pair_next = pair_key[order], pair_next[order]
    unique, first = np.unique(pair_key, return_index=True)
    totals = np.bincount(np.searchsorted(unique, keys), minlength=len(unique))
    keep = totals >= MIN_COUNT
    return unique[keep], pair_next[first][keep]


def _add(tables: dict[str, Tensor], name: str, keys: np.ndarray, values: np.ndarray) -> None:
    tables[f"{name}/keys"], tables[f"{name}/values"] = torch.from_numpy(keys), torch.from_numpy(values)


class TableBaseline:
    """Fitted tables; `predict` gives the next frame of scored positions on any device. Build with `fit`."""

    def __init__(self, layout: Layout, tables: dict[str, Tensor]) -> None:
        self.layout = layout
        self.tables = tables  # "<target>/<level>/keys" (N,) int64 sorted and "<target>/<level>/values"

    @classmethod
    def fit(cls, dataset: MeleeDataset) -> TableBaseline:
        """Fit on every frame of `dataset`'s games (pass the training split). Fields a game's format lacks are
        left out of that field's table."""
        layout = dataset.layout
        samples = _collect(dataset)
        tables: dict[str, Tensor] = {}
        for level, keys in enumerate(_position_levels(*samples["position_keys"], layout)):
            k, v = _medians(keys, samples["acceleration"])
            tables[f"position/{level}/keys"], tables[f"position/{level}/values"] = (
                torch.from_numpy(k),
                torch.from_numpy(v),
            )
        for f in layout.categorical_targets:
            char, action, bucket, current, nxt = samples[f]
            vocab = layout.int_vocab(f)
            for level, keys in enumerate(_id_levels(char, action, bucket, current, vocab, layout)):
                k, v = _modes(keys, nxt, vocab)
                tables[f"{f}/{level}/keys"], tables[f"{f}/{level}/values"] = torch.from_numpy(k), torch.from_numpy(v)
        return cls(layout, tables)

    def state(self) -> dict[str, Tensor]:
        """Plain tensors (for a checkpoint; `TableBaseline(layout, state)` rebuilds it)."""
        return {k: v.cpu() for k, v in self.tables.items()}

    def to(self, device: torch.device | str) -> TableBaseline:
        self.tables = {k: v.to(device) for k, v in self.tables.items()}
        return self

    def _lookup(self, target: str, levels: list[Tensor], default: Tensor) -> Tensor:
        """Values of the first level holding each query key (queries (...), values (..., D) or (...))."""
        out, found = default.clone(), torch.zeros(levels[0].shape, dtype=torch.bool, device=default.device)
        for level, query in enumerate(levels):
            keys, values = self.tables[f"{target}/{level}/keys"], self.tables[f"{target}/{level}/values"]
            if len(keys) == 0:
                continue
            i = torch.searchsorted(keys, query.contiguous()).clamp_max(len(keys) - 1)
            hit = (keys[i] == query) & ~found
            out[hit] = values[i[hit]].to(out.dtype)
            found |= hit
        return out

    def _bucket(self, targets: Targets) -> Tensor:
        """(..., 2) state-age bucket of each player's current frame."""
        layout = self.layout
        age_col = layout.float_fields("dynamics").index("state_age")
        dynamics = targets.current_floats["dynamics"]
        dynamics = dynamics.reshape(*dynamics.shape[:-1], NUM_PLAYERS, -1)  # (..., 2, fields)
        return age_bucket(dynamics[..., age_col] / layout.cfg.state_age_scale)

    @torch.no_grad()
    def position_prior(self, targets: Targets, previous: PreviousFrame, character: Tensor) -> Tensor:
        """(..., position group width) the table's move from frame t to t + 1: robust constant velocity's move
        plus the fitted acceleration on x and y (0 on the other columns, and for a player whose position jumped
        into frame t). targets: only the current_* fields are read; character: (..., 2) ids of frame t."""
        layout = self.layout
        group, action = layout.position_group, targets.current_categorical["action"]
        current = targets.current_floats[group]
        move = robust_displacement(current, previous, action, layout)
        zero = torch.zeros(*action.shape, 2, device=action.device)
        accel = self._lookup(
            "position", _position_levels(character.long(), action, self._bucket(targets), layout), zero
        )
        accel = torch.where(jumped_into(current, previous, action, layout)[..., None], 0.0, accel)  # (..., 2, 2)
        xy = torch.tensor(layout.position_offsets, device=action.device)
        move[..., xy] = move[..., xy] + accel.flatten(-2).to(move.dtype)  # offsets are p0.x, p0.y, p1.x, p1.y
        return move

    @torch.no_grad()
    def predict(self, targets: Targets, previous: PreviousFrame, character: Tensor) -> NextFrame:
        """Next frame of the scored positions. targets: cut to the scored positions (B, P', ...; only the
        current_* fields are read); previous: their frame t - 1; character: (B, P', 2) ids of the current frame."""
        layout = self.layout
        frame = current_frame(targets)
        group = layout.position_group
        current = frame.floats[group]
        xy = torch.tensor(layout.position_offsets, device=current.device)
        position = current.clone()
        position[..., xy] = current[..., xy] + self.position_prior(targets, previous, character)[..., xy]
        frame.floats[group] = position
        action, bucket, char = targets.current_categorical["action"], self._bucket(targets), character.long()
        for f in layout.categorical_targets:
            now = targets.current_categorical[f]
            frame.categorical[f] = self._lookup(
                f, _id_levels(char, action, bucket, now, layout.int_vocab(f), layout), now
            )
        return frame


def _collect(dataset: MeleeDataset) -> dict[str, tuple | np.ndarray]:
    """Per-(frame, player) samples of every game: position keys and accelerations (encoded units) of frames
    without a jump, and (char, action, age bucket, current id, next id) of every categorical field."""
    layout = dataset.layout
    scale = layout.cfg.position_scale
    valid_ints = dataset.game_valid_ints.cpu().numpy()
    chunks: dict[str, list] = {"position": [], "acceleration": []} | {f: [] for f in layout.categorical_targets}
    for game in range(dataset.num_games):
        floats, ints = dataset.game_frames(game)
        if len(floats) < 3:
            continue
        for p in range(NUM_PLAYERS):
            xy = floats[:, [layout.player_float_index(p, "x"), layout.player_float_index(p, "y")]]
            action = ints[:, layout.int_index(f"p{p}.action")]
            char = ints[:, layout.int_index(f"p{p}.character")]
            bucket = age_bucket(floats[:, layout.player_float_index(p, "state_age")] / layout.cfg.state_age_scale)
            game_xy, act = torch.from_numpy(xy / scale), torch.from_numpy(action)
            jump = position_jump(game_xy[:-1], game_xy[1:], act[:-1], act[1:]).numpy()  # (L - 1,) into frame t+1
            smooth = ~(jump[:-1] | jump[1:])  # frames t = 1..L-2 with no jump into t or into t + 1
            t = np.arange(1, len(xy) - 1)[smooth]
            chunks["position"].append(np.stack([char[t], action[t], bucket[t]]))
            chunks["acceleration"].append(xy[t + 1] - 2 * xy[t] + xy[t - 1])
            for f in layout.categorical_targets:
                column = layout.int_index(f"p{p}.{f}")
                if not valid_ints[game, column]:
                    continue
                ids = ints[:, column]
                chunks[f].append(np.stack([char[:-1], action[:-1], bucket[:-1], ids[:-1], ids[1:]]))
    out: dict[str, tuple | np.ndarray] = {
        "position_keys": tuple(np.concatenate(chunks["position"], axis=1)),
        "acceleration": np.concatenate(chunks["acceleration"]),
    }
    for f in layout.categorical_targets:
        out[f] = tuple(np.concatenate(chunks[f], axis=1)) if chunks[f] else tuple(np.zeros((5, 0), np.int64))
    return out
