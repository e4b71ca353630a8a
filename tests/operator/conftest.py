"""Operator tests: pure logic (no marker) and real-cluster tests (``cluster``; the slow ones ``slow``).

Builders of GPUProfile and MoEDeployment bodies live in ``operator_builders.py``, the operator process and
the object helpers in ``operator_harness.py``. The fixtures below serve every real-cluster module: one
operator process per module (it watches every namespace; each test gets its own namespace), started with
the module's ``operator_args`` (override that fixture for other flags).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from vibe import api


@pytest.fixture(scope="module")
def crds(kube: Any) -> None:
    from vibe.crds.apply import apply_crds

    apply_crds(kube)


@pytest.fixture(scope="module")
def profile_ns(kube: Any, crds: None) -> Iterator[str]:
    """A namespace of the module's own for GPUProfiles (the operator's ``--profile-namespace``)."""
    from kubernetes import client

    core = client.CoreV1Api(kube)
    name = f"vibe-prof-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name, "labels": {api.PREFIX + "test": "true"}}})
    yield name
    core.delete_namespace(name)


@pytest.fixture(scope="module")
def operator_args() -> tuple[str, ...]:
    """Extra command-line flags of the module's operator."""
    return ()


@pytest.fixture(scope="module")
def operator(cluster: Any, profile_ns: str, operator_args: tuple[str, ...]) -> Iterator[Any]:
    from operator_harness import running_operator

    with running_operator(cluster.kubeconfig, profile_ns, *operator_args) as op:
        yield op


@pytest.fixture
def objs(kube: Any, namespace: str, profile_ns: str, operator: Any) -> Any:
    from operator_harness import Objects

    return Objects(kube, namespace, profile_ns, log=operator.tail)
