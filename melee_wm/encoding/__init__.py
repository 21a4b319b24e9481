"""Encoding schema (`EncodingConfig`), the column `Layout` derived from it, and the game encoder."""

from melee_wm.encoding.config import ENCODER_VERSION, EncodingConfig, config_diff
from melee_wm.encoding.layout import NUM_PLAYERS, Column, Layout, Target

__all__ = ["ENCODER_VERSION", "NUM_PLAYERS", "Column", "EncodingConfig", "Layout", "Target", "config_diff"]
