"""Values no real game holds, in replays that parse: a position far outside every blast zone, a percent outside
0..999, a stock count that rises, a character that changes (other than Zelda and Sheik transforming).

A byte flipped inside a post-frame event gives exactly these (seen on byte-flipped copies of the sample
replays: stocks of 105-243 after 4, percent 6.5e32, a y of 4.7e16, character ids 34, 201 and 245 for one
frame); flipped frame counters make peppi panic or leave a gap in the frame ids, which parsing already refuses.
Such a game is skipped with a reason naming the port, field, frame and value, rather than repaired: the true
value is unknown, a guessed one would teach the model physics that never happened, and corrupt files are rare.
Non-finite values are left to the encoder, which zeroes and counts them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Game units. The widest blast zones of the legal stages are Dream Land's (x +-255, top 250); nothing alive or
# being KO'd gets near four times that.
POSITION_LIMIT = 1000.0
MAX_PERCENT = 999.0  # the game caps damage at 999 %
TRANSFORMING = (7, 19)  # internal ids of Sheik and Zelda, who swap into each other mid-game


def _first(bad: np.ndarray) -> int | None:
    """Index of the first True of a (frames,) mask, or None."""
    hits = np.flatnonzero(bad)
    return int(hits[0]) if hits.size else None


def impossible_value(players: Sequence[dict[str, np.ndarray]], ports: Sequence[int], first_frame: int) -> str | None:
    """Why a parsed game holds a value no real game can (the first one found, with how many frames share the
    fault), or None. players: per player {field: (frames,) array}; ports: 0-based port of each player."""
    for port, arrays in zip(ports, players, strict=True):
        checks = {
            "x": (np.abs(arrays["x"]) > POSITION_LIMIT, f"|x| <= {POSITION_LIMIT:g}, far outside every blast zone"),
            "y": (np.abs(arrays["y"]) > POSITION_LIMIT, f"|y| <= {POSITION_LIMIT:g}, far outside every blast zone"),
            "percent": (
                (arrays["percent"] < 0) | (arrays["percent"] > MAX_PERCENT),
                f"0 <= percent <= {MAX_PERCENT:g}",
            ),
            "stocks": (
                np.diff(arrays["stocks"].astype(np.int32), prepend=np.int32(arrays["stocks"][0])) > 0,
                "stocks never rise",
            ),
        }
        first = int(arrays["character"][0])
        allowed = TRANSFORMING if first in TRANSFORMING else (first,)
        checks["character"] = (~np.isin(arrays["character"], allowed), f"character {first} throughout")
        for name, (bad, expected) in checks.items():
            index = _first(bad)
            if index is not None:
                value = arrays[name][index]
                return (
                    f"impossible value: port {port + 1} {name} = {value:.6g} at frame {first_frame + index} "
                    f"({int(bad.sum())} frames; expected {expected})"
                )
    return None
