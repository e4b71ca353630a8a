"""The local control plane as pytest fixtures: a pytest plugin (``pytest_plugins`` in tests/conftest.py).

- ``cluster_binaries`` (session) paths of the built binaries: ``cluster_binaries["helm"]``, ...
                Missing ones are built once collection is done and before the first test runs (only
                when a selected test needs them; the first build takes a while: see hack/README.md).
- ``cluster``   (session) a running `vibe.cluster.Cluster` named ``vibe-test`` (``$VIBE_TEST_CLUSTER``),
                so it never collides with a user's demo cluster ``vibe``. Concurrent sessions share
                it (``shared_cluster``); the last one out takes it down, unless someone started it by
                hand or ``VIBE_KEEP_CLUSTER=1`` is set (then the next session reuses it).
- ``kube``      (session) a `kubernetes.client.ApiClient` with admin rights on it.
- ``namespace`` (function) the name of a new namespace, its ``default`` ServiceAccount already made;
                deleted after the test.
- ``gpu_nodes`` (function) a factory ``gpu_nodes(n, **kwargs) -> list[str]`` making fake GPU nodes
                (`vibe.cluster.create_gpu_nodes` keywords), with unique names and a label
                ``TEST_NODES_LABEL=<prefix>`` for selectors; waits until Ready, deletes them after.

Tests that use ``cluster`` (directly or through the others) get the ``cluster`` marker automatically,
so ``pytest -m "not cluster"`` runs everything that needs no control plane. Test modules import
``TEST_NODES_LABEL`` from here; ``wait_for`` and ``apply_crds`` are the package's (``vibe.cluster``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from vibe import api
from vibe.cluster.paths import clusters_root
from vibe.cluster.processes import alive, file_lock
from vibe.cluster.waiting import wait_for

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

    from vibe.cluster import Cluster

#: Label the ``gpu_nodes`` fixture puts on the nodes it makes (value: their name prefix), for selectors.
TEST_NODES_LABEL = api.PREFIX + "test-nodes"

TEST_CLUSTER = os.environ.get("VIBE_TEST_CLUSTER", "vibe-test")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)


def _progress(msg: str) -> None:
    # A first build runs for many minutes inside a session fixture: show it past pytest's capture.
    if msg.startswith("build-cluster:"):
        print(msg, file=sys.__stderr__, flush=True)


def pytest_collection_finish(session: pytest.Session) -> None:
    # Build missing binaries here, before any test starts, when a selected test needs the cluster:
    # a first build takes far longer than pytest-timeout allows one test (fixture setup included).
    if session.config.option.collectonly:
        return
    if not any("cluster_binaries" in getattr(item, "fixturenames", ()) for item in session.items):
        return
    from vibe.cluster import binaries

    try:
        binaries.ensure(build_missing=True, on_line=_progress)
    except binaries.BinariesMissing as exc:  # the fixture reports it, test by test
        print(f"\n{exc}", file=sys.__stderr__, flush=True)


@pytest.fixture(scope="session")
def cluster_binaries() -> object:
    """Every binary of the local control plane (`vibe.cluster.binaries.Binaries`; ``b["helm"]`` is a Path).

    Built before the first test by ``pytest_collection_finish`` above when missing."""
    from vibe.cluster import binaries

    return binaries.ensure(build_missing=False)


@pytest.fixture(scope="session")
def cluster(cluster_binaries: object) -> Iterator[Cluster]:
    t0 = time.monotonic()
    with shared_cluster(TEST_CLUSTER, _progress, keep=os.environ.get("VIBE_KEEP_CLUSTER") == "1") as c:
        print(
            f"\n[{TEST_CLUSTER} cluster ready in {time.monotonic() - t0:.1f}s]",
            file=sys.__stderr__,
            flush=True,
        )
        yield c


@pytest.fixture(scope="session")
def kube(cluster: Cluster) -> Iterator[ApiClient]:
    api = cluster.api_client()
    yield api
    api.close()


@pytest.fixture
def namespace(kube: ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(kube)
    base = "".join(ch if ch.isalnum() else "-" for ch in request.node.name.lower())[:40].strip("-")
    name = f"t-{base}-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name, "labels": {api.PREFIX + "test": "true"}}})

    def default_sa() -> bool:
        try:
            core.read_namespaced_service_account("default", name)
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise

    wait_for(default_sa, timeout=30, interval=0.1, what=f"ServiceAccount default in {name}")
    yield name
    try:
        core.delete_namespace(name, propagation_policy="Background")
    except ApiException as exc:
        if exc.status != 404:
            raise


@pytest.fixture
def gpu_nodes(kube: ApiClient) -> Iterator[Callable[..., list[str]]]:
    from vibe.cluster import create_gpu_nodes, delete_fake_nodes, wait_nodes_ready

    prefixes: list[str] = []

    def make(n: int, **kwargs: object) -> list[str]:
        prefix = str(kwargs.pop("prefix", f"gpu-{uuid.uuid4().hex[:6]}"))
        labels = {**dict(kwargs.pop("labels", None) or {}), TEST_NODES_LABEL: prefix}  # type: ignore[call-overload]
        names = create_gpu_nodes(n, api=kube, prefix=prefix, labels=labels, **kwargs)  # type: ignore[arg-type]
        prefixes.append(prefix)
        wait_nodes_ready(kube, names, timeout=60)
        return names

    yield make
    for prefix in prefixes:
        delete_fake_nodes(kube, f"{TEST_NODES_LABEL}={prefix}")


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
    from vibe.cluster import Cluster, ClusterError

    cluster = Cluster(name)
    users = clusters_root() / f".{name}.users"
    me = users / str(os.getpid())
    with _users_lock(name):
        try:
            started = cluster.up(progress=progress)
        except ClusterError as exc:
            # `up` keeps a cluster it cannot restart (its data may matter); a test cluster's does not.
            if progress:
                progress(f"{exc}\ntest cluster {name!r}: removing it and starting a new one")
            cluster.down()
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
