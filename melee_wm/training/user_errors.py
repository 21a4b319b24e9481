"""Errors a user can fix (a config key, a path, a store, a checkpoint) end `python train.py` with one message
naming the key or path and exit status 1; `HYDRA_FULL_ERROR=1` shows the traceback instead, as Hydra does."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from melee_wm.data.manifest import StoreConfigError, StoreError
from melee_wm.samples import SampleReplaysError
from melee_wm.training.callbacks import NonFiniteLossError
from melee_wm.training.checkpoint import CheckpointError
from melee_wm.training.compose import ConfigError
from melee_wm.training.run import RunDirError

# Raised with a message that names what to fix; anything else is a bug and keeps its traceback.
USER_ERRORS = (
    ConfigError,
    RunDirError,
    StoreError,
    StoreConfigError,
    CheckpointError,
    SampleReplaysError,
    NonFiniteLossError,
    FileNotFoundError,
)
FULL_ERROR_ENV = "HYDRA_FULL_ERROR"


@contextmanager
def exit_on_user_error(program: str) -> Iterator[None]:
    """Turn a `USER_ERRORS` exception into `<program>: error: <message>` on stderr and exit status 1."""
    try:
        yield
    except USER_ERRORS as err:
        if os.environ.get(FULL_ERROR_ENV) == "1":
            raise
        print(f"{program}: error: {err}", file=sys.stderr)
        print(f"(set {FULL_ERROR_ENV}=1 for the traceback)", file=sys.stderr)
        sys.exit(1)
