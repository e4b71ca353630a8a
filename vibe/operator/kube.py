"""The few API calls a reconcile makes, as plain dicts in and out.

Role: the reconciler's only door to the API server besides Kopf's watches. It uses the official
synchronous client (the same credentials Kopf logs in with: in-cluster service account, else the
kubeconfig) and runs each call in a worker thread, so handlers stay async. Reads return the raw JSON
(``_preload_content=False``): plain dicts, no model classes, and what was written is what is read.

Errors: 404 becomes ``None`` on reads; 409 (a write raced another writer, or a ConfigMap created
meanwhile) becomes ``Conflict``, which the reconciler answers by re-reading and reconciling again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from vibe.api import GROUP, MOEDEPLOYMENT_PLURAL, VERSION
from vibe.kubeclient import api_client

#: The label selector of the agents' Leases (vibe.agent.profile.build_lease).
AGENT_LEASES = "app.kubernetes.io/managed-by=vibe-agent"

#: Ask for PartialObjectMetadata(List): names and labels without the rest of the object.
_METADATA_ONLY = {
    "Accept": "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
}
_METADATA_ONE = {"Accept": "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"}


class Conflict(Exception):
    """The object changed (or appeared) since it was read: re-read and retry."""


class Kube:
    """Thin async wrapper over CoreV1Api and CustomObjectsApi."""

    def __init__(self, api_client: client.ApiClient | None = None) -> None:
        self.api = api_client or new_api_client()
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.coordination = client.CoordinationV1Api(self.api)

    # ---- MoEDeployments

    async def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await _read(
            self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, MOEDEPLOYMENT_PLURAL, name
        )

    async def patch_deployment_status(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        """JSON merge patch of the status subresource (``None`` values delete fields)."""
        try:
            await asyncio.to_thread(
                self.custom.patch_namespaced_custom_object_status,
                GROUP,
                VERSION,
                namespace,
                MOEDEPLOYMENT_PLURAL,
                name,
                {"status": dict(patch)},
            )
        except ApiException as e:
            if e.status == 404:
                return  # deleted meanwhile
            raise

    # ---- ConfigMaps

    async def get_config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await _read(self.core.read_namespaced_config_map, name, namespace)

    async def write_config_map(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create (no resourceVersion in body) or replace (with it); ``Conflict`` on 409."""
        name = body["metadata"]["name"]
        try:
            if body["metadata"].get("resourceVersion"):
                rsp: Any = await asyncio.to_thread(
                    self.core.replace_namespaced_config_map,
                    name,
                    namespace,
                    _raw(body),
                    _preload_content=False,
                )
            else:
                rsp = await asyncio.to_thread(
                    self.core.create_namespaced_config_map, namespace, _raw(body), _preload_content=False
                )
        except ApiException as e:
            if e.status == 409:
                raise Conflict(f"ConfigMap {namespace}/{name} changed meanwhile") from None
            raise
        return _json(rsp)

    # ---- Pods (podSelector mode: the API server filters by the selector)

    async def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """The pods of ``namespace`` matching the label selector query ``selector``, as plain dicts."""
        rsp: Any = await asyncio.to_thread(
            self.core.list_namespaced_pod, namespace, label_selector=selector, _preload_content=False
        )
        return list(_json(rsp).get("items") or ())

    # ---- Nodes (metadata only: the API server filters by label and sends no status)

    async def node_labels(self, selector: Mapping[str, str] | None = None) -> dict[str, dict[str, str]]:
        """Name -> labels of the nodes matching ``selector`` (every label equal; None or {}: all nodes)."""
        sel = ",".join(f"{k}={v}" for k, v in sorted((selector or {}).items())) or None
        # resource_version "0": served from the API server's watch cache, not read through from etcd
        # (with 1,000 nodes a storage read decodes every node to filter by label). It may lag by the
        # watch delay; reconciles are level-based, so the next one sees what this one missed.
        rsp: Any = await asyncio.to_thread(
            self.core.list_node,
            label_selector=sel,
            resource_version="0",
            _preload_content=False,
            _headers=_METADATA_ONLY,
        )
        items = _json(rsp).get("items") or ()
        return {i["metadata"]["name"]: dict(i["metadata"].get("labels") or {}) for i in items}

    async def one_node_labels(self, name: str) -> dict[str, str] | None:
        try:
            rsp: Any = await asyncio.to_thread(
                self.core.read_node, name, _preload_content=False, _headers=_METADATA_ONE
            )
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return dict(_json(rsp)["metadata"].get("labels") or {})

    # ---- the agents' liveness Leases (profile namespace)

    async def agent_leases(self, namespace: str) -> dict[str, dict[str, Any]] | None:
        """Node name -> the agent's Lease spec (``renewTime``, ``leaseDurationSeconds``); None when Leases
        cannot be read (403: a chart from before Leases; the profiles' own heartbeats are used then).

        One list filtered by label, served from the API server's watch cache (``resource_version="0"``):
        at 1,000 nodes ~300 KB per reconcile, against a watch event per node every heartbeat period.
        """
        try:
            rsp: Any = await asyncio.to_thread(
                self.coordination.list_namespaced_lease,
                namespace,
                label_selector=AGENT_LEASES,
                resource_version="0",
                _preload_content=False,
            )
        except ApiException as e:
            if e.status == 403:
                return None
            raise
        items = _json(rsp).get("items") or ()
        return {str(i["metadata"]["name"]): dict(i.get("spec") or {}) for i in items}

    # ---- cluster-level helpers used at startup

    async def ensure_peering(self, name: str, namespaces: list[str]) -> None:
        """Create the Kopf peering object(s) the operator will use, if missing."""
        body = {"metadata": {"name": name}}
        try:
            if namespaces:
                for ns in namespaces:
                    await asyncio.to_thread(
                        self.custom.create_namespaced_custom_object,
                        "kopf.dev",
                        "v1",
                        ns,
                        "kopfpeerings",
                        {**body, "apiVersion": "kopf.dev/v1", "kind": "KopfPeering"},
                    )
            else:
                await asyncio.to_thread(
                    self.custom.create_cluster_custom_object,
                    "kopf.dev",
                    "v1",
                    "clusterkopfpeerings",
                    {**body, "apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering"},
                )
        except ApiException as e:
            if e.status != 409:
                raise


def new_api_client(kubeconfig: str | None = None, context: str | None = None) -> client.ApiClient:
    """An API client of the given kubeconfig and context, else the in-cluster service account, else
    ``$KUBECONFIG`` (``vibe.kubeclient``)."""
    return api_client(kubeconfig, context=context, pool_maxsize=64)  # one connection per reconcile thread


def _json(rsp: Any) -> dict[str, Any]:
    """The JSON object of a raw (``_preload_content=False``) response."""
    out: dict[str, Any] = json.loads(rsp.data)
    return out


def _raw(body: Mapping[str, Any]) -> Any:
    """A plain dict where the generated client's signature names a model class (it serialises either)."""
    return dict(body)


async def _read(fn: Any, *args: Any) -> dict[str, Any] | None:
    try:
        rsp: Any = await asyncio.to_thread(fn, *args, _preload_content=False)
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    return _json(rsp)
