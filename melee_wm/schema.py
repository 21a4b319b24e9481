"""The one loader of config dataclasses: YAML, overrides or plain containers merged onto the dataclass, which is
the schema, so nothing is silently ignored."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")


def load_structured(schema: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """`schema`'s defaults, the YAML file at `path` merged on top, then `key=value` overrides.

    An unknown key, a value of the wrong type or one the dataclass's `__post_init__` refuses is a ValueError
    naming the schema, the source and the key.
    """
    name = schema.__name__
    layers = []
    source = "defaults"
    if path is not None:
        if not Path(path).is_file():
            raise ValueError(f"{name}: config file not found: {path}")
        layers.append(OmegaConf.load(path))
        source = str(path)
    if overrides:
        source = f"{source} with overrides {' '.join(overrides)}"
        layers.append(OmegaConf.from_dotlist(list(overrides)))
    return merge_structured(schema, layers, f"{name} ({source})")


def merge_structured(schema: type[T], layers: Sequence[Any], what: str, error: type[ValueError] = ValueError) -> T:
    """`schema`'s defaults with `layers` (YAML nodes, DictConfigs or plain dicts) merged on top, in order, as a
    `schema` instance. Anything the schema refuses is an `error` reading "invalid <what>: <OmegaConf's message>"."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), *layers))
    except (OmegaConfBaseException, ValueError) as err:
        raise error(f"invalid {what}: {err}") from None


def require(ok: bool, key: str, value: Any, expected: str) -> None:
    """One range check of a config field: unless `ok`, a ValueError "<key>: must be <expected>, got <value>"."""
    if not ok:
        raise ValueError(f"{key}: must be {expected}, got {value}")
