"""``vibe.operator.kopf_private``, the one reach into Kopf's internals, against the installed Kopf.

These fail the day Kopf renames its registry's private handler list or the handler's
``requires_finalizer`` field, instead of MoEDeployments silently getting a finalizer again.
"""

from __future__ import annotations

from typing import Any

import kopf

from vibe.operator import handlers
from vibe.operator.kopf_private import daemon_without_finalizer


def _daemons(registry: kopf.OperatorRegistry, fn: Any) -> list[Any]:
    return [h for h in registry._spawning._handlers if h.fn is fn]


def test_a_daemon_asks_for_a_finalizer_until_told_not_to():
    """Kopf's own default (what makes the reach necessary), then the rewrite of exactly that handler."""
    registry = kopf.OperatorRegistry()

    @kopf.daemon("vibe.dev", "v1alpha1", "moedeployments", registry=registry)
    async def daemon(**_: Any) -> None: ...

    @kopf.daemon("vibe.dev", "v1alpha1", "gpuprofiles", registry=registry)
    async def other(**_: Any) -> None: ...

    assert [h.requires_finalizer for h in _daemons(registry, daemon)] == [True]
    assert daemon_without_finalizer(daemon, registry) == 1
    assert [h.requires_finalizer for h in _daemons(registry, daemon)] == [False]
    assert [h.requires_finalizer for h in _daemons(registry, other)] == [True]


def test_the_operators_worker_asks_for_no_finalizer():
    """A finalizer would make deleting a MoEDeployment (or its namespace) hang while the operator is
    down; ``tests/operator/test_cluster_faults.py`` deletes both with the operator stopped."""
    daemons = _daemons(kopf.get_default_registry(), handlers.worker)
    assert len(daemons) == 1 and daemons[0].requires_finalizer is False
