"""The chart, rendered: `helm lint --strict` and `helm template` for the default and non-default values.

What is checked on the rendered objects is what the issue asks of the chart: standard labels, the
security settings of every pod, least-privilege RBAC (exact rule sets, no wildcards), the agent taking no
GPU from the scheduler, the PodDisruptionBudget, monitoring objects gated on `.Capabilities` (or forced),
the schema refusing what it does not know. No cluster needed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from chart_helpers import (
    CHART,
    MONITORING_APIS,
    NAMESPACE,
    VALUES_DIR,
    Helm,
    HelmError,
    find,
    one,
    pod_specs,
    rules_of,
    triples,
)

from vibe import api

VALUE_FILES = sorted(VALUES_DIR.glob("*.yaml"))
VARIANTS = [pytest.param([], id="default")] + [pytest.param([f], id=f.stem) for f in VALUE_FILES]
CHART_META = yaml.safe_load((CHART / "Chart.yaml").read_text())
APP_VERSION = CHART_META["appVersion"]

# What each component may do: exact, so any widening is a deliberate change of this table.
OPERATOR_CLUSTER = triples(
    {
        ("", "nodes"): ["get", "list", "watch"],
        ("apiextensions.k8s.io", "customresourcedefinitions"): ["get", "list", "watch"],
        ("", "namespaces"): ["get", "list", "watch"],
    }
)
OPERATOR_NAMESPACED = triples(
    {
        (api.GROUP, api.MOEDEPLOYMENT_PLURAL): ["get", "list", "watch", "patch"],
        (api.GROUP, api.MOEDEPLOYMENT_PLURAL + "/status"): ["get", "patch"],
        (api.GROUP, api.GPUPROFILE_PLURAL): ["get", "list", "watch"],
        ("", "configmaps"): ["get", "list", "watch", "create", "update"],
        ("", "pods"): ["get", "list", "watch"],
        ("", "events"): ["create"],
    }
)
OPERATOR_CLUSTER_PEERING = triples(
    {("kopf.dev", "clusterkopfpeerings"): ["get", "list", "watch", "create", "patch"]}
)
OPERATOR_NS_PEERING = triples({("kopf.dev", "kopfpeerings"): ["get", "list", "watch", "create", "patch"]})
AGENT_NAMESPACED = triples(
    {
        (api.GROUP, api.GPUPROFILE_PLURAL): ["get", "list", "watch", "create", "patch"],
        (api.GROUP, api.GPUPROFILE_PLURAL + "/status"): ["get", "patch"],
        ("coordination.k8s.io", "leases"): ["get", "create", "patch"],
        ("", "events"): ["create"],
    }
)
# Its own Node (owner references, GPU count check): get only; RBAC cannot say "its own", the policy can't
# either for reads, and a Node's labels and capacity are no secret.
AGENT_CLUSTER = triples(
    {(api.GROUP, api.MOEDEPLOYMENT_PLURAL): ["get", "list", "watch"], ("", "nodes"): ["get"]}
)
OPERATOR_LEASES = triples({("coordination.k8s.io", "leases"): ["get", "list"]})
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}


@pytest.fixture(scope="module")
def default(helm: Helm) -> list[dict]:
    return helm.template()


# ---- lint and template, every variant


@pytest.mark.parametrize("files", VARIANTS)
def test_lint_strict(helm: Helm, files: list[Path]) -> None:
    args = ["lint", "--strict", str(CHART), "--namespace", NAMESPACE]
    for f in files:
        args += ["-f", str(f)]
    out = helm.run(*args).stdout
    assert "0 chart(s) failed" in out, out


@pytest.mark.parametrize("files", VARIANTS)
def test_template_renders_valid_objects(helm: Helm, files: list[Path]) -> None:
    objs = helm.template(files=files, api_versions=MONITORING_APIS)
    assert objs
    seen = set()
    for o in objs:
        meta = o["metadata"]
        assert o["apiVersion"] and o["kind"] and meta["name"], o
        assert len(meta["name"]) <= 63 or o["kind"].startswith("Cluster"), meta["name"]
        key = (o["kind"], meta.get("namespace"), meta["name"])
        assert key not in seen, f"rendered twice: {key}"
        seen.add(key)


def test_default_objects(default: list[dict]) -> None:
    kinds = {(o["kind"], o["metadata"]["name"]) for o in default}
    assert kinds == {
        ("ServiceAccount", "vibe-operator"),
        ("ServiceAccount", "vibe-agent"),
        ("ClusterRole", "vibe-operator"),
        ("ClusterRoleBinding", "vibe-operator"),
        ("ClusterRole", "vibe-agent"),
        ("ClusterRoleBinding", "vibe-agent"),
        ("Role", "vibe-agent"),
        ("RoleBinding", "vibe-agent"),
        ("Role", "vibe-operator-leases"),
        ("RoleBinding", "vibe-operator-leases"),
        ("ValidatingAdmissionPolicy", "vibe-agent-node-restriction"),
        ("ValidatingAdmissionPolicyBinding", "vibe-agent-node-restriction"),
        ("Deployment", "vibe-operator"),
        ("DaemonSet", "vibe-agent"),
        ("Service", "vibe-operator-metrics"),
        ("Service", "vibe-agent-metrics"),
        ("PodDisruptionBudget", "vibe-operator"),
        ("ClusterKopfPeering", "vibe"),
        ("ConfigMap", "vibe-dashboard"),
        ("ValidatingAdmissionPolicy", "vibe-operator-configmaps"),
        ("ValidatingAdmissionPolicyBinding", "vibe-operator-configmaps"),
        ("ValidatingAdmissionPolicy", "vibe-operator-moedeployments"),
        ("ValidatingAdmissionPolicyBinding", "vibe-operator-moedeployments"),
        ("ValidatingAdmissionPolicy", "vibe-operator-events"),
        ("ValidatingAdmissionPolicyBinding", "vibe-operator-events"),
        ("ValidatingAdmissionPolicy", "vibe-agent-event-restriction"),
        ("ValidatingAdmissionPolicyBinding", "vibe-agent-event-restriction"),
        # the pre-upgrade hook that upgrades the CRDs (crds.upgrade.enabled)
        ("ServiceAccount", "vibe-crds-upgrade"),
        ("ClusterRole", "vibe-crds-upgrade"),
        ("ClusterRoleBinding", "vibe-crds-upgrade"),
        ("Job", "vibe-crds-upgrade"),
    }, sorted(kinds)
    # Namespaced objects go to the release namespace; no Namespace object is rendered.
    cluster_scoped = ("ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering", "ValidatingAdmissionPolicy",
                      "ValidatingAdmissionPolicyBinding")  # fmt: skip
    for o in default:
        if o["kind"] not in cluster_scoped:
            assert o["metadata"]["namespace"] == NAMESPACE, o["metadata"]


def test_fullname_follows_release_name(helm: Helm) -> None:
    names = {o["metadata"]["name"] for o in helm.template(release="prod")}
    assert "prod-vibe-operator" in names and "prod-vibe-agent" in names
    names = {o["metadata"]["name"] for o in helm.template(release="vibe-prod")}
    assert "vibe-prod-operator" in names


# ---- labels


@pytest.mark.parametrize("files", VARIANTS)
def test_standard_labels(helm: Helm, files: list[Path]) -> None:
    objs = helm.template(files=files, api_versions=MONITORING_APIS)
    for o in objs:
        labels = o["metadata"].get("labels") or {}
        for key in (
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
            "app.kubernetes.io/managed-by",
            "app.kubernetes.io/component",
            "helm.sh/chart",
        ):
            assert key in labels, f"{o['kind']}/{o['metadata']['name']} lacks {key}"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/version"] == APP_VERSION
    for o in objs:
        if o["kind"] in ("Deployment", "DaemonSet"):
            selector = o["spec"]["selector"]["matchLabels"]
            template = o["spec"]["template"]["metadata"]["labels"]
            assert selector.items() <= template.items()
            # Selectors are immutable: they must not carry the version or commonLabels.
            assert set(selector) == {
                "app.kubernetes.io/name",
                "app.kubernetes.io/instance",
                "app.kubernetes.io/component",
            }


def test_common_labels_everywhere(helm: Helm) -> None:
    for o in helm.template(files=[VALUES_DIR / "full.yaml"], api_versions=MONITORING_APIS):
        assert o["metadata"]["labels"].get("team") == "ml-platform", o["metadata"]["name"]


# ---- security of every pod


@pytest.mark.parametrize("files", VARIANTS)
def test_pods_are_locked_down(helm: Helm, files: list[Path]) -> None:
    objs = helm.template(files=files)
    specs = list(pod_specs(objs))
    assert specs
    for where, spec in specs:
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True, where
        assert psc["seccompProfile"]["type"] == "RuntimeDefault", where
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), where
        for v in spec.get("volumes") or ():
            assert "hostPath" not in v, f"{where}: host path volume {v}"
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert not sc["capabilities"].get("add"), where
            assert not sc.get("privileged"), where
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", where
            res = c["resources"]
            assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"]), (
                where
            )
            assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"]), f"{where}: no writable /tmp"
            assert c["image"].count(":") >= 1, where


def test_agent_takes_no_gpu_from_the_scheduler(default: list[dict]) -> None:
    ds = one(default, "DaemonSet", "vibe-agent")
    spec = ds["spec"]["template"]["spec"]
    assert "runtimeClassName" not in spec  # the node's default runtime (the GPU Operator's setup)
    assert spec["priorityClassName"] == "system-node-critical"  # not evicted from a packed GPU node
    (c,) = spec["containers"]
    assert "--metrics-port=9435" in c["args"] and "--curve-metrics" not in c["args"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert "utility" in env["NVIDIA_DRIVER_CAPABILITIES"] and "compute" in env["NVIDIA_DRIVER_CAPABILITIES"]
    for part in ("requests", "limits"):
        assert not any(k.startswith("nvidia.com/") for k in c["resources"][part]), c["resources"]
    # GPU nodes by NFD's or GFD's label (test_chart_gpu_cluster.py), no nodeSelector of one label.
    assert "nodeSelector" not in spec and spec["affinity"]["nodeAffinity"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    node_env = next(e for e in c["env"] if e["name"] == "NODE_NAME")
    assert node_env["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert c["args"][:2] == ["agent", "run"]
    assert f"--namespace={NAMESPACE}" in c["args"]


def test_the_pod_resources_mapping_runs_the_agent_as_root_without_capabilities(helm: Helm) -> None:
    # The kubelet's pod-resources socket is root's (srwxr-xr-x): a non-root agent's connect gets EACCES
    # and the mapping silently falls back. With the mapping on, the container runs as UID 0 but keeps
    # every other lock (no capabilities, no escalation, read-only root); off, or runAsRoot=false, non-root.
    def agent(values: dict) -> dict:
        ds = one(helm.template(values), "DaemonSet", "vibe-agent")
        (c,) = ds["spec"]["template"]["spec"]["containers"]
        return c

    on = agent({"agent": {"podResources": {"enabled": True}}})
    sc = on["securityContext"]
    assert sc["runAsUser"] == 0 and sc["runAsNonRoot"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert any(m["mountPath"] == "/var/lib/kubelet/pod-resources" for m in on["volumeMounts"])
    for values in ({}, {"agent": {"podResources": {"enabled": True, "runAsRoot": False}}}):
        sc = agent(values)["securityContext"]
        assert sc["runAsNonRoot"] is True and "runAsUser" not in sc, values


def test_images_default_to_app_version(default: list[dict], helm: Helm) -> None:
    images = {c["image"] for _, spec in pod_specs(default) for c in spec["containers"]}
    registry = "registry.example.com/vibe"  # the documented placeholder (values.yaml, images/README.md)
    assert images == {f"{registry}/vibe-operator:{APP_VERSION}", f"{registry}/vibe-agent:{APP_VERSION}"}
    full = helm.template(files=[VALUES_DIR / "full.yaml"])
    images = {c["image"] for _, spec in pod_specs(full) for c in spec["containers"]}
    op = f"registry.acme.internal:5000/ml/vibe-operator:0.1.0-rc1@sha256:{'0123456789abcdef' * 4}"
    assert op in images
    assert (
        f"registry.acme.internal:5000/vibe/vibe-agent:{APP_VERSION}@sha256:{'fedcba9876543210' * 4}" in images
    )


def test_operator_args(default: list[dict], helm: Helm) -> None:
    dep = one(default, "Deployment", "vibe-operator")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["args"] == [
        "operator",
        f"--profile-namespace={NAMESPACE}",
        "--profile-ttl=300",
        "--peering=vibe",
        "--metrics-port=8080",
        "--metrics-addr=127.0.0.1",
        "--liveness=http://0.0.0.0:8081/healthz",
    ]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    ns = one(helm.template(files=[VALUES_DIR / "namespaced.yaml"]), "Deployment", "vibe-operator")
    args = ns["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=ml-serving" in args and "--namespace=ml-staging" in args
    assert "--profile-namespace=gpu-profiles" in args and "--standalone" in args and "--debug" in args
    assert "--profile-ttl=120" in args


# ---- the operator's availability


def test_pdb_and_replicas(default: list[dict], helm: Helm) -> None:
    dep = one(default, "Deployment", "vibe-operator")
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pdb = one(default, "PodDisruptionBudget", "vibe-operator")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    # One replica: a PDB would only block drains.
    assert not find(helm.template({"operator": {"replicas": 1}}), "PodDisruptionBudget")
    anti = dep["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]["topologyKey"] == (
        "kubernetes.io/hostname"
    )


def test_replicas_without_peering_are_refused(helm: Helm) -> None:
    with pytest.raises(HelmError, match="peering"):
        helm.template({"operator": {"replicas": 2, "peering": {"enabled": False}}})


# ---- RBAC


@pytest.mark.parametrize("files", VARIANTS)
def test_rbac_has_no_wildcards(helm: Helm, files: list[Path]) -> None:
    for o in helm.template(files=files):
        if o["kind"] in ("Role", "ClusterRole"):
            for rule in o["rules"]:
                for key in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule.get(key, ()), f"{o['kind']}/{o['metadata']['name']}: {rule}"
                assert "nonResourceURLs" not in rule
            assert "aggregationRule" not in o


def test_rbac_cluster_wide(default: list[dict]) -> None:
    assert rules_of(one(default, "ClusterRole", "vibe-operator")) == (
        OPERATOR_CLUSTER | OPERATOR_CLUSTER_PEERING | OPERATOR_NAMESPACED
    )
    assert rules_of(one(default, "Role", "vibe-agent", NAMESPACE)) == AGENT_NAMESPACED
    assert rules_of(one(default, "Role", "vibe-operator-leases", NAMESPACE)) == OPERATOR_LEASES
    agent_cluster = rules_of(one(default, "ClusterRole", "vibe-agent"))
    assert agent_cluster == AGENT_CLUSTER
    assert not {v for _, _, v in agent_cluster} & WRITE_VERBS, "the agent writes nothing cluster-wide"
    # Each binding binds its own role to its own ServiceAccount only.
    for kind, role_kind in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        for b in find(default, kind):
            assert b["roleRef"] == {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": role_kind,
                "name": b["metadata"]["name"],
            }
            sa = b["metadata"]["name"].removesuffix("-leases")
            assert b["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]


def test_rbac_namespaced(helm: Helm) -> None:
    objs = helm.template(files=[VALUES_DIR / "namespaced.yaml"])
    assert rules_of(one(objs, "ClusterRole", "vibe-operator")) == OPERATOR_CLUSTER
    roles = {o["metadata"]["namespace"]: rules_of(o) for o in find(objs, "Role", "vibe-operator")}
    # Peering is off here: no peering rules; the profile namespace is watched too.
    assert roles == {ns: OPERATOR_NAMESPACED for ns in ("gpu-profiles", "ml-serving", "ml-staging")}
    assert {b["metadata"]["namespace"] for b in find(objs, "RoleBinding", "vibe-operator")} == set(roles)
    assert rules_of(one(objs, "Role", "vibe-agent", "gpu-profiles")) == AGENT_NAMESPACED
    assert not find(objs, "ClusterKopfPeering") and not find(objs, "KopfPeering")

    full = helm.template(files=[VALUES_DIR / "full.yaml"])
    roles = {o["metadata"]["namespace"]: rules_of(o) for o in find(full, "Role", "vibe-moe-operator")}
    assert roles == {ns: OPERATOR_NAMESPACED | OPERATOR_NS_PEERING for ns in ("ml-serving", NAMESPACE)}
    peerings = {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in find(full, "KopfPeering")}
    assert peerings == {("ml-serving", "vibe-ha"), (NAMESPACE, "vibe-ha")}
    assert not find(full, "ClusterKopfPeering")


def test_operator_configmap_writes_are_limited_to_its_placements(default: list[dict], helm: Helm) -> None:
    """RBAC grants create/update on configmaps; the policy narrows it to the operator's own placement
    ConfigMaps, for the operator's ServiceAccount only (the cluster test tries it for real)."""
    policy = one(default, "ValidatingAdmissionPolicy", "vibe-operator-configmaps")
    (cond,) = policy["spec"]["matchConditions"]
    assert (
        cond["expression"]
        == f'request.userInfo.username == "system:serviceaccount:{NAMESPACE}:vibe-operator"'
    )
    assert policy["spec"]["failurePolicy"] == "Fail"
    binding = one(default, "ValidatingAdmissionPolicyBinding", "vibe-operator-configmaps")
    assert binding["spec"] == {"policyName": "vibe-operator-configmaps", "validationActions": ["Deny"]}
    off = helm.template({"operator": {"configMapPolicy": {"enabled": False}}})
    assert not [
        o for o in find(off, "ValidatingAdmissionPolicy") if o["metadata"]["name"].endswith("-configmaps")
    ]
    forbidden = policy["spec"]["validations"][0]["expression"]
    assert forbidden == '!(request.namespace in ["kube-system","kube-public","kube-node-lease"])'


def test_operator_metrics_bind_the_loopback_unless_scraped(helm: Helm) -> None:
    """Issue 20: the operator's /metrics names every tenant's MoEDeployments; the chart binds it to all
    addresses only when it renders a ServiceMonitor for it, or when told to."""

    def addr(objs: list[dict]) -> str:
        (container,) = one(objs, "Deployment", "vibe-operator")["spec"]["template"]["spec"]["containers"]
        (flag,) = [a for a in container["args"] if a.startswith("--metrics-addr=")]
        return flag.split("=", 1)[1]

    assert addr(helm.template()) == "127.0.0.1"  # no Prometheus Operator: nothing scrapes it
    assert addr(helm.template(api_versions=MONITORING_APIS)) == "0.0.0.0"
    assert addr(helm.template({"operator": {"metrics": {"addr": "::"}}})) == "::"


def test_rbac_off(helm: Helm) -> None:
    objs = helm.template(files=[VALUE_FILES[VALUE_FILES.index(VALUES_DIR / "minimal.yaml")]])
    assert not [
        o
        for o in objs
        if o["kind"] in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding", "ServiceAccount")
    ]
    dep = one(objs, "Deployment", "vibe-operator")
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == "platform-managed-vibe"
    assert not find(objs, "DaemonSet")


# ---- monitoring: rendered only when the cluster serves the API, or forced


def test_monitoring_follows_capabilities(helm: Helm, default: list[dict]) -> None:
    assert not find(default, "ServiceMonitor") and not find(default, "PrometheusRule")
    with_api = helm.template(api_versions=MONITORING_APIS)
    assert {o["metadata"]["name"] for o in find(with_api, "ServiceMonitor")} == {
        "vibe-operator",
        "vibe-agent",
    }
    assert len(find(with_api, "PrometheusRule")) == 1
    only_sm = helm.template(api_versions=MONITORING_APIS[:1])
    assert find(only_sm, "ServiceMonitor") and not find(only_sm, "PrometheusRule")
    forced = helm.template(
        {"monitoring": {"serviceMonitor": {"force": True}, "prometheusRule": {"force": True}}}
    )
    assert len(find(forced, "ServiceMonitor")) == 2 and len(find(forced, "PrometheusRule")) == 1
    off = helm.template(
        {"monitoring": {"serviceMonitor": {"enabled": False, "force": True}}}, api_versions=MONITORING_APIS
    )
    assert not find(off, "ServiceMonitor")


def test_service_monitors_select_the_metrics_services(helm: Helm) -> None:
    objs = helm.template(api_versions=MONITORING_APIS)
    for sm in find(objs, "ServiceMonitor"):
        svc = [
            s
            for s in find(objs, "Service")
            if sm["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
        ]
        assert len(svc) == 1, sm["metadata"]["name"]
        assert sm["spec"]["endpoints"][0]["port"] == "metrics"
        assert any(p["name"] == "metrics" for p in svc[0]["spec"]["ports"])
        assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}


def test_metrics_services_target_the_pods(default: list[dict]) -> None:
    for component, kind in (("operator", "Deployment"), ("agent", "DaemonSet")):
        svc = one(default, "Service", f"vibe-{component}-metrics")
        workload = one(default, kind, f"vibe-{component}")
        assert svc["spec"]["selector"] == workload["spec"]["selector"]["matchLabels"]
        ports = {
            p["name"]: p["containerPort"]
            for p in workload["spec"]["template"]["spec"]["containers"][0]["ports"]
        }
        assert svc["spec"]["ports"][0]["targetPort"] == "metrics" and "metrics" in ports
    assert one(default, "Service", "vibe-agent-metrics")["spec"]["clusterIP"] == "None"


def test_dashboard_configmap(default: list[dict], helm: Helm) -> None:
    import json

    cm = one(default, "ConfigMap", "vibe-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dash = json.loads(cm["data"]["vibe.json"])
    assert dash["uid"] == "vibe-overview"
    full = helm.template(files=[VALUES_DIR / "full.yaml"])
    cm = one(full, "ConfigMap", "vibe-moe-dashboard")
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "vibe"}


# ---- NetworkPolicy, simulate, NOTES


def test_network_policies(helm: Helm, default: list[dict]) -> None:
    assert not find(default, "NetworkPolicy")
    objs = helm.template(files=[VALUES_DIR / "full.yaml"])
    policies = {o["metadata"]["name"]: o["spec"] for o in find(objs, "NetworkPolicy")}
    assert set(policies) == {"vibe-moe-operator", "vibe-moe-agent"}
    op = policies["vibe-moe-operator"]
    assert op["policyTypes"] == ["Ingress", "Egress"]
    assert op["ingress"][0]["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert op["ingress"][0]["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    assert op["ingress"][1]["ports"] == [{"port": "health", "protocol": "TCP"}]
    api = op["egress"][1]
    assert {p["port"] for p in api["ports"]} == {443, 6443}
    assert api["to"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]
    assert len(policies["vibe-moe-agent"]["ingress"]) == 1


def test_simulated_agent(helm: Helm) -> None:
    objs = helm.template(files=[VALUES_DIR / "full.yaml"])
    cm = one(objs, "ConfigMap", "vibe-moe-agent-simulate")
    fleet = yaml.safe_load(cm["data"]["fleet.yaml"])
    assert fleet["nodes"][0]["name"] == "gpu-node-0"
    ds = one(objs, "DaemonSet", "vibe-moe-agent")
    spec = ds["spec"]["template"]["spec"]
    assert "--simulate=/etc/vibe/simulate/fleet.yaml" in spec["containers"][0]["args"]
    assert "runtimeClassName" not in spec
    assert {"name": "simulate", "configMap": {"name": "vibe-moe-agent-simulate"}} in spec["volumes"]
    with pytest.raises(HelmError, match="fleet"):
        helm.template({"agent": {"simulate": {"enabled": True}}})


# ---- the schema


def _schema_walk(values: object, schema: dict, path: str) -> list[str]:
    """Paths of values.yaml that the schema does not describe (with a description)."""
    missing = []
    if not schema.get("description") and path:
        missing.append(f"{path} (no description)")
    if isinstance(values, dict) and schema.get("properties") is not None:
        for key, sub in values.items():
            prop = schema["properties"].get(key)
            if prop is None:
                missing.append(f"{path}.{key}")
            else:
                missing += _schema_walk(sub, prop, f"{path}.{key}")
    return missing


def test_schema_describes_every_value() -> None:
    import json

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert _schema_walk(values, schema, "") == []


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({"operatr": {}}, "operatr"),
        ({"operator": {"replicas": "two"}}, "replicas"),
        ({"operator": {"replicas": -1}}, "replicas"),
        ({"operator": {"image": {"pullPolicy": "Sometimes"}}}, "pullPolicy"),
        ({"operator": {"watchNamespaces": ["Not_A_Namespace"]}}, "watchNamespaces"),
        ({"operator": {"metrics": {"port": 70000}}}, "port"),
        ({"agent": {"heartbeatSeconds": 0}}, "heartbeatSeconds"),
        ({"agent": {"unknown": True}}, "unknown"),
        ({"monitoring": {"prometheusRule": {"alerts": {"gpuSlow": {"threshold": 1.5}}}}}, "threshold"),
        ({"monitoring": {"prometheusRule": {"alerts": {"gpuSlow": {"for": "ten minutes"}}}}}, "for"),
        ({"networkPolicy": {"apiServerPorts": []}}, "apiServerPorts"),
    ],
)
def test_schema_refuses(helm: Helm, values: dict, error: str) -> None:
    with pytest.raises(HelmError) as exc:
        helm.template(values)
    assert "schema" in exc.value.err.lower() and error in exc.value.err, exc.value.err
