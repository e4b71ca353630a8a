"""The watchers' wiring: what they remember of the objects they saw, and the worker's registration."""

from __future__ import annotations

import kopf

from vibe.operator import handlers
from vibe.operator.compute import Computer
from vibe.operator.handlers import State
from vibe.operator.settings import OperatorSettings


def test_the_watchers_memory_holds_live_objects_only():
    """1,000 objects seen, changed and deleted: nothing is left (before: an entry per deleted object)."""
    state = State(settings=OperatorSettings(compute_processes=0), kube=None, computer=Computer(0))  # type: ignore[arg-type]
    for i in range(1000):
        assert not state.changed(("gpup", f"n{i}"), ("uid", 1, False))  # first sight: no change
        assert state.changed(("gpup", f"n{i}"), ("uid", 2, False))
    assert len(state.seen) == 1000
    for i in range(1000):
        assert state.changed(("gpup", f"n{i}"), None)  # deleted: a change, and forgotten
    assert state.seen == {}


def test_the_worker_daemon_asks_for_no_finalizer():
    """A finalizer would make deleting a MoEDeployment (or its namespace) hang while the operator is
    down; the cluster test deletes both with the operator stopped."""
    daemons = [h for h in kopf.get_default_registry()._spawning._handlers if h.fn is handlers.worker]
    assert len(daemons) == 1 and daemons[0].requires_finalizer is False
