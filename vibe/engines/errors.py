"""The one error the engine records raise: a placement that does not fit the engine, or unreadable statistics.

Like ``vibe.placement.errors.PlacementError`` and ``vibe.serving.errors.ServingError``: ``str(e)`` is one
line a person can act on (both numbers of a mismatch), ``e.reason`` a CamelCase word. The serving helpers
turn it into a ``ServingError`` with the same reason (``vibe.serving.errors.from_engine``); bugs stay
ordinary exceptions.
"""

from __future__ import annotations

#: The reasons in use (each is also a ``ServingError`` reason).
REASONS = (
    "PlacementMismatch",  # the placement does not fit the engine as launched
    "UnsupportedArchitecture",  # the engine ignores a placement for this model
    "InvalidDump",  # engine statistics of an unexpected shape
    "InvalidArgument",  # launch parameters or options that cannot work
    "MissingDependency",  # an optional package a format needs (safetensors, torch)
)


class ReasonedError(RuntimeError):
    """An expected failure: ``str(e)`` one line a person can act on, ``e.reason`` a CamelCase word.

    Subclasses name their ``REASONS``; a reason outside them is a bug (AssertionError).
    """

    REASONS: tuple[str, ...] = ()

    def __init__(self, reason: str, message: str) -> None:
        if reason not in self.REASONS:  # a bug here, not in the input
            raise AssertionError(f"unknown {type(self).__name__} reason {reason!r}")
        message = " ".join(str(message).split())
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __reduce__(self) -> tuple[type[ReasonedError], tuple[str, str]]:  # picklable with two arguments
        return (type(self), (self.reason, self.message))


class EngineError(ReasonedError):
    """A placement that does not fit an engine, or engine statistics that cannot be read.

    Attributes:
        reason: CamelCase reason, one of ``REASONS``.
    """

    REASONS = REASONS
