"""``Watches`` bookkeeping under concurrent ``want`` and ``drop`` (issue 20, defect 11).

In the operator ``want`` runs on the event loop (each reconcile) while ``drop`` also runs in Kopf's
thread pool (the synchronous DELETED handler), so a mass delete raced the reconciles: ``_sync`` iterated
``by_key`` while another thread resized it ("dictionary changed size during iteration", 1 of 2 runs of
creating and deleting 200 MoEDeployments). Here two threads do the same with a tiny switch interval, so
the race shows within a second without the lock; no watch thread is started (they would talk to an API
server, which is not what this is about).
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import pytest
from kubernetes import client

from vibe.operator import watches as watches_mod
from vibe.operator.watches import Watches, config_map_need


class _Idle:
    """Stands in for a watch thread: started and stopped, talks to nothing."""

    def __init__(self, owner: Any, need: Any) -> None:
        self.stop = threading.Event()

    def start(self) -> None:
        pass


def test_want_and_drop_from_two_threads_do_not_race(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watches_mod, "_Watch", _Idle)
    w = Watches(client.ApiClient(), lambda key: None)
    w.loop = object()  # ``want`` takes the running loop once; here it is never used
    keys = [("ns", f"d{i}") for i in range(400)]
    errors: list[BaseException] = []
    deadline = time.monotonic() + 1.5

    def wanting() -> None:
        i = 0
        while time.monotonic() < deadline and not errors:
            key = keys[i % len(keys)]
            try:
                w.want(key, [config_map_need("ns", f"{key[1]}-{i}")])
            except Exception as e:  # the race, as the operator logged it
                errors.append(e)
            i += 1

    def dropping() -> None:
        i = 0
        while time.monotonic() < deadline and not errors:
            try:
                w.drop(keys[(i * 7) % len(keys)])
                w.keys_of(config_map_need("ns", "x"))
            except Exception as e:
                errors.append(e)
            i += 1

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=wanting), threading.Thread(target=dropping)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert not errors, f"{type(errors[0]).__name__}: {errors[0]}"
    # What is left is consistent: one watch per distinct need still wanted, none for dropped keys.
    wanted = set().union(*w.by_key.values()) if w.by_key else set()
    assert set(w.threads) == wanted
