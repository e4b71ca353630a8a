"""Fake GPU nodes for the local control plane: Node objects that kwok keeps Ready.

Each node looks like a GPU node after NVIDIA's GPU Feature Discovery has labelled it
(``nvidia.com/gpu.product``, ``.count``, ``.memory``, ``.family``, ``.present``) and the device plugin
has advertised ``nvidia.com/gpu`` in its capacity, so the scheduler, node selectors and the operator see
what they would see on a real fleet. The annotation ``kwok.x-k8s.io/node: fake`` hands the node to kwok,
which keeps it Ready (renewing its Lease) and runs the pods bound to it (see data/kwok-stages.yaml).

Creation is the bottleneck of large benchmarks, so bodies are plain dicts (the client's model classes
serialise slowly), requests bypass the generated API classes, and they go out from a thread pool over
one connection pool.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from vibe.api import LABEL_FAKE_NODE  # on every node made here: tests and demos find (and delete) them

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}

# product label -> (memory per GPU in MiB as GFD reports it, architecture family, compute capability)
PRODUCTS: dict[str, tuple[int, str, str]] = {
    "NVIDIA-H100-80GB-HBM3": (81559, "hopper", "9.0"),
    "NVIDIA-H100-NVL": (95830, "hopper", "9.0"),
    "NVIDIA-H200": (143771, "hopper", "9.0"),
    "NVIDIA-A100-SXM4-80GB": (81920, "ampere", "8.0"),
    "NVIDIA-A100-SXM4-40GB": (40960, "ampere", "8.0"),
    "NVIDIA-B200": (183359, "blackwell", "10.0"),
    "NVIDIA-L40S": (46068, "ada-lovelace", "8.9"),
}


def node_name(prefix: str, index: int) -> str:
    """``gpu-node-7``: not zero-padded, so a name never depends on how many nodes were made with it."""
    return f"{prefix}-{index}"


def gpu_node_body(
    name: str,
    *,
    gpus_per_node: int = 8,
    product: str = "NVIDIA-H100-80GB-HBM3",
    labels: Mapping[str, str] | None = None,
    taints: Sequence[Mapping[str, str]] = (),
    gpu_memory_mib: int | None = None,
    gpu_family: str | None = None,
    cpu: str = "192",
    memory: str = "2Ti",
    pods: str = "110",
    ready: bool = True,
) -> dict[str, Any]:
    """The Node object (as a dict) of one fake GPU node.

    With ``ready`` (the default) the node is created with the status a healthy kubelet posts, so it is
    schedulable at once: kwok then only renews its Lease and heartbeats. Without, it starts with no
    conditions and kwok's node-initialize stage makes it Ready within moments (one templated status
    update per node, which is what makes a thousand nodes slow to come up)."""
    mem, family, cc = PRODUCTS.get(product, (0, "unknown", "0.0"))
    major, minor = cc.split(".")
    node_labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
        LABEL_FAKE_NODE: "true",
        "nvidia.com/gpu.present": "true" if gpus_per_node > 0 else "false",
        "nvidia.com/gpu.product": product,
        "nvidia.com/gpu.count": str(gpus_per_node),
        "nvidia.com/gpu.memory": str(gpu_memory_mib if gpu_memory_mib is not None else mem),
        "nvidia.com/gpu.family": gpu_family or family,
        "nvidia.com/gpu.compute.major": major,
        "nvidia.com/gpu.compute.minor": minor,
        "nvidia.com/gpu.machine": "kwok-fake",
        **(labels or {}),
    }
    resources = {
        "cpu": cpu,
        "memory": memory,
        "pods": pods,
        "ephemeral-storage": "1Ti",
        GPU_RESOURCE: str(gpus_per_node),
    }
    status: dict[str, Any] = {"capacity": dict(resources), "allocatable": dict(resources)}
    if ready:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        status |= {
            "phase": "Running",
            "conditions": [{**c, "lastHeartbeatTime": now, "lastTransitionTime": now} for c in _CONDITIONS],
            "addresses": [{"type": "Hostname", "address": name}],
            "nodeInfo": _NODE_INFO,
        }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": node_labels, "annotations": {KWOK_ANNOTATION: "fake"}},
        "spec": {"taints": [dict(t) for t in taints]} if taints else {},
        "status": status,
    }


# What a healthy kubelet reports (the same set kwok's node-initialize stage writes).
_CONDITIONS = [
    {
        "type": "Ready",
        "status": "True",
        "reason": "KubeletReady",
        "message": "kubelet is posting ready status",
    },
    {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory", "message": ""},
    {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure", "message": ""},
    {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID", "message": ""},
    {"type": "NetworkUnavailable", "status": "False", "reason": "RouteCreated", "message": ""},
]
_NODE_INFO = {
    "architecture": "amd64",
    "operatingSystem": "linux",
    "kubeletVersion": "kwok",
    "kubeProxyVersion": "kwok",
    "containerRuntimeVersion": "kwok",
    "kernelVersion": "kwok",
    "osImage": "kwok fake GPU node",
    "machineID": "",
    "systemUUID": "",
    "bootID": "",
}


class NodeApiError(RuntimeError):
    """The API server refused a node request."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:500].decode(errors='replace')}")
        self.status = status


class _RawNodes:
    """POST/DELETE/GET of Nodes through an ApiClient's own connection pool and credentials.

    The generated ``CoreV1Api`` validates every argument and, on first use, imports a few hundred model
    classes (seconds of CPU); bulk node work needs neither. Use as a context manager.
    """

    def __init__(self, api: ApiClient, workers: int) -> None:
        from kubernetes import client

        config = copy.copy(api.configuration)
        config.connection_pool_maxsize = max(workers, 4)
        self.api = client.ApiClient(config)
        self.host = config.host.rstrip("/")

    def __enter__(self) -> _RawNodes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.api.close()

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        self.api.update_params_for_auth(headers, [], ["BearerToken"], path, method, body)
        resp = self.api.rest_client.request(method, self.host + path, headers=headers, body=body)
        data = resp.read()
        return resp.status, data

    def create(self, body: dict[str, Any], replace: bool = True) -> str:
        name = body["metadata"]["name"]
        status, data = self.request("POST", "/api/v1/nodes", body)
        if status == 409 and replace:
            self.delete(name)
            status, data = self.request("POST", "/api/v1/nodes", body)
        if status >= 300:
            raise NodeApiError(status, data)
        return name

    def delete(self, name: str) -> None:
        status, data = self.request("DELETE", f"/api/v1/nodes/{name}", {"gracePeriodSeconds": 0})
        if status >= 300 and status != 404:
            raise NodeApiError(status, data)

    def list(self, label_selector: str) -> list[dict[str, Any]]:
        from urllib.parse import quote

        status, data = self.request("GET", f"/api/v1/nodes?labelSelector={quote(label_selector)}")
        if status >= 300:
            raise NodeApiError(status, data)
        return json.loads(data)["items"]


def apply_nodes(api: ApiClient, bodies: Iterable[dict[str, Any]], workers: int = 16) -> list[str]:
    """Create the given Node bodies concurrently (replacing any of the same name); returns their names."""
    bodies = list(bodies)
    with _RawNodes(api, workers) as raw, ThreadPoolExecutor(max(1, min(workers, len(bodies)))) as pool:
        return list(pool.map(raw.create, bodies))


def create_gpu_nodes(
    n: int,
    gpus_per_node: int = 8,
    product: str = "NVIDIA-H100-80GB-HBM3",
    labels: Mapping[str, str] | None = None,
    *,
    api: ApiClient,
    prefix: str = "gpu-node",
    start: int = 0,
    taint: bool | Sequence[Mapping[str, str]] = False,
    gpu_memory_mib: int | None = None,
    gpu_family: str | None = None,
    cpu: str = "192",
    memory: str = "2Ti",
    workers: int = 16,
) -> list[str]:
    """Create ``n`` fake GPU nodes named ``<prefix>-<start>`` ... and return their names.

    ``labels`` are added to every node (e.g. ``{"pool": "moe-a"}`` for a MoEDeployment's nodeSelector).
    ``taint=True`` adds ``nvidia.com/gpu=present:NoSchedule``; a list gives the taints explicitly.
    ``api`` is an admin client of the cluster (``Cluster.api_client()``). kwok marks the nodes Ready
    within about a second; use :func:`wait_nodes_ready` to wait for it.
    """
    taints: Sequence[Mapping[str, str]] = [GPU_TAINT] if taint is True else (taint or [])
    bodies = (
        gpu_node_body(
            node_name(prefix, i),
            gpus_per_node=gpus_per_node,
            product=product,
            labels=labels,
            taints=taints,
            gpu_memory_mib=gpu_memory_mib,
            gpu_family=gpu_family,
            cpu=cpu,
            memory=memory,
        )
        for i in range(start, start + n)
    )
    return apply_nodes(api, bodies, workers=workers)


def node_names(api: ApiClient, label_selector: str = "") -> set[str]:
    """Names of the nodes matching ``label_selector`` (all nodes when empty)."""
    with _RawNodes(api, 1) as raw:
        return {node["metadata"]["name"] for node in raw.list(label_selector)}


def delete_fake_nodes(api: ApiClient, label_selector: str = f"{LABEL_FAKE_NODE}=true") -> int:
    """Delete every node made here (or matching ``label_selector``); returns how many."""
    with _RawNodes(api, 16) as raw:
        names = [node["metadata"]["name"] for node in raw.list(label_selector)]
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(raw.delete, names))
    return len(names)


def _schedulable(node: dict[str, Any]) -> bool:
    conditions = node.get("status", {}).get("conditions") or []
    taints = node.get("spec", {}).get("taints") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions) and not any(
        t.get("key", "").startswith("node.kubernetes.io/") for t in taints
    )


def wait_nodes_ready(api: ApiClient, names: Iterable[str], timeout: float = 60.0) -> None:
    """Block until every named node is Ready=True (kwok's node-initialize stage) and schedulable: the
    node lifecycle controller has lifted the ``node.kubernetes.io/not-ready`` taint it starts with."""
    want = set(names)
    deadline = time.monotonic() + timeout
    with _RawNodes(api, 1) as raw:
        while True:
            ready = {node["metadata"]["name"] for node in raw.list(LABEL_FAKE_NODE) if _schedulable(node)}
            pending = want - ready
            if not pending:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(pending)} node(s) not Ready after {timeout:.0f}s, e.g. {sorted(pending)[:3]}"
                )
            time.sleep(0.2)
