"""Shared fixtures: the local control plane, started once per session, and a fresh namespace per test.

- ``cluster_binaries`` (session) paths of the built binaries: ``cluster_binaries["helm"]``, ...
                Missing ones are built once collection is done and before the first test runs (only
                when a selected test needs them; the first build takes a while: see hack/README.md).
- ``cluster``   (session) a running `vibe.cluster.Cluster` named ``vibe-test`` (``$VIBE_TEST_CLUSTER``),
                so it never collides with a user's demo cluster ``vibe``. Concurrent sessions share
                it; the last one out takes it down, unless someone started it by hand or
                ``VIBE_KEEP_CLUSTER=1`` is set (then the next session reuses it: faster when iterating).
- ``kube``      (session) a `kubernetes.client.ApiClient` with admin rights on it.
- ``namespace`` (function) the name of a new namespace, its ``default`` ServiceAccount already made;
                deleted after the test.
- ``gpu_nodes`` (function) a factory ``gpu_nodes(n, **kwargs) -> list[str]`` making fake GPU nodes
                (`vibe.cluster.create_gpu_nodes` keywords), with unique names and a label
                ``vibe.dev/test-nodes=<prefix>`` for selectors; waits until Ready, deletes them after.

Tests that use ``cluster`` (directly or through the others) get the ``cluster`` marker automatically,
so ``pytest -m "not cluster"`` runs everything that needs no control plane.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from vibe.cluster.testing import TEST_NODES_LABEL, wait_for

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

    from vibe.cluster import Cluster

TEST_CLUSTER = os.environ.get("VIBE_TEST_CLUSTER", "vibe-test")


def pytest_configure(config: pytest.Config) -> None:
    # tests/ is not a package: pytest imports each test module by its basename, so two folders holding
    # the same basename break collection with an obscure "import file mismatch". Say it plainly.
    seen: dict[str, Path] = {}
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        if path.name == "conftest.py":
            continue
        if path.name in seen:
            raise pytest.UsageError(
                f"tests/ modules need unique basenames: {seen[path.name]} and {path} (prefix the area: "
                f"test_<area>_*.py)"
            )
        seen[path.name] = path


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
    from vibe.cluster.testing import shared_cluster

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
    core.create_namespace({"metadata": {"name": name, "labels": {"vibe.dev/test": "true"}}})

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
