"""Status conditions the Kubernetes way: ``Ready``, ``Degraded``, ``Drifted``.

Role: the reconciler decides each condition's status, reason and message; this module merges them into
the existing list so that ``lastTransitionTime`` moves only when the status flips (as ``kubectl wait``
and alerting expect), and stamps every condition with the generation it was computed for.

Meaning of the three types:

* ``Ready``: the placement ConfigMap holds a placement for the current spec (``False`` until one exists,
  or when the spec changed and the new one cannot be computed; the last good placement stays in service).
* ``Degraded``: an input problem the operator cannot fix (stale or missing GPUProfiles, unreadable loads,
  too few GPUs, infeasible slots); the reason says which, the message what to do.
* ``Drifted``: the inputs changed and the placement in service is predicted slower than when placed,
  but re-placing was not worth it (gain below ``minGain``) or not allowed yet (cooldown).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from vibe.api import CONDITION_TYPES, ConditionType, DegradedReason, DriftedReason, DriftKind, ReadyReason
from vibe.operator.problems import Reason as ProblemReason

#: Every reason a condition may carry: each type's own (``vibe.api``, beside the type), an input
#: problem's (``Ready=False``, ``Degraded=True``), and a drift's kind (``Drifted=True``).
ConditionReason: TypeAlias = ReadyReason | DegradedReason | DriftedReason | DriftKind | ProblemReason


@dataclass(frozen=True)
class Condition:
    """One condition as the reconciler decides it, typed (strict mypy checks type and reason)."""

    type: ConditionType
    status: bool
    reason: ConditionReason
    message: str = ""

    @property
    def status_text(self) -> str:
        return "True" if self.status else "False"


def merge(
    existing: Iterable[Mapping[str, Any]] | None,
    new: Iterable[Condition],
    *,
    generation: int,
    now: str,
) -> list[dict[str, Any]]:
    """The condition list after applying ``new``, in ``CONDITION_TYPES`` order, then other types as
    they were.

    ``lastTransitionTime`` is kept from the existing condition of the same type when its status did not
    change, else set to ``now`` (RFC 3339, seconds). Conditions of types not in ``new`` are kept as is.
    """
    old: dict[str, dict[str, Any]] = {
        str(c["type"]): dict(c) for c in existing or () if isinstance(c, Mapping) and c.get("type")
    }
    out: dict[str, dict[str, Any]] = dict(old)
    for c in new:
        prev = old.get(c.type)
        changed = prev is None or prev.get("status") != c.status_text or not prev.get("lastTransitionTime")
        out[c.type] = {
            "type": c.type,
            "status": c.status_text,
            "observedGeneration": int(generation),
            "reason": c.reason,
            "message": one_line(c.message),
            "lastTransitionTime": now if changed or prev is None else prev["lastTransitionTime"],
        }
    order = [t for t in CONDITION_TYPES if t in out] + sorted(t for t in out if t not in CONDITION_TYPES)
    return [out[t] for t in order]


def find(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    for c in conditions or ():
        if isinstance(c, Mapping) and c.get("type") == type_:
            return c
    return None


def is_true(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> bool:
    c = find(conditions, type_)
    return c is not None and c.get("status") == "True"


def transitions(
    before: Iterable[Mapping[str, Any]] | None, after: Iterable[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    """Conditions of ``after`` whose (status, reason) differ from ``before``: what deserves an Event."""
    out = []
    for c in after:
        prev = find(before, c["type"])
        if prev is None or (prev.get("status"), prev.get("reason")) != (c["status"], c["reason"]):
            out.append(c)
    return out


def one_line(text: str, limit: int = 1024) -> str:
    """Collapse whitespace; cut at ``limit`` characters (condition messages should stay readable)."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
