"""``Problem``: an input the operator cannot fix, carried to a status condition and an Event.

Role: every step of a reconcile that reads the world (resolving GPUs, reading loads, calling the
placement engine) raises a ``Problem`` for what a person must fix; the reconciler turns it into
``Ready=False`` or ``Degraded=True`` with ``reason`` and ``message``, keeps the last good placement, and
retries with backoff. Anything else is a bug and stays an ordinary exception.
"""

from __future__ import annotations

from typing import TypeAlias

from vibe.api import PROBLEM_REASONS, ProblemReason
from vibe.placement import REASONS as PLACEMENT_REASONS
from vibe.placement import PlacementError, PlacementReason

#: Reasons a Problem may carry: the operator's (``vibe.api.ProblemReason``) and the placement library's,
#: which pass through unchanged.
Reason: TypeAlias = ProblemReason | PlacementReason


class Problem(Exception):
    """A condition-worthy input problem: ``reason`` (CamelCase) and a one-line ``message``."""

    def __init__(self, reason: Reason, message: str) -> None:
        if reason not in PROBLEM_REASONS and reason not in PLACEMENT_REASONS:  # a bug here, not in the input
            raise AssertionError(f"unknown Problem reason {reason!r}")
        message = " ".join(str(message).split())
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __reduce__(self) -> tuple[type[Problem], tuple[Reason, str]]:  # picklable across the compute pool
        return (type(self), (self.reason, self.message))

    @classmethod
    def from_placement(cls, err: PlacementError, context: str = "") -> Problem:
        return cls(err.reason, f"{context}{err.message}" if context else err.message)
