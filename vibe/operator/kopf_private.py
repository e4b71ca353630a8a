"""The one place vibe reaches into Kopf's private internals: a daemon that asks for no finalizer.

Kopf's ``@kopf.daemon`` always registers its handler with ``requires_finalizer=True`` and offers no
public switch. A finalizer on a MoEDeployment would make deleting it (or its namespace) hang while the
operator is down, so ``handlers`` registers its worker and then calls ``daemon_without_finalizer`` on it,
which rewrites the handler in the registry's private ``_spawning._handlers`` list. Nothing else in vibe
touches a Kopf name that starts with an underscore; ``tests/operator/test_kopf_private.py`` pins this
against the installed Kopf (it fails the day Kopf renames the list or the field).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import kopf


def daemon_without_finalizer(fn: Callable[..., Any], registry: kopf.OperatorRegistry | None = None) -> int:
    """Mark the daemon handlers of ``fn`` in ``registry`` (Kopf's default) as needing no finalizer.

    Returns how many handlers it changed (one for a function decorated once with ``@kopf.daemon``).
    """
    registry = registry if registry is not None else kopf.get_default_registry()
    handlers = registry._spawning._handlers
    changed = 0
    for i, h in enumerate(handlers):
        if getattr(h, "fn", None) is fn:
            handlers[i] = replace(h, requires_finalizer=False)
            changed += 1
    return changed
