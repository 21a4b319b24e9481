"""`Simulator`: a trained world model driven frame by frame, for agents that learn in imagination, planners that
branch it, and people who want to see what it believes.

N independent worlds step together. `reset` starts them from real frames (a store's game and frame, or encoded
arrays); `step` takes both players' controllers and returns the next `SimFrame`. Each step is one recurrent
`step` of the model (`melee_wm.eval.rollout.RecurrentRollout`, the loop rollout evaluation runs), so a simulated
world fed a replay's own controllers reproduces the evaluator's frames exactly. What the game guarantees holds
whatever the model outputs: percent never below 0, no stock gained (`TargetCodec.decode`), and a finished game
(a player without stocks) stays finished.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor

from melee_wm.data.batch import map_tensors
from melee_wm.data.dataset import game_validity
from melee_wm.data.store import Store, check_config, open_store
from melee_wm.encoding.layout import NUM_PLAYERS
from melee_wm.eval.rollout import RecurrentRollout
from melee_wm.frames.targets import TargetCodec
from melee_wm.model.interface import WorldModelInterface
from melee_wm.sim.controller import CONTROLLER_GROUP, Controller, encode_controllers
from melee_wm.sim.frame import SimFrame
from melee_wm.training.checkpoint import load_world_model

MIN_CONTEXT = 2  # frames: the residual position prior needs the frame before the current one
MASKS = ("valid", "valid_ints")  # reset's column-validity arguments, floats then ints


@dataclass
class SimState:
    """Everything that decides a simulator's future: the model's recurrent state, the previous and current
    encoded frames, which worlds are done, the frame count and the sampling generator's state. Copies: stepping
    the simulator never changes a saved state."""

    model: Any
    previous: tuple[Tensor, Tensor]
    current: tuple[Tensor, Tensor]
    done: Tensor
    frame: int
    rng: Tensor


def _clone(tree: Any) -> Any:
    return map_tensors(tree, lambda t: t.clone())


class Simulator:
    """N worlds of a trained model stepped together (see the module docstring).

    net, codec: the model and its target codec, on one device; context_len: the most context frames `reset`
    takes (the model's training context); temperature: 0 picks the most likely categorical ids (action state,
    jumps, ...), above 0 samples them from the softmax at that temperature with a generator seeded by `seed`.
    """

    def __init__(
        self,
        net: WorldModelInterface,
        codec: TargetCodec,
        context_len: int,
        batch_size: int = 1,
        temperature: float = 0.0,
        seed: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"Simulator: batch_size must be >= 1, got {batch_size}")
        if temperature < 0:
            raise ValueError(f"Simulator: temperature must be >= 0, got {temperature}")
        self.net, self.codec, self.layout = net, codec, codec.layout
        self.context_len, self.batch_size, self.temperature = context_len, batch_size, temperature
        self.device = next(codec.buffers()).device
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self._worlds: RecurrentRollout | None = None
        self._done = torch.zeros(batch_size, dtype=torch.bool, device=self.device)
        self._frame = 0
        stocks = [self.layout.player_float_index(p, "stocks") for p in range(NUM_PLAYERS)]
        self._stocks = torch.tensor(stocks, device=self.device)
        self._no_stock = 0.5 * self.layout.float_scale("stocks")  # an encoded stock count that rounds to 0

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        batch_size: int = 1,
        temperature: float = 0.0,
        seed: int = 0,
    ) -> Simulator:
        """A simulator of a checkpoint written by training: weights, target codec and encoding come from the file
        (no config files needed)."""
        module = load_world_model(path, device)
        return cls(module.net, module.codec, module.cfg.data.context_len, batch_size, temperature, seed)

    # Starting ---------------------------------------------------------------------------------------------------

    def reset(
        self,
        floats: ArrayLike,
        ints: ArrayLike,
        valid: ArrayLike | None = None,
        valid_ints: ArrayLike | None = None,
    ) -> SimFrame:
        """Start every world from real context frames: floats (T, num_floats) or (N, T, num_floats) and ints
        (T, num_ints) or (N, T, num_ints), encoded as a store holds them, 2 <= T <= context_len; one window is
        given to every world. valid (num_floats,) or (N, num_floats), valid_ints (num_ints,) or (N, num_ints):
        which columns hold data in the worlds' games (False: a field the replay format lacks; None: every column
        holds data), for the model's missing-field indicators. The last frame is the current one; the next `step`
        predicts the frame after it."""
        floats_t, ints_t = self._batched(floats, "floats"), self._batched(ints, "ints")
        want = (self.layout.num_floats, self.layout.num_ints)
        masks = [self._mask(m, name, width) for m, name, width in zip((valid, valid_ints), MASKS, want, strict=True)]
        if (floats_t.shape[-1], ints_t.shape[-1]) != want or floats_t.shape[1] != ints_t.shape[1]:
            raise ValueError(
                f"Simulator.reset: expected floats (.., T, {want[0]}) and ints (.., T, {want[1]}) of this model's "
                f"layout, got {tuple(floats_t.shape)} and {tuple(ints_t.shape)}"
            )
        frames = floats_t.shape[1]
        if not MIN_CONTEXT <= frames <= self.context_len:
            raise ValueError(
                f"Simulator.reset: {frames} context frames; expected {MIN_CONTEXT} to {self.context_len} "
                "(the model's context length)"
            )
        self.net.eval()
        self._worlds = RecurrentRollout(self.net, self.codec, floats_t.float(), ints_t, *masks)
        self._done = self._finished(floats_t[:, -1])
        self._frame = 0
        return self.frame

    def reset_from_store(
        self,
        store: Store | str | Path,
        game: int | Sequence[int],
        frame: int | Sequence[int],
        context: int | None = None,
    ) -> SimFrame:
        """Start every world from a store's real frames: `frame` of `game` (store order; one for every world or
        one per world) is the current frame, the `context` frames up to it (default the model's context length,
        fewer where the game has fewer before `frame`) are the context."""
        store = self.open(store)
        games, frames = self._per_world(game, "game"), self._per_world(frame, "frame")
        for g, f in zip(games, frames, strict=True):
            if not 0 <= g < store.num_games:
                raise ValueError(f"store {store.path}: no game {g} (it holds games 0..{store.num_games - 1})")
            length = store.games[g].length
            if not MIN_CONTEXT - 1 <= f < length:
                raise ValueError(
                    f"store {store.path} game {g}: frame {f} cannot start a world; expected {MIN_CONTEXT - 1} .. "
                    f"{length - 1} (the game has {length} frames and a world needs {MIN_CONTEXT} of context)"
                )
        frames_back = min([context or self.context_len, *(f + 1 for f in frames)])
        windows = [[a[f - frames_back + 1 : f + 1] for a in store.game(g)] for g, f in zip(games, frames, strict=True)]
        valid, valid_ints = game_validity(self.layout, [store.games[g].missing_fields for g in games])
        return self.reset(np.stack([w[0] for w in windows]), np.stack([w[1] for w in windows]), valid, valid_ints)

    def open(self, store: Store | str | Path) -> Store:
        """The store, opened if given as a path, after checking it was encoded with this model's encoding."""
        if isinstance(store, Store):
            check_config(store.path, store.manifest, self.layout.cfg)
            return store
        return open_store(store, expected_config=self.layout.cfg)

    # Stepping ---------------------------------------------------------------------------------------------------

    def step(self, controllers: Sequence[Controller] | ArrayLike) -> SimFrame:
        """Advance every world one frame. controllers: both players' `Controller`s (port order), or the encoded
        controller columns (N, width) of the layout's `controller` group (as a store holds them). Returns the new
        current frame; a world whose game is over keeps its frame."""
        worlds = self._require_reset()
        if isinstance(controllers, Sequence) and all(isinstance(c, Controller) for c in controllers):
            next_ctrl = torch.from_numpy(encode_controllers(self.layout, controllers, self.batch_size))
        else:
            next_ctrl = torch.as_tensor(controllers, dtype=torch.float32)
            columns = self.layout.float_slice(CONTROLLER_GROUP)
            if next_ctrl.shape != (self.batch_size, columns.stop - columns.start):
                raise ValueError(
                    f"Simulator.step: encoded controllers must be ({self.batch_size}, {columns.stop - columns.start}),"
                    f" got {tuple(next_ctrl.shape)}"
                )
        before = worlds.current
        after_f, after_i = worlds.advance(next_ctrl.to(self.device), None if self.temperature == 0 else self._sample)
        if self._done.any():  # a finished game stays finished: its world keeps the frame it ended on
            keep = self._done[:, None]
            worlds.current = (torch.where(keep, before[0], after_f), torch.where(keep, before[1], after_i))
        self._done = self._done | self._finished(worlds.current[0])
        self._frame += 1
        return self.frame

    def _sample(self, logits: Tensor) -> Tensor:
        """Categorical ids drawn from softmax(logits / temperature) with the simulator's generator."""
        probs = torch.softmax(logits.float() / self.temperature, -1)
        flat = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=self.generator)
        return flat.view(probs.shape[:-1])

    # Reading and branching --------------------------------------------------------------------------------------

    @property
    def frame(self) -> SimFrame:
        """The current frame of every world."""
        floats, ints = self._require_reset().current
        return SimFrame(floats, ints, self._done, self._frame, self.layout)  # `_done` is replaced, never changed

    def state(self) -> SimState:
        """A copy of everything that decides the worlds' future, for `restore` (branching)."""
        worlds = self._require_reset()
        return SimState(
            model=_clone(worlds.state),
            previous=_clone(worlds.previous),
            current=_clone(worlds.current),
            done=self._done.clone(),
            frame=self._frame,
            rng=self.generator.get_state(),
        )

    def restore(self, state: SimState) -> SimFrame:
        """Return every world to a saved `state` (it stays valid for further restores); returns its frame."""
        worlds = self._require_reset()
        worlds.state, worlds.previous = _clone(state.model), _clone(state.previous)
        worlds.current = _clone(state.current)
        self._done, self._frame = state.done.clone(), state.frame
        self.generator.set_state(state.rng)
        return self.frame

    # Helpers ----------------------------------------------------------------------------------------------------

    def _require_reset(self) -> RecurrentRollout:
        if self._worlds is None:
            raise RuntimeError("Simulator: call reset(...) or reset_from_store(...) before stepping or reading it")
        return self._worlds

    def _finished(self, floats: Tensor) -> Tensor:
        """(N,) bool: a player of the world has no stock left."""
        return (floats.index_select(1, self._stocks) <= self._no_stock).any(-1)

    def _batched(self, array: ArrayLike, name: str) -> Tensor:
        """(N, T, columns) on the device from (T, columns) or (N, T, columns)."""
        tensor = torch.as_tensor(np.asarray(array) if not isinstance(array, Tensor) else array)
        if tensor.dim() == 2:
            tensor = tensor[None]
        if tensor.dim() != 3 or tensor.shape[0] not in (1, self.batch_size):
            raise ValueError(
                f"Simulator.reset: {name} must be (T, columns) or ({self.batch_size}, T, columns) for "
                f"{self.batch_size} worlds, got {tuple(tensor.shape)}"
            )
        return tensor.expand(self.batch_size, -1, -1).contiguous().to(self.device)

    def _mask(self, mask: ArrayLike | None, name: str, width: int) -> Tensor | None:
        """(N, width) bool on the device from (width,) or (N, width); None stays None (every column valid)."""
        if mask is None:
            return None
        tensor = torch.as_tensor(np.asarray(mask, dtype=bool))
        tensor = tensor[None] if tensor.dim() == 1 else tensor
        if tensor.dim() != 2 or tensor.shape[0] not in (1, self.batch_size) or tensor.shape[1] != width:
            raise ValueError(
                f"Simulator.reset: {name} must be ({width},) or ({self.batch_size}, {width}), got {tuple(tensor.shape)}"
            )
        return tensor.expand(self.batch_size, -1).to(self.device)

    def _per_world(self, value: int | Sequence[int], name: str) -> list[int]:
        values = [int(value)] * self.batch_size if isinstance(value, int | np.integer) else [int(v) for v in value]
        if len(values) != self.batch_size:
            raise ValueError(
                f"Simulator: {name} needs one value or {self.batch_size} (one per world), got {len(values)}"
            )
        return values
