"""The typed records of a store's manifest: one `GameRow` per stored game, and the errors of a store whose files
disagree with what is asked of them.

The manifest's JSON holds each row as a plain object with exactly the keys of `GameRow`'s fields (in field
order); `GameRow.from_dict` refuses a row with a missing or an unknown key, naming the store and the keys.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from melee_wm.replay.parse import GameMeta


class StoreError(ValueError):
    """A store on disk that is inconsistent, or a folder that is not a store."""


class StoreConfigError(ValueError):
    """A store encoded with a different EncodingConfig (or filters) than the one asked for."""


@dataclass
class GameRow:
    """One stored game: its facts from the replay (no player names or codes), where its frames lie in the store
    (`shard`, and `offset` .. `offset + length` within it) and how many values its encoding repaired."""

    md5: str
    path: str
    length: int  # frames (unique frame ids, rollbacks removed)
    stage: int
    characters: list[int]  # external (character-select) ids, in port order
    ports: list[int]  # 0-based port numbers (P1 = 0)
    cpu_players: list[bool]
    end_method: int | None  # None when the replay has no Game End event
    is_pal: bool | None
    slippi_version: str
    first_frame: int
    missing_fields: list[str]
    shard: int
    offset: int  # first row of the game in its shard's arrays
    nonfinite: int  # non-finite values replaced while encoding
    clamped: int  # out-of-vocabulary ids clamped while encoding

    @classmethod
    def from_meta(cls, meta: GameMeta, *, shard: int, offset: int, nonfinite: int, clamped: int) -> GameRow:
        """The row of a parsed game written at `offset` in shard `shard`."""
        return cls(
            md5=meta.md5,
            path=meta.path,
            length=meta.num_frames,
            stage=meta.stage,
            characters=list(meta.characters),
            ports=list(meta.ports),
            cpu_players=list(meta.cpu_players),
            end_method=meta.end_method,
            is_pal=meta.is_pal,
            slippi_version=meta.slippi_version,
            first_frame=meta.first_frame,
            missing_fields=list(meta.missing_fields),
            shard=shard,
            offset=offset,
            nonfinite=nonfinite,
            clamped=clamped,
        )

    def to_dict(self) -> dict[str, Any]:
        """The row as the manifest's JSON holds it (keys in field order)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], store_path: str | Path) -> GameRow:
        """A row read from the manifest of the store at `store_path`; StoreError names any missing or unknown key."""
        expected = [f.name for f in dataclasses.fields(cls)]
        missing = [k for k in expected if k not in data]
        unknown = [k for k in data if k not in expected]
        problems = ([f"missing keys {missing}"] if missing else []) + ([f"unknown keys {unknown}"] if unknown else [])
        if problems:
            raise StoreError(f"{store_path}: a game row of its manifest has " + " and ".join(problems))
        return cls(**data)
