"""The learned world as a simulator: `Simulator` steps N worlds of a trained model from both players'
`Controller`s and returns `SimFrame`s with named fields (see README.md, "Simulator")."""

from melee_wm.sim.controller import IDLE, Controller
from melee_wm.sim.frame import SimFrame
from melee_wm.sim.simulator import SimState, Simulator

__all__ = ["IDLE", "Controller", "SimFrame", "SimState", "Simulator"]
