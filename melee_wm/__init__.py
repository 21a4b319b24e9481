"""Melee world models: Slippi replays -> encoded store -> Mamba-2 world model."""
