"""The one error the placement library raises on bad input.

Everything that can go wrong because of what a caller passed in (a load profile with NaNs, a curve that
goes down, too few slots for the experts, an unknown policy, a file that is not JSON) becomes a
``PlacementError``: ``str(e)`` is one line a person can act on, and ``e.reason`` is a CamelCase word the
operator copies into a status condition's ``reason``. Bugs stay ordinary exceptions, so they are not
mistaken for a user's mistake.
"""

from __future__ import annotations

from typing import Literal, get_args

#: The reasons in use; the operator may switch on them (typed: strict mypy checks each one raised).
PlacementReason = Literal[
    "InvalidLoads",
    "InvalidBudget",
    "InvalidCurve",
    "InvalidFleet",
    "InvalidPlacement",
    "ShapeMismatch",
    "InfeasibleSlots",
    "UnknownPolicy",
    "UnknownFormat",
    "InvalidDispatch",
    "InstanceTooLarge",
    "UnreadableFile",
    "MissingDependency",
]
REASONS: tuple[PlacementReason, ...] = get_args(PlacementReason)


class PlacementError(ValueError):
    """Bad input to the placement library.

    Attributes:
        reason: CamelCase reason for a Kubernetes condition, one of ``REASONS``.
    """

    def __init__(self, reason: PlacementReason, message: str) -> None:
        if reason not in REASONS:  # a bug in this library, not in the input
            raise AssertionError(f"unknown PlacementError reason {reason!r}")
        # One line: a condition message and a CLI error line must not wrap.
        message = " ".join(str(message).split())
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __reduce__(
        self,
    ) -> tuple[type[PlacementError], tuple[PlacementReason, str]]:  # picklable with two arguments
        return (type(self), (self.reason, self.message))
