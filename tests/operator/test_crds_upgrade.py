"""An upgrade across a schema change: an older MoEDeployment CRD, as `helm install` left it, then
`vibe crds apply` (the command the chart's pre-upgrade hook runs), on the real kube-apiserver.

The "old release" is today's CRD without the model's CEL rule (topK <= experts) and the `model.name`
property, and with an obsolete `model.legacyNote` property and a label a later release dropped; it is
written by field manager `helm`, as Helm's plain create of crds/ does. After `vibe crds apply` the rule
is enforced, the new field is kept instead of pruned, the dropped property and label are gone (server-side
apply alone would keep the label: helm owns it), and the object made under the old schema is still there.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from operator_builders import deployment_body

from vibe import api
from vibe import crds as manifests
from vibe.crds.apply import apply_crds

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
NAME = f"{api.MOEDEPLOYMENT_PLURAL}.{api.GROUP}"
RULE = "model.topK must be <= model.experts"
LEGACY_LABEL = api.PREFIX + "legacy-test"  # on the old CRD only: a field the new release dropped


def new_crd() -> dict[str, Any]:
    return next(d for d in manifests.documents() if d["metadata"]["name"] == NAME)


def model_schema(crd: dict[str, Any]) -> dict[str, Any]:
    version = next(v for v in crd["spec"]["versions"] if v["name"] == api.VERSION)
    return version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["model"]


def old_crd() -> dict[str, Any]:
    """Today's CRD as an older release had it: no topK rule, no model.name, a model.legacyNote."""
    crd = copy.deepcopy(new_crd())
    model = model_schema(crd)
    rules = model.pop("x-kubernetes-validations")
    assert any(r["message"] == RULE for r in rules), "the rule this test drops is gone: pick another"
    del model["properties"]["name"]
    model["properties"]["legacyNote"] = {"type": "string", "maxLength": 64}
    crd["metadata"].setdefault("labels", {})[LEGACY_LABEL] = "true"
    return crd


def install_as_helm(kube: Any, crd: dict[str, Any]) -> None:
    """Replace the CRD wholly with ``crd``, written by field manager ``helm`` (Helm creates crds/ so)."""
    from kubernetes import client

    ext = client.ApiextensionsV1Api(kube)
    body = copy.deepcopy(crd)
    body["metadata"]["resourceVersion"] = ext.read_custom_resource_definition(NAME).metadata.resource_version
    ext.replace_custom_resource_definition(NAME, body, field_manager="helm")


def live_model_schema(kube: Any) -> dict[str, Any]:
    from kubernetes import client

    raw = client.ApiextensionsV1Api(kube).read_custom_resource_definition(NAME, _preload_content=False)
    return model_schema(json.loads(raw.data))


def vibe_crds_apply(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vibe", "crds", "apply", "--kubeconfig", str(kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def create(kube: Any, namespace: str, body: dict[str, Any]) -> tuple[int, dict[str, Any] | str]:
    """Create ``body``: (201, the object) or (the error status, its message). A 503 while the API server
    swaps in the CRD's new storage (right after the CRD changed) is waited out."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    deadline = time.monotonic() + 15
    while True:
        try:
            obj = client.CustomObjectsApi(kube).create_namespaced_custom_object(
                api.GROUP, api.VERSION, namespace, api.MOEDEPLOYMENT_PLURAL, body
            )
        except ApiException as e:
            if e.status == 503 and time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            return e.status or 0, json.loads(e.body or "{}").get("message", e.body)
        return 201, obj


def with_model(name: str, /, **model: Any) -> dict[str, Any]:
    body = deployment_body(name)
    body["spec"]["model"].update(model)
    return body


def test_vibe_crds_apply_upgrades_across_a_schema_change(kube: Any, cluster: Any, namespace: str) -> None:
    from kubernetes import client

    apply_crds(kube)  # every CRD current, so only the MoEDeployment one changes below
    install_as_helm(kube, old_crd())
    experts = deployment_body("x")["spec"]["model"]["experts"]

    # Under the old schema: the rule is absent (topK > experts is accepted), model.name is pruned.
    # The API server validates with the old schema once it has loaded it: wait for that, not a fixed time
    # (under load the first create still met the current rule: 422 "topK must be <= model.experts").
    deadline = time.monotonic() + 30
    while True:
        status, old = create(kube, namespace, with_model("old", topK=experts + 1, name="m", legacyNote="v1"))
        if status != 422 or "topK must be" not in str(old) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert status == 201, old
    assert isinstance(old, dict)
    assert "name" not in old["spec"]["model"] and old["spec"]["model"]["legacyNote"] == "v1"

    # --dry-run says what would change and changes nothing.
    dry = vibe_crds_apply(cluster.kubeconfig, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"customresourcedefinition/{NAME} updated (dry run)" in dry.stdout.splitlines(), dry.stdout
    assert "x-kubernetes-validations" not in live_model_schema(kube)

    done = vibe_crds_apply(cluster.kubeconfig)
    assert done.returncode == 0, done.stderr
    lines = set(done.stdout.splitlines())
    assert lines == {
        f"customresourcedefinition/{n} {'updated' if n == NAME else 'unchanged'}" for n in manifests.names()
    }, done.stdout

    # The new schema is what the API server serves: the dropped field is gone, the rule and field are in.
    schema = live_model_schema(kube)
    assert schema == model_schema(new_crd()), "the live schema is not the new one (a field lingered?)"
    assert "legacyNote" not in schema["properties"]
    labels = client.ApiextensionsV1Api(kube).read_custom_resource_definition(NAME).metadata.labels or {}
    assert LEGACY_LABEL not in labels, "a field only helm owned lingered: its fields were not taken over"
    status, message = create(kube, namespace, with_model("bad", topK=experts + 1))
    assert status == 422 and RULE in str(message), (status, message)
    status, new = create(kube, namespace, with_model("new", name="deepseek-ai/DeepSeek-V3"))
    assert status == 201, new
    assert isinstance(new, dict) and new["spec"]["model"]["name"] == "deepseek-ai/DeepSeek-V3"

    # The object made under the old schema is still there, as stored.
    kept = client.CustomObjectsApi(kube).get_namespaced_custom_object(
        api.GROUP, api.VERSION, namespace, api.MOEDEPLOYMENT_PLURAL, "old"
    )
    assert kept["spec"]["model"]["topK"] == experts + 1

    # A second run changes nothing.
    again = vibe_crds_apply(cluster.kubeconfig)
    assert again.returncode == 0, again.stderr
    assert set(again.stdout.splitlines()) == {
        f"customresourcedefinition/{n} unchanged" for n in manifests.names()
    }, again.stdout
