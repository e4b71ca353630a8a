"""What the operator must be allowed to do, checked once at start: a missing permission is one line.

Role: without it Kopf retries each forbidden list for about a minute, then exits with a traceback per
watched kind, and Kubernetes restarts it into the same wall (issue 15: tracebacks in a loop). Asking the
API server (``SelfSubjectAccessReview``, which every authenticated identity may create) whether each
permission below is granted, before Kopf starts, lets ``vibe operator`` say exactly what is missing, in
one line, and exit; Kubernetes then backs the restarts off (CrashLoopBackOff), so it is said once per
restart, never in a loop. Permissions the operator can do without (Leases, peering) are not required.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from vibe import api


@dataclass(frozen=True)
class Need:
    verb: str
    resource: str
    group: str = ""
    subresource: str = ""
    cluster: bool = False  # cluster-scoped (or checked cluster-wide regardless of the namespaces)

    def text(self, namespace: str | None) -> str:
        what = f"{self.resource}/{self.subresource}" if self.subresource else self.resource
        where = "cluster-wide" if namespace is None else f"in {namespace}"
        return f"{self.verb} {what}{'.' + self.group if self.group else ''} {where}"


#: What Kopf needs to start (list and watch every kind it serves) and what a reconcile does.
NEEDS = (
    Need("list", "customresourcedefinitions", "apiextensions.k8s.io", cluster=True),
    Need("watch", "customresourcedefinitions", "apiextensions.k8s.io", cluster=True),
    Need("list", "nodes", cluster=True),
    Need("list", api.MOEDEPLOYMENT_PLURAL, api.GROUP),
    Need("watch", api.MOEDEPLOYMENT_PLURAL, api.GROUP),
    Need("patch", api.MOEDEPLOYMENT_PLURAL, api.GROUP, "status"),
    Need("list", api.GPUPROFILE_PLURAL, api.GROUP),
    Need("watch", api.GPUPROFILE_PLURAL, api.GROUP),
    Need("get", "configmaps"),
    Need("list", "configmaps"),
    Need("watch", "configmaps"),
    Need("create", "configmaps"),
    Need("update", "configmaps"),
    Need("list", "pods"),
    Need("create", "events"),
)


async def missing(api_client: Any, namespaces: Iterable[str]) -> list[str]:
    """The permissions of ``NEEDS`` this identity lacks, in words (empty: all granted).

    ``namespaces``: the watched namespaces (empty: the whole cluster)."""
    authz = client.AuthorizationV1Api(api_client)
    scopes: list[str | None] = list(namespaces) or [None]

    def allowed(need: Need, namespace: str | None) -> bool:
        attrs = client.V1ResourceAttributes(
            verb=need.verb,
            resource=need.resource,
            group=need.group,
            subresource=need.subresource or None,
            namespace=namespace,
        )
        review = client.V1SelfSubjectAccessReview(
            spec=client.V1SelfSubjectAccessReviewSpec(resource_attributes=attrs)
        )
        got: Any = authz.create_self_subject_access_review(review, _preload_content=False)
        return bool(json.loads(got.data).get("status", {}).get("allowed"))

    checks = [(n, None) for n in NEEDS if n.cluster] + [
        (n, ns) for n in NEEDS if not n.cluster for ns in scopes
    ]
    results = await asyncio.gather(*(asyncio.to_thread(allowed, n, ns) for n, ns in checks))
    return [n.text(ns) for (n, ns), ok in zip(checks, results, strict=True) if not ok]
