"""Publishing: GPUProfiles (server-side apply), liveness Leases, Events, and reading what the agent needs.

Role in the data flow: the agent's only contact with the API server. ``KubePublisher`` applies a node's
GPUProfile with field manager ``vibe-agent`` (creates or updates; the runner sends it only when its
content changed), applies its conditions to the ``status`` subresource when they change, renews the
node's Lease (coordination.k8s.io, named after the node, in the profile namespace: the heartbeat the
operator judges staleness by, a ~300-byte write instead of rewriting a ~35 KB profile), checks with a
metadata-only read that the profile still exists (a re-created CRD takes every profile with it), reads
its Node (UID for the owner references, ``nvidia.com/gpu`` capacity and GFD labels), posts core/v1
Events about the GPUProfile, and lists MoEDeployments for their model shapes. All calls pass through one
token bucket (``qps``/``burst``), so a process simulating 1,000 nodes stays a polite client.
``DirPublisher`` writes the same objects to files (no cluster).

The Kubernetes client is imported inside the methods, so the agent's benchmark path never needs it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from vibe.agent.node import Event
from vibe.agent.profile import NodeFacts, build_lease, build_status, node_facts
from vibe.api import (
    API_VERSION,
    FIELD_MANAGER_AGENT,
    GPUPROFILE_KIND,
    GPUPROFILE_PLURAL,
    GROUP,
    MOEDEPLOYMENT_PLURAL,
    VERSION,
)
from vibe.kubeclient import as_dict

log = logging.getLogger("vibe.agent.publish")

APPLY = "application/apply-patch+yaml"  # JSON is YAML: the body is sent as JSON


#: Accept header of a metadata-only read (PartialObjectMetadata): the name and UID, not the 35 KB body.
METADATA_ONLY = {"Accept": "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"}


class Publisher(Protocol):
    def read(self, namespace: str, node: str) -> dict[str, Any] | None: ...

    def apply(self, body: dict[str, Any]) -> dict[str, Any]: ...

    def heartbeat(self, namespace: str, node: str, when: float, every_s: int) -> None:
        """Renew the node's liveness Lease (created when missing)."""
        ...

    def exists(self, namespace: str, node: str) -> bool:
        """Whether the node's GPUProfile exists (a cheap read)."""
        ...

    def status(self, namespace: str, node: str, conditions: list[dict[str, Any]]) -> None:
        """Apply the GPUProfile's status conditions."""
        ...

    def node(self, node: str) -> NodeFacts | None:
        """The Node's UID, labels and GPU capacity; None when it cannot be read (simulated, no access)."""
        ...

    def event(self, namespace: str, node: str, ev: Event) -> None: ...

    def moedeployments(self) -> list[dict[str, Any]]: ...


class RateLimiter:
    """Token bucket shared by threads: ``acquire()`` blocks until a request may go."""

    def __init__(self, qps: float, burst: int) -> None:
        self.qps = max(qps, 1e-3)
        self.burst = max(1, burst)
        self.tokens = float(self.burst)
        self.t = time.monotonic()
        self.lock = threading.Lock()

    def acquire(self) -> None:
        while True:
            with self.lock:
                now = time.monotonic()
                self.tokens = min(self.burst, self.tokens + (now - self.t) * self.qps)
                self.t = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                wait = (1 - self.tokens) / self.qps
            time.sleep(wait)


class KubePublisher:
    """The API server side (kubernetes client; in-cluster config or kubeconfig, or a given ApiClient)."""

    def __init__(
        self, api_client: Any = None, *, qps: float = 20.0, burst: int = 40, component: str = "vibe-agent"
    ):
        from kubernetes import client

        from vibe.kubeclient import api_client as new_api_client

        if api_client is None:
            api_client = new_api_client()
        self.api_client = api_client
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.coord = client.CoordinationV1Api(api_client)
        self.limiter = RateLimiter(qps, burst)
        self.component = component
        self.uids: dict[tuple[str, str], str] = {}
        self.owners: dict[str, dict[str, Any]] = {}  # node -> its ownerReference (once the Node was read)

    def _go(self) -> None:
        self.limiter.acquire()

    def read(self, namespace: str, node: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        self._go()
        try:
            obj = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, GPUPROFILE_PLURAL, node)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        got = as_dict(obj)
        self.uids[(namespace, node)] = got["metadata"].get("uid", "")
        return got

    def apply(self, body: dict[str, Any]) -> dict[str, Any]:
        meta = body["metadata"]
        self._go()
        obj = self.custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            meta["namespace"],
            GPUPROFILE_PLURAL,
            meta["name"],
            body,
            field_manager=FIELD_MANAGER_AGENT,
            force=True,
            _content_type=APPLY,
        )
        if not isinstance(obj, dict):
            # The generated client maps only 200 to a body; an apply that creates answers 201 (None here).
            obj = self.read(meta["namespace"], meta["name"]) or {}
        self.uids[(meta["namespace"], meta["name"])] = (obj.get("metadata") or {}).get("uid", "")
        return obj

    def heartbeat(self, namespace: str, node: str, when: float, every_s: int) -> None:
        body = build_lease(node, namespace, when, every_s, self.owners.get(node))
        self._go()
        self.coord.patch_namespaced_lease(
            node, namespace, body, field_manager=FIELD_MANAGER_AGENT, force=True, _content_type=APPLY
        )

    def exists(self, namespace: str, node: str) -> bool:
        from kubernetes.client.exceptions import ApiException

        self._go()
        try:
            self.custom.get_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                GPUPROFILE_PLURAL,
                node,
                _preload_content=False,
                _headers=METADATA_ONLY,
            )
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        return True

    def status(self, namespace: str, node: str, conditions: list[dict[str, Any]]) -> None:
        self._go()
        self.custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            namespace,
            GPUPROFILE_PLURAL,
            node,
            build_status(node, namespace, conditions),
            field_manager=FIELD_MANAGER_AGENT,
            force=True,
            _content_type=APPLY,
        )

    def node(self, node: str) -> NodeFacts | None:
        from kubernetes.client.exceptions import ApiException

        self._go()
        try:
            rsp: Any = self.core.read_node(node, _preload_content=False)
        except ApiException as e:
            if e.status in (403, 404):
                log.info(
                    "node %s: cannot read the Node (%d); no owner reference, no GPU count check",
                    node,
                    e.status,
                )
                return None
            raise
        facts = node_facts(json.loads(rsp.data))
        self.owners[node] = facts.owner
        return facts

    def event(self, namespace: str, node: str, ev: Event) -> None:
        now = dt.datetime.now(dt.timezone.utc)
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{node}.{time.time_ns():x}", "namespace": namespace},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": GPUPROFILE_KIND,
                "name": node,
                "namespace": namespace,
                "uid": self.uids.get((namespace, node), ""),
            },
            "reason": ev.reason,
            "message": ev.message[:1024],
            "type": ev.type,
            "source": {"component": self.component, "host": node},
            "reportingComponent": self.component,
            "reportingInstance": f"{self.component}-{node}"[:128],
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        self._go()
        self.core.create_namespaced_event(namespace, body)  # type: ignore[arg-type]  # a dict serialises too

    def moedeployments(self) -> list[dict[str, Any]]:
        self._go()
        got = as_dict(self.custom.list_cluster_custom_object(GROUP, VERSION, MOEDEPLOYMENT_PLURAL))
        return list(got.get("items") or [])


class DirPublisher:
    """Writes ``<dir>/<namespace>/<node>.json`` (profile + status) and ``events.jsonl``: no cluster needed."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, namespace: str, node: str) -> Path:
        return self.root / namespace / f"{node}.json"

    def read(self, namespace: str, node: str) -> dict[str, Any] | None:
        p = self._path(namespace, node)
        return json.loads(p.read_text()) if p.exists() else None

    def apply(self, body: dict[str, Any]) -> dict[str, Any]:
        meta = body["metadata"]
        p = self._path(meta["namespace"], meta["name"])
        p.parent.mkdir(parents=True, exist_ok=True)
        old = self.read(meta["namespace"], meta["name"]) or {}
        obj = {**body, "status": old.get("status", {})}
        p.write_text(json.dumps(obj, indent=1, sort_keys=True))
        return obj

    def heartbeat(self, namespace: str, node: str, when: float, every_s: int) -> None:
        p = self.root / "leases" / namespace / f"{node}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(build_lease(node, namespace, when, every_s, None), indent=1, sort_keys=True))

    def exists(self, namespace: str, node: str) -> bool:
        return self._path(namespace, node).exists()

    def status(self, namespace: str, node: str, conditions: list[dict[str, Any]]) -> None:
        obj = self.read(namespace, node)
        if obj is None:
            return
        obj["status"] = build_status(node, namespace, conditions)["status"]
        self._path(namespace, node).write_text(json.dumps(obj, indent=1, sort_keys=True))

    def node(self, node: str) -> NodeFacts | None:
        return None

    def event(self, namespace: str, node: str, ev: Event) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "events.jsonl", "a") as f:
            f.write(
                json.dumps({"node": node, "reason": ev.reason, "type": ev.type, "message": ev.message}) + "\n"
            )

    def moedeployments(self) -> list[dict[str, Any]]:
        return []
