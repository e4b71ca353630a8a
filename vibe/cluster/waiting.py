"""``wait_for``: poll until a check holds, with a deadline and a message that says what was awaited.

Role: the one wait loop of everything that drives the local control plane from outside (the demo, the
tests, the benchmarks): wait for CRDs to be served, a ConfigMap to appear, a pod to be scheduled.
Standard library only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout: float = 30.0, interval: float = 0.2, what: str = "") -> T:
    """Poll ``check`` until it returns something truthy and return that; TimeoutError after ``timeout``.

    Inside a test the TimeoutError fails it with ``what`` in the message.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what or check}")
        time.sleep(interval)
