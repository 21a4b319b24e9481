"""Reading Slippi replays into per-game numpy arrays."""

from melee_wm.replay.parse import GameMeta, ParsedGame, ReplayError, file_md5, parse_replay

__all__ = ["GameMeta", "ParsedGame", "ReplayError", "file_md5", "parse_replay"]
