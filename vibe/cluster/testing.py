"""Helpers for tests that run against the local control plane (the fixtures live in tests/conftest.py):
``wait_for`` (poll until true), ``shared_cluster`` (one test cluster shared by concurrent sessions),
``apply_crds`` (create or update the project's CRDs and wait until they are served).

Kept in the package, like ``kopf.testing``, so every test folder can import them without making
``tests`` a package.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml

from vibe.cluster.controlplane import Cluster
from vibe.cluster.paths import clusters_root
from vibe.cluster.processes import alive, file_lock

T = TypeVar("T")

# Label the ``gpu_nodes`` fixture puts on the nodes it makes (value: their name prefix), for selectors.
TEST_NODES_LABEL = "vibe.dev/test-nodes"

# The project's CRDs (the repository's crds/, next to vibe/).
CRDS_DIR = Path(__file__).resolve().parents[2] / "crds"


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


def _users_lock(name: str) -> contextlib.AbstractContextManager[None]:
    return file_lock(clusters_root() / f".{name}.users.lock")


def apply_crds(api: Any) -> None:
    """Create or update every CRD in crds/ and wait until the API serves them."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    ext = client.ApiextensionsV1Api(api)
    names = []
    for path in sorted(CRDS_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            name = doc["metadata"]["name"]
            names.append(name)
            try:
                ext.create_custom_resource_definition(doc)
            except ApiException as e:
                if e.status != 409:
                    raise
                cur = ext.read_custom_resource_definition(name)
                doc["metadata"]["resourceVersion"] = cur.metadata.resource_version
                ext.replace_custom_resource_definition(name, doc)

    def established() -> bool:
        for name in names:
            conds = ext.read_custom_resource_definition(name).status.conditions or []
            if not any(c.type == "Established" and c.status == "True" for c in conds):
                return False
        return True

    wait_for(established, timeout=30, what="CRDs established")
    # Discovery can lag the Established condition by a moment; wait until a list works.
    custom = client.CustomObjectsApi(api)
    wait_for(lambda: _lists(custom), timeout=30, what="vibe.dev resources served")


def _lists(custom: Any) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        custom.list_cluster_custom_object("vibe.dev", "v1alpha1", "moedeployments", limit=1)
        custom.list_cluster_custom_object("vibe.dev", "v1alpha1", "gpuprofiles", limit=1)
        return True
    except ApiException:
        return False
