"""Load a config dataclass from YAML: the dataclass is the schema, so nothing in the file is silently ignored."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")


def load_structured(schema: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """`schema`'s defaults, the YAML file at `path` merged on top, then `key=value` overrides.

    An unknown key, a value of the wrong type or one the dataclass's `__post_init__` refuses is a ValueError
    naming the schema, the source and the key.
    """
    name = schema.__name__
    layers = [OmegaConf.structured(schema)]
    source = "defaults"
    if path is not None:
        if not Path(path).is_file():
            raise ValueError(f"{name}: config file not found: {path}")
        layers.append(OmegaConf.load(path))
        source = str(path)
    if overrides:
        source = f"{source} with overrides {' '.join(overrides)}"
        layers.append(OmegaConf.from_dotlist(list(overrides)))
    try:
        return OmegaConf.to_object(OmegaConf.merge(*layers))
    except (OmegaConfBaseException, ValueError) as err:
        raise ValueError(f"invalid {name} ({source}): {err}") from None
