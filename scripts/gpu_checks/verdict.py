"""Verdicts of the GPU check's steps and the exit status they give.

A step either ran and held, ran and failed, or could not run (with why): a step that could not run is never
counted as a pass, and the report names it. The check exits 0 only when every step that could run held.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

HELD, FAILED, COULD_NOT_RUN = "held", "failed", "could_not_run"
VERDICTS = (HELD, FAILED, COULD_NOT_RUN)
EXIT_HELD, EXIT_FAILED, EXIT_NO_CUDA = 0, 1, 2


class CouldNotRun(Exception):
    """Raised by a step whose precondition is missing here (no CUDA, no mamba_ssm kernels): not a failure,
    never a pass."""


@dataclass
class StepResult:
    """One step of the check: its verdict, why (for anything but `held`), seconds, and what it measured."""

    name: str
    verdict: str
    why: str = ""
    seconds: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"step {self.name!r}: verdict {self.verdict!r}, expected one of {VERDICTS}")
        if self.verdict != HELD and not self.why:
            raise ValueError(f"step {self.name!r}: a {self.verdict!r} verdict needs a reason")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarise(steps: list[StepResult], cuda: bool) -> tuple[dict[str, Any], int]:
    """The report's verdict fields and the exit status: 2 without CUDA (the check could not do its job), 1 if
    any step failed, 0 when every step that could run held (and at least one did)."""
    failed = [s.name for s in steps if s.verdict == FAILED]
    skipped = [s.name for s in steps if s.verdict == COULD_NOT_RUN]
    held = [s.name for s in steps if s.verdict == HELD]
    if failed:
        code = EXIT_FAILED
    elif not cuda:
        code = EXIT_NO_CUDA
    else:
        code = EXIT_HELD if held else EXIT_FAILED
    verdict = {
        "every_step_that_ran_held": not failed and bool(held),
        "held": held,
        "failed": failed,
        "could_not_run": skipped,
        "exit_code": code,
    }
    return verdict, code
