"""When each node's agent was last seen alive, on the operator's own clock.

Role: the heartbeat the operator judges GPUProfile staleness by. An agent's Lease ``renewTime`` (and a
profile's ``status.heartbeatTime``, for agents from before Leases) is written by the agent, with the
agent's clock: trusted as a time, a renewTime an hour ahead kept a stopped agent's node fresh past the
TTL, a clock ten minutes behind made a live agent stale, and a token may write a renewTime in 2096. So,
as the node lifecycle controller does with kubelets' Leases, the operator records *when it observed the
value change* and judges by that; the value itself is only compared for equality.

Consequences, stated: a node is seen fresh for up to one TTL after the operator starts (it cannot know
how long a Lease it has just met has been unchanged); a renewal is noticed when a reconcile lists the
Leases, so a dead agent's node turns stale between TTL and TTL + the time between two listings
(the resync, 60 s by default) after its last renewal.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any


class Liveness:
    """Per node: the last heartbeat value seen and when this operator first saw it."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[str, dt.datetime]] = {}
        #: Per key: when the value before the current one was first seen (to tell a return from silence).
        self.before: dict[str, dt.datetime] = {}

    def observe(self, node: str, value: Any, now: dt.datetime) -> dt.datetime | None:
        """Record ``node``'s heartbeat value (a renewTime, as written); when it was first seen as it is
        now. ``None`` (no heartbeat written) forgets the node and returns None."""
        if not value:
            self.seen.pop(node, None)
            self.before.pop(node, None)
            return None
        mark = str(value)
        last = self.seen.get(node)
        if last is not None and last[0] == mark:
            return last[1]
        if last is not None:
            self.before[node] = last[1]
        self.seen[node] = (mark, now)
        return now

    def returned(self, node: str, ttl_s: float) -> dt.datetime | None:
        """When ``node``'s heartbeat changed after a silence longer than ``ttl_s`` (it was stale and is
        fresh again: the deployments using it must look), else None."""
        last, before = self.seen.get(node), self.before.get(node)
        if last is None or before is None or (last[1] - before).total_seconds() <= ttl_s:
            return None
        return last[1]

    def observe_leases(
        self, leases: Mapping[str, Mapping[str, Any]] | None, now: dt.datetime
    ) -> dict[str, dt.datetime] | None:
        """Node -> when its Lease's ``renewTime`` was seen to change; None when Leases could not be read.
        Nodes whose Lease is gone are forgotten."""
        if leases is None:
            return None
        out = {}
        for node, spec in leases.items():
            seen = self.observe(f"lease/{node}", spec.get("renewTime"), now)
            if seen is not None:
                out[node] = seen
        for key in [k for k in self.seen if k.startswith("lease/") and k[6:] not in leases]:
            del self.seen[key]
            self.before.pop(key, None)
        return out
