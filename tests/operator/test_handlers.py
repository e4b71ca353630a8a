"""The watchers' wiring: what they remember of the objects they saw (the worker's registration:
``test_kopf_private.py``)."""

from __future__ import annotations

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
