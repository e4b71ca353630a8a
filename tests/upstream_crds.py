"""The upstream CustomResourceDefinitions the examples are validated against, read from Go modules.

``hack/upstream-crds/go.mod`` pins each upstream project (one source of truth, like ``hack/k8s/go.mod``
for the control plane); ``crd(module, path)`` runs ``go mod download -json <module>@<version>`` there
(the module cache keeps it, so only the first run needs the Go module proxy) and reads the CRD file from
the module's directory. Nothing upstream is copied into this repository.

NVIDIA Dynamo's ``DynamoGraphDeployment`` CRD is not here: its operator module
(``github.com/ai-dynamo/dynamo/deploy/operator``) has no version tags, and the module proxy this project
reaches refuses every version and commit of it (HTTP 403), so its examples are checked as
``tests/serving/test_serving_dynamo.py`` says instead.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from vibe import api

MODULE_DIR = Path(__file__).resolve().parents[1] / "hack" / "upstream-crds"

LWS_MODULE = "sigs.k8s.io/lws"
LWS_CRD = "config/crd/bases/leaderworkerset.x-k8s.io_leaderworkersets.yaml"
PROMETHEUS_OPERATOR_MODULE = "github.com/prometheus-operator/prometheus-operator"
#: kind -> the Prometheus Operator CRD file of the chart's monitoring objects.
PROMETHEUS_OPERATOR_CRDS = {
    kind: f"example/prometheus-operator-crd/monitoring.coreos.com_{kind.lower()}s.yaml"
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule")
}


#: Not upstream: a stand-in for Dynamo's DynamoGraphDeployment CRD (which cannot be had, see above) with
#: its group, version, kind and plural and a schema that keeps every field, for the tests of vibe's side
#: of a DGD restart (what the API server accepts, the resourceVersion guard, which components change).
STAND_IN_DGD_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"{api.DGD_PLURAL}.{api.DGD_API_GROUP}"},
    "spec": {
        "group": api.DGD_API_GROUP,
        "names": {
            "kind": api.DGD_KIND,
            "listKind": api.DGD_KIND + "List",
            "plural": api.DGD_PLURAL,
            "singular": api.DGD_KIND.lower(),
            "shortNames": ["dgd"],
        },
        "scope": "Namespaced",
        "versions": [
            {
                "name": api.DGD_API_VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                        },
                    }
                },
            }
        ],
    },
}


class UpstreamUnavailable(RuntimeError):
    """The pinned module could not be downloaded (no ``go``, or the module proxy refused)."""


def pinned(module: str) -> str:
    """The version ``hack/upstream-crds/go.mod`` requires for ``module``."""
    text = (MODULE_DIR / "go.mod").read_text()
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", text, re.MULTILINE)
    if not match:
        raise LookupError(f"hack/upstream-crds/go.mod does not require {module}")
    return match.group(1)


@functools.cache
def module_dir(module: str) -> Path:
    """The directory of the pinned ``module`` in the Go module cache (downloading it if needed)."""
    go = shutil.which("go")
    if go is None:
        raise UpstreamUnavailable("`go` is not on PATH: it fetches the upstream CRDs (see hack/README.md)")
    env = {**os.environ, "GOTOOLCHAIN": "local"}
    proc = subprocess.run(
        [go, "mod", "download", "-json", f"{module}@{pinned(module)}"],
        cwd=MODULE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    try:
        info = json.loads(proc.stdout)
    except json.JSONDecodeError:
        info = {}
    if proc.returncode != 0 or "Dir" not in info:
        raise UpstreamUnavailable(
            f"go mod download {module}@{pinned(module)} failed: {info.get('Error') or proc.stderr.strip()}"
        )
    return Path(info["Dir"])


@functools.cache
def crd(module: str, path: str) -> dict[str, Any]:
    """The CustomResourceDefinition at ``path`` inside the pinned ``module``."""
    docs = [d for d in yaml.safe_load_all((module_dir(module) / path).read_text()) if d]
    (doc,) = [d for d in docs if d.get("kind") == "CustomResourceDefinition"]
    return doc


@contextlib.contextmanager
def installed(api_client: Any, crds: list[dict[str, Any]]) -> Iterator[None]:
    """Apply ``crds`` (waiting until served) for the duration; remove afterwards those that were not there
    before, so that tests which need an API group absent (the chart renders monitoring objects only when
    the cluster serves monitoring.coreos.com) do not depend on the order tests run in."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from vibe.cluster.waiting import wait_for
    from vibe.crds.apply import apply_crds

    ext = client.ApiextensionsV1Api(api_client)
    present = {c.metadata.name for c in ext.list_custom_resource_definition().items}
    apply_crds(api_client, crds, field_manager="vibe-tests")
    try:
        yield
    finally:
        added = [c["metadata"]["name"] for c in crds if c["metadata"]["name"] not in present]
        for name in added:
            with contextlib.suppress(ApiException):
                ext.delete_custom_resource_definition(name)

        def gone() -> bool:
            return not {c.metadata.name for c in ext.list_custom_resource_definition().items} & set(added)

        wait_for(gone, timeout=60, what=f"CRDs {', '.join(added)} deleted")
