"""A Gymnasium environment over one simulated world (the `sim` extra: `pip install 'melee_wm[sim]'`).

One player's controller is the action; the other player follows the replay the episode started from, or a
scripted policy. The observation is the encoded frame the model reads. The reward is the user's: a function of
the frame before and after a step (0 when none is given), so the same world serves any task.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

try:
    import gymnasium as gym
    from gymnasium import spaces
except ImportError as err:  # an optional extra: say how to get it
    raise ImportError("melee_wm.sim.gym_env needs gymnasium: pip install 'melee_wm[sim]'") from err

from melee_wm.data.store import Store
from melee_wm.encoding.layout import NUM_PLAYERS
from melee_wm.sim.controller import CONTROLLER_GROUP, IDLE, Controller, encode_controllers
from melee_wm.sim.frame import SimFrame
from melee_wm.sim.simulator import Simulator

Policy = Callable[[SimFrame], Controller]  # the current frame -> the scripted player's controller
Reward = Callable[[SimFrame, SimFrame, int], float]  # (frame before, frame after, agent's player) -> reward
REPLAY = "replay"


class MeleeWorldEnv(gym.Env):
    """An episode starts at a real frame of `store` (drawn with the environment's seed, or `options={"game": g,
    "frame": f}`), and lasts until a player has no stock left (terminated) or `max_steps` (truncated).

    Observation: {"floats": (num_floats,) float32, "ints": (num_ints,) int64 ids}, the model's encoded frame.
    Action: {"main": (2,) and "c": (2,) sticks in [-1, 1], "trigger": (1,) in [0, 1], "buttons": one 0/1 per
    button the model's encoding reads}; values outside the space are clipped to it. `opponent`: "replay" (the
    game's own inputs for the other port) or a `Policy`. `reward`: a `Reward` (default: 0 every step).
    """

    def __init__(
        self,
        sim: Simulator,
        store: Store | str | Path,
        player: int = 0,
        opponent: str | Policy = REPLAY,
        reward: Reward | None = None,
        max_steps: int = 600,
    ) -> None:
        if sim.batch_size != 1:
            raise ValueError(f"MeleeWorldEnv drives one world; the simulator has batch_size {sim.batch_size}")
        if player not in range(NUM_PLAYERS):
            raise ValueError(f"MeleeWorldEnv: player must be one of {list(range(NUM_PLAYERS))}, got {player}")
        if isinstance(opponent, str) and opponent != REPLAY:
            raise ValueError(f"MeleeWorldEnv: opponent must be {REPLAY!r} or a callable policy, got {opponent!r}")
        self.sim, self.store, self.player = sim, sim.open(store), player
        self.opponent, self.reward_fn, self.max_steps = opponent, reward, max_steps
        layout = sim.layout
        self.buttons = layout.cfg.buttons
        self.observation_space = spaces.Dict(
            {
                "floats": spaces.Box(-np.inf, np.inf, (layout.num_floats,), np.float32),
                "ints": spaces.MultiDiscrete(np.array(layout.int_vocabs, dtype=np.int64)),
            }
        )
        self.action_space = spaces.Dict(
            {
                "main": spaces.Box(-1.0, 1.0, (2,), np.float32),
                "c": spaces.Box(-1.0, 1.0, (2,), np.float32),
                "trigger": spaces.Box(0.0, 1.0, (1,), np.float32),
                "buttons": spaces.MultiBinary(len(self.buttons)),
            }
        )
        # The other port's controller columns, within the layout's controller group.
        start = layout.float_slice(CONTROLLER_GROUP).start
        fields = layout.float_fields(CONTROLLER_GROUP)
        self._other_columns = [layout.player_float_index(1 - player, f) - start for f in fields]
        need = sim.context_len + (max_steps if opponent == REPLAY else 0)
        self._games = [g for g in range(self.store.num_games) if self.store.games[g].length > need]
        if not self._games:
            raise ValueError(f"store {self.store.path}: no game has the {need + 1} frames an episode needs")
        self._game = self._start = self._steps = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start an episode (see the class docstring); returns (observation, info)."""
        super().reset(seed=seed)
        options = options or {}
        game = int(options.get("game", self.np_random.choice(self._games)))
        if "frame" in options:
            frame = int(options["frame"])
        else:
            latest = self.store.games[game].length - 1 - (self.max_steps if self.opponent == REPLAY else 0)
            frame = int(self.np_random.integers(self.sim.context_len - 1, latest + 1))
        self._game, self._start, self._steps = game, frame, 0
        now = self.sim.reset_from_store(self.store, game, frame)
        return self._observation(now), self._info(now)

    def step(self, action: dict[str, np.ndarray]):
        """One frame with the agent's action; returns (observation, reward, terminated, truncated, info)."""
        space = self.action_space
        main, c = (np.clip(action[k], space[k].low, space[k].high) for k in ("main", "c"))
        trigger = float(np.clip(action["trigger"], 0.0, 1.0)[0])
        held = {b: bool(action["buttons"][i]) for i, b in enumerate(self.buttons)}
        agent = Controller(main_x=main[0], main_y=main[1], c_x=c[0], c_y=c[1], trigger=trigger, buttons=held)
        before = self.sim.frame
        other = IDLE if self.opponent == REPLAY else self.opponent(before)
        pair = [agent, other] if self.player == 0 else [other, agent]
        encoded = encode_controllers(self.sim.layout, pair, 1)
        if self.opponent == REPLAY:
            floats, _ = self.store.game(self._game)
            row = floats[self._start + self._steps + 1, self.sim.layout.float_slice(CONTROLLER_GROUP)]
            encoded[0, self._other_columns] = row[self._other_columns]
        after = self.sim.step(encoded)
        self._steps += 1
        reward = 0.0 if self.reward_fn is None else float(self.reward_fn(before, after, self.player))
        terminated = bool(after.done[0])
        truncated = self._steps >= self.max_steps and not terminated
        return self._observation(after), reward, terminated, truncated, self._info(after)

    def _observation(self, frame: SimFrame) -> dict[str, np.ndarray]:
        return {
            "floats": frame.floats[0].detach().cpu().numpy().astype(np.float32),
            "ints": frame.ints[0].detach().cpu().numpy().astype(np.int64),
        }

    def _info(self, frame: SimFrame) -> dict[str, Any]:
        return {"game": self._game, "start_frame": self._start, "steps": self._steps, "frame": frame.to_dict()}
