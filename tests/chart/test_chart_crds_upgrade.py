"""The chart's CRD upgrade hook: rendered as a restricted pre-upgrade Job with exactly enough RBAC, and
its command run on the local control plane as its own ServiceAccount.

Helm never upgrades crds/; `crds.upgrade.enabled` renders a pre-upgrade hook Job that runs `vibe crds
apply` with the operator image. Its ClusterRole may get and patch vibe's CRDs by name and nothing more:
the cluster test runs the Job's exact command line with a kubeconfig of the hook's ServiceAccount
(a TokenRequest token, as the other chart tests run the operator and agent), sees it upgrade an old
CRD, and sees the API server refuse it anything else.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from chart_helpers import ROOT, Helm, one

from vibe import crds
from vibe.cluster.identity import service_account_kubeconfig

HOOK = {
    "helm.sh/hook": "pre-upgrade",
    "helm.sh/hook-delete-policy": "before-hook-creation,hook-succeeded",
}
KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Job")


def hook_objects(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objs if o["metadata"]["name"].endswith("-crds-upgrade") and o["kind"] in KINDS]


def test_the_hook_is_a_restricted_pre_upgrade_job(helm: Helm) -> None:
    objs = hook_objects(helm.template())
    assert sorted(o["kind"] for o in objs) == sorted(KINDS)
    for o in objs:
        annotations = o["metadata"]["annotations"]
        assert {k: annotations[k] for k in HOOK} == HOOK, o["metadata"]
    # RBAC exists before the Job runs (a lower hook weight), also on the first upgrade that has it.
    weights = {o["kind"]: int(o["metadata"]["annotations"]["helm.sh/hook-weight"]) for o in objs}
    assert max(w for k, w in weights.items() if k != "Job") < weights["Job"]

    job = one(objs, "Job")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["crds", "apply"]
    operator = one(helm.template(), "Deployment", "vibe-operator")
    assert container["image"] == operator["spec"]["template"]["spec"]["containers"][0]["image"]
    assert pod["serviceAccountName"] == one(objs, "ServiceAccount")["metadata"]["name"]
    assert pod["restartPolicy"] == "Never"
    # Pod Security "restricted", like the operator's pods.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}

    role = one(objs, "ClusterRole")
    assert role["rules"] == [
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "resourceNames": sorted(crds.names()),  # every CRD vibe ships, and only those
            "verbs": ["get", "patch"],
        }
    ]
    binding = one(objs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"]


@pytest.mark.parametrize("values", [{"crds": {"upgrade": {"enabled": False}}}, {"rbac": {"create": False}}])
def test_the_hook_can_be_turned_off(helm: Helm, values: dict[str, Any]) -> None:
    assert not hook_objects(helm.template(values))


# ---- on the local control plane


def _forbidden(call: Any, *args: Any, **kwargs: Any) -> None:
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException) as e:
        call(*args, **kwargs)
    assert e.value.status == 403, e.value.body


@pytest.mark.cluster
@pytest.mark.slow
def test_the_hook_command_runs_with_the_hooks_rbac_and_no_more(
    helm: Helm, kube: Any, cluster: Any, namespace: str, tmp_path: Path
) -> None:
    from kubernetes import client, config

    from vibe.crds.apply import apply_crds

    release = f"h{uuid.uuid4().hex[:6]}"
    objs = hook_objects(helm.template(release=release, namespace=namespace))
    ext = client.ApiextensionsV1Api(kube)
    rbac = client.RbacAuthorizationV1Api(kube)
    sa, role, binding = (one(objs, k) for k in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding"))
    job = one(objs, "Job")
    foreign = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets{release}.example.test"},
        "spec": {
            "group": "example.test",
            "names": {"plural": f"widgets{release}", "kind": f"Widget{release}"},
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object"}},
                }
            ],
        },
    }
    client.CoreV1Api(kube).create_namespaced_service_account(namespace, sa)
    rbac.create_cluster_role(role)
    rbac.create_cluster_role_binding(binding)
    ext.create_custom_resource_definition(foreign)
    try:
        # An older MoEDeployment CRD (one CEL rule fewer), as a previous release left it.
        apply_crds(kube)
        name = "moedeployments.vibe.dev"
        old = copy.deepcopy(next(d for d in crds.documents() if d["metadata"]["name"] == name))
        schema = old["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        schema.pop("x-kubernetes-validations")
        old["metadata"]["resourceVersion"] = ext.read_custom_resource_definition(
            name
        ).metadata.resource_version
        ext.replace_custom_resource_definition(name, old, field_manager="helm")

        kubeconfig = service_account_kubeconfig(
            kube, cluster.kubeconfig, namespace, sa["metadata"]["name"], tmp_path / "hook.kubeconfig"
        )
        # The Job's exact command line: the image's entrypoint is `vibe`, its args the container's.
        (container,) = job["spec"]["template"]["spec"]["containers"]
        argv = [sys.executable, "-m", "vibe", *container["args"], "--kubeconfig", str(kubeconfig)]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        assert f"customresourcedefinition/{name} updated" in proc.stdout.splitlines(), proc.stdout
        live = ext.read_custom_resource_definition(name).spec.versions[0].schema.open_apiv3_schema
        assert live.properties["spec"].x_kubernetes_validations, "the CEL rules were not restored"

        # As the hook's ServiceAccount: nothing beyond get/patch of vibe's CRDs.
        hook = client.ApiextensionsV1Api(config.new_client_from_config(config_file=str(kubeconfig)))
        patch = {"metadata": {"labels": {"x": "y"}}}
        _forbidden(hook.patch_custom_resource_definition, foreign["metadata"]["name"], patch)
        _forbidden(hook.read_custom_resource_definition, foreign["metadata"]["name"])
        _forbidden(hook.list_custom_resource_definition)
        _forbidden(hook.delete_custom_resource_definition, name)
        other = copy.deepcopy(foreign)
        other["spec"]["names"] = {"plural": f"gadgets{release}", "kind": f"Gadget{release}"}
        other["metadata"]["name"] = f"gadgets{release}.example.test"
        _forbidden(hook.create_custom_resource_definition, other)
    finally:
        ext.delete_custom_resource_definition(foreign["metadata"]["name"])
        rbac.delete_cluster_role_binding(binding["metadata"]["name"])
        rbac.delete_cluster_role(role["metadata"]["name"])
        apply_crds(kube)
