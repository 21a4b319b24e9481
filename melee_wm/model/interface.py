"""`WorldModelInterface`: what the training loop, evaluation and benchmarks may call on any world model.

Every trunk (`WorldModel`, `FrameStackMLP`) satisfies it; `build_model` returns one. The recurrent state is
opaque to callers: whatever `init_state`, `forward` or `step` returned is passed back in as it is.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from melee_wm.model.heads import Prediction

State = Any  # a trunk's recurrent state (per-layer `Mamba2State`s, the MLP's frame stack, ...)


@runtime_checkable
class WorldModelInterface(Protocol):
    """Predict frame t+1 at every position t from frames <= t and the controller input of frame t+1."""

    def forward(
        self,
        floats: Tensor,
        ints: Tensor,
        next_ctrl: Tensor,
        state: State | None = None,
        need_state: bool = True,
        valid: Tensor | None = None,
        valid_ints: Tensor | None = None,
    ) -> tuple[Prediction, State | None]:
        """floats: (B, L, num_floats); ints: (B, L, num_ints); next_ctrl: (B, L, num_ctrl), row t = the
        controller columns of frame t+1; state before frame 0 (None = zeros). valid: (B, num_floats) and
        valid_ints: (B, num_ints) bool, the window's column validity (True = the column holds data, False = a
        default of a field the game's replay format lacks; None = every column of that kind valid), which a
        model with `ModelConfig.missing_inputs` reads into its missing-field indicators. Returns the predictions
        at every position and the state after the last frame, carrying the indicators for `step` (None unless
        `need_state`)."""
        ...

    def step(
        self, floats_t: Tensor, ints_t: Tensor, next_ctrl_t: Tensor, state: State, inplace: bool = False
    ) -> tuple[Prediction, State]:
        """One frame: floats_t (B, num_floats), ints_t (B, num_ints), next_ctrl_t (B, num_ctrl), with the
        indicators of the `forward` that started `state`. inplace: the caller gives up `state` (its memory may
        hold the new state); never under autograd."""
        ...

    def init_state(self, batch: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> State:
        """The state before the first frame (zeros, every column valid)."""
        ...

    def num_parameters(self) -> int:
        """Total number of parameters."""
        ...

    def summary(self) -> str:
        """Human-readable description: config, head shapes and parameter counts."""
        ...
