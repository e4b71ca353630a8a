"""vibe.cluster — the local control plane used by the demo and the tests.

Real Kubernetes binaries built from Go modules (hack/build-cluster.sh), run as local processes bound to
127.0.0.1, with kwok standing in for kubelets and fake GPU nodes standing in for a fleet.

Layers, importing downward only: `paths` (where files go) → `binaries` (what runs), `pki` (certificates),
`processes` (start/stop) → `controlplane` (`Cluster`: up, down, status) → `nodes` (fake GPU nodes) →
`cli` (`vibe cluster ...`).
"""

from vibe.cluster.controlplane import Cluster, ClusterError, Status
from vibe.cluster.nodes import create_gpu_nodes, delete_fake_nodes, gpu_node_body, wait_nodes_ready
from vibe.cluster.paths import DEFAULT_CLUSTER

__all__ = [
    "DEFAULT_CLUSTER",
    "Cluster",
    "ClusterError",
    "Status",
    "create_gpu_nodes",
    "delete_fake_nodes",
    "gpu_node_body",
    "wait_nodes_ready",
]
