"""Facts about the game shared by every floor of the package (the replay parser, the encoder, the model)."""

from __future__ import annotations

NUM_PLAYERS = 2  # players per game: only two-player (singles) games are parsed, encoded and modelled
