"""Kubeconfigs that authenticate as a ServiceAccount, so local processes run with a chart's exact RBAC.

The demo and the chart tests run the operator and the agent as local processes, but not as cluster
admin: each gets a bearer token from the TokenRequest API for the ServiceAccount the Helm chart made
for it, and a kubeconfig that points at the same API server. What the chart's Roles forbid, the API
server refuses, exactly as it would for the pods.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def service_account_kubeconfig(
    api: Any, admin_kubeconfig: Path, namespace: str, service_account: str, path: Path, *, seconds: int = 3600
) -> Path:
    """Write ``path``: a kubeconfig for ServiceAccount ``namespace/service_account`` (a TokenRequest token).

    ``api`` is an admin `kubernetes.client.ApiClient`; ``admin_kubeconfig`` supplies the server and CA.
    """
    from kubernetes import client

    token = (
        client.CoreV1Api(api)
        .create_namespaced_service_account_token(
            service_account,
            namespace,
            {"spec": {"expirationSeconds": seconds}},  # type: ignore[arg-type]
        )
        .status.token
    )
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    cluster = admin["clusters"][0]
    user = f"system:serviceaccount:{namespace}:{service_account}"
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [
            {
                "name": service_account,
                "context": {"cluster": cluster["name"], "user": user, "namespace": namespace},
            }
        ],
        "current-context": service_account,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(yaml.safe_dump(doc))
    return path
