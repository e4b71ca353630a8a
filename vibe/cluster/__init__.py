"""vibe.cluster — the local control plane used by the demo and the tests.

Real Kubernetes binaries built from Go modules (hack/build-cluster.sh), run as local processes bound to
127.0.0.1, with kwok standing in for kubelets and fake GPU nodes standing in for a fleet.

Layers, importing downward only: `paths` (where files go) → `binaries` (what runs), `pki`
(certificates), `processes` (start/stop, free ports, file locks), `waiting` (``wait_for``), `nodes` (fake
GPU nodes) → `controlplane` (`Cluster`: up, down, status) → `identity` (ServiceAccount kubeconfigs),
`crds` (the repository's CRDs, for the tests and benchmarks) → `cli` (`vibe cluster ...`).

The names below are re-exported lazily (PEP 562), so ``vibe.cluster.processes`` imports nothing but the
standard library (no ``cryptography``, no Kubernetes client).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Cluster": "controlplane",
    "ClusterError": "controlplane",
    "Status": "controlplane",
    "create_gpu_nodes": "nodes",
    "delete_fake_nodes": "nodes",
    "gpu_node_body": "nodes",
    "wait_nodes_ready": "nodes",
    "DEFAULT_CLUSTER": "paths",
    "wait_for": "waiting",
}

__all__ = [
    "DEFAULT_CLUSTER",
    "Cluster",
    "ClusterError",
    "Status",
    "create_gpu_nodes",
    "delete_fake_nodes",
    "gpu_node_body",
    "wait_for",
    "wait_nodes_ready",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"vibe.cluster.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vibe.cluster' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:
    from vibe.cluster.controlplane import Cluster, ClusterError, Status
    from vibe.cluster.nodes import create_gpu_nodes, delete_fake_nodes, gpu_node_body, wait_nodes_ready
    from vibe.cluster.paths import DEFAULT_CLUSTER
    from vibe.cluster.waiting import wait_for
