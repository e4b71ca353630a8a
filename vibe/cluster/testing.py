"""Helpers for tests that run against the local control plane (the fixtures live in tests/conftest.py):
``wait_for`` (poll until true), ``shared_cluster`` (one test cluster shared by concurrent sessions).

Kept in the package, like ``kopf.testing``, so every test folder can import them without making
``tests`` a package.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from vibe.cluster.controlplane import Cluster
from vibe.cluster.paths import clusters_root
from vibe.cluster.processes import alive

T = TypeVar("T")

# Label the ``gpu_nodes`` fixture puts on the nodes it makes (value: their name prefix), for selectors.
TEST_NODES_LABEL = "vibe.dev/test-nodes"


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


@contextlib.contextmanager
def shared_cluster(
    name: str, progress: Callable[[str], None] | None = None, keep: bool = False
) -> Iterator[Cluster]:
    """Bring cluster ``name`` up, or join it if it runs, and take it down when the last user leaves.

    Several pytest sessions may share one test cluster (two people, or one person and CI, on one
    machine): each registers its PID, and only the last one out stops the cluster. A cluster that
    was already running when no registered session had started it (someone ran ``vibe cluster up``)
    is left alone, and so is any with ``keep`` (``VIBE_KEEP_CLUSTER=1``).
    """
    cluster = Cluster(name)
    users = clusters_root() / f".{name}.users"
    me = users / str(os.getpid())
    with _users_lock(name):
        started = cluster.up(progress=progress)
        users.mkdir(parents=True, exist_ok=True)
        if started:
            (users / OWNED_BY_TESTS).touch()
        me.write_text(_own_exe())  # the executable too, so a recycled PID does not count as a user
    try:
        yield cluster
    finally:
        with _users_lock(name):
            me.unlink(missing_ok=True)
            live = False
            for user in users.glob("[0-9]*"):
                if alive(int(user.name), user.read_text() or None):
                    live = True
                else:
                    user.unlink(missing_ok=True)  # a session that died without cleaning up
            if not live and (users / OWNED_BY_TESTS).exists() and not keep:
                cluster.down()
                shutil.rmtree(users, ignore_errors=True)


def _own_exe() -> str:
    try:
        return Path("/proc/self/cmdline").read_bytes().split(b"\0", 1)[0].decode()
    except OSError:
        return ""


OWNED_BY_TESTS = "started-by-tests"


@contextlib.contextmanager
def _users_lock(name: str) -> Iterator[None]:
    root = clusters_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.users.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
