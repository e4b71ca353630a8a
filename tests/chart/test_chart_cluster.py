"""The chart on the local control plane: install, run with exactly its RBAC, upgrade, uninstall.

`helm install` puts the chart into the real API server (kwok stands in for the kubelets, so the pods
"run" but nothing executes in them). The operator and a simulated agent then run as local processes,
with the command lines the chart rendered for their containers, authenticated as the chart's own
ServiceAccounts (bearer tokens from the TokenRequest API): the full flow must work with exactly that RBAC,
and each identity must be refused what its role does not grant. Finally `helm upgrade` with other values
and `helm uninstall` must leave nothing of the release behind (CRDs aside, as Helm documents).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_helpers import CHART, ROOT, Helm, find, health, kubectl, leftovers, one, parse_docs, values_args
from cluster_plugin import TEST_NODES_LABEL

from vibe import api
from vibe.cluster.identity import service_account_kubeconfig
from vibe.cluster.processes import free_port
from vibe.cluster.waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

G, V = api.GROUP, api.VERSION
# A GPUProfile neither identity may create where the refusal tests try it.
FOREIGN_PROFILE = {
    "apiVersion": api.API_VERSION,
    "kind": api.GPUPROFILE_KIND,
    "metadata": {"name": "x"},
    "spec": {"nodeName": "x", "gpus": []},
}


# ---- helpers


def sa_kubeconfig(kube: Any, cluster: Any, namespace: str, sa: str, path: Path) -> Path:
    """A kubeconfig that authenticates as ServiceAccount ``namespace/sa`` (a TokenRequest token)."""
    return service_account_kubeconfig(kube, cluster.kubeconfig, namespace, sa, path)


def api_client(kubeconfig: Path) -> Any:
    from kubernetes import config

    return config.new_client_from_config(config_file=str(kubeconfig))


def forbidden(call: Any, *args: Any, **kwargs: Any) -> bool:
    """True when the API server answers 403 Forbidden."""
    from kubernetes.client.exceptions import ApiException

    try:
        call(*args, **kwargs)
    except ApiException as e:
        if e.status == 403:
            return True
        raise AssertionError(f"{call.__name__}: expected 403, got {e.status}: {e.body}") from None
    raise AssertionError(f"{call.__name__}: expected 403, but it was allowed")


def refusals(log: str) -> list[str]:
    """Log lines where the API server refused a request (403) or Kopf lacked a permission.

    A 403 for a namespace being deleted (``NamespaceTerminating``: the cluster is shared with other test
    sessions, and a cluster-wide operator sees their namespaces go) is no RBAC refusal and is left out.
    """
    return [
        line
        for line in log.splitlines()
        if re.search(r"forbidden|\b403\b|not enough permissions", line, re.IGNORECASE)
        and not re.search(r"NamespaceTerminating|because it is being terminated", line)
    ]


def container_args(manifest: list[dict], kind: str, name: str) -> list[str]:
    return list(one(manifest, kind, name)["spec"]["template"]["spec"]["containers"][0]["args"])


def set_flag(args: list[str], flag: str, value: str) -> list[str]:
    """Replace ``--flag=...`` in ``args`` (the chart's form) with ``--flag=value``."""
    out = [a for a in args if not a.startswith(f"{flag}=")]
    assert len(out) == len(args) - 1, f"{flag} not in {args}"
    return [*out, f"{flag}={value}"]


class Process:
    """A `vibe ...` process with a given kubeconfig, its output in a log file."""

    def __init__(self, name: str, args: list[str], kubeconfig: Path, env: Mapping[str, str] | None = None):
        # Logs go next to the kubeconfig (the test's tmp_path), kept by pytest for a failed test.
        self.name = name
        self.log = kubeconfig.parent / f"{name}.log"
        self.fh = self.log.open("ab")
        full_env = {**os.environ, **(env or {}), "KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vibe.cli", *args],
            stdout=self.fh,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=ROOT,
        )

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
        return True

    def tail(self, lines: int = 80) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def problems(self, lines: int = 60) -> str:
        """The log's warnings, errors and tracebacks (what explains a failure), last ``lines`` of them."""
        keep = [ln for ln in self.text().splitlines() if not re.search(r"\bINFO\b|\bDEBUG\b", ln)]
        return "\n".join(keep[-lines:])

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.fh.close()


def http_get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.read().decode()
    except OSError:
        return None


def manifest(helm: Helm, release: str, namespace: str) -> list[dict]:
    return parse_docs(helm.run("get", "manifest", release, "--namespace", namespace).stdout)


@contextlib.contextmanager
def user_namespace(kube: Any) -> Iterator[str]:
    from kubernetes import client

    core = client.CoreV1Api(kube)
    name = f"ml-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name, "labels": {api.PREFIX + "test": "true"}}})
    try:
        yield name
    finally:
        core.delete_namespace(name, propagation_policy="Background")


def moedeployment_yaml(name: str, selector: Mapping[str, str]) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": api.API_VERSION,
            "kind": api.MOEDEPLOYMENT_KIND,
            "metadata": {"name": name},
            "spec": {
                "model": {
                    "name": "tiny-qwen3-shaped",
                    "layers": 4,
                    "experts": 16,
                    "topK": 2,
                    "hiddenSize": 4096,
                    "expertIntermediateSize": 1536,
                    "dtype": "bf16",
                },
                "gpus": {"nodeSelector": dict(selector), "count": 8, "slotsPerGPU": 3},
                "policy": "vibe",
            },
        },
        sort_keys=False,
    )


def peering_state(replica: Process) -> str:
    """``active`` or ``standby``: the last pause or resume decision Kopf peering logged."""
    replica.alive()
    decisions = re.findall(r"(Resuming operations|Pausing operations|Pausing all operators)", replica.text())
    return "active" if decisions and decisions[-1] == "Resuming operations" else "standby"


def series(exposition: str) -> dict[str, set[str]]:
    """Series name -> the label names its samples carry, from a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def contains(live: Any, want: Any) -> bool:
    """``want`` is ``live`` with fields left out (the CRD's defaults fill those in)."""
    if isinstance(want, Mapping):
        return isinstance(live, Mapping) and all(k in live and contains(live[k], v) for k, v in want.items())
    return live == want


def condition(obj: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or ():
        if c.get("type") == type_:
            return c
    return None


# ---- the whole flow with the chart's identities


def test_install_and_run_with_exactly_the_charts_rbac(
    cluster: Any, kube: Any, helm: Helm, namespace: str, gpu_nodes: Any, tmp_path: Path
) -> None:
    from kubernetes import client

    h = helm.with_env(cluster.env())
    release = f"v{uuid.uuid4().hex[:6]}"
    prefix = f"chart-{uuid.uuid4().hex[:6]}"
    nodes = gpu_nodes(2, prefix=prefix, gpus_per_node=4)
    speeds = [[1.0, 0.97, 0.92, 1.02], [0.75, 1.0, 0.99, 0.98]]
    values = {
        "operator": {"peering": {"name": release}, "extraArgs": ["--solve-budget=0.2"]},
        "agent": {
            "heartbeatSeconds": 5,
            "simulate": {
                "enabled": True,
                "fleet": {
                    "seed": 3,
                    "nodes": [{"name": n, "gpus": s} for n, s in zip(nodes, speeds, strict=True)],
                },
            },
        },
    }
    with values_args(values) as vargs:
        out = h.run("install", release, str(CHART), "--namespace", namespace, *vargs).stdout
    procs: list[Process] = []
    try:
        # NOTES.txt tells what to do next.
        notes = out.split("NOTES:", 1)[1]
        assert f"rollout status deployment/{release}-vibe-operator" in notes
        assert "kubectl apply -n <namespace> -f examples/deepseek-v3.yaml" in notes
        assert "SIMULATED" in notes

        rendered = manifest(h, release, namespace)
        op_name, agent_name = f"{release}-vibe-operator", f"{release}-vibe-agent"
        one(rendered, "ClusterKopfPeering", release)
        op_kc = sa_kubeconfig(kube, cluster, namespace, op_name, tmp_path / "operator.kubeconfig")
        agent_kc = sa_kubeconfig(kube, cluster, namespace, agent_name, tmp_path / "agent.kubeconfig")
        custom = client.CustomObjectsApi(kube)

        # The simulated agent: one process per node, as the DaemonSet runs one pod per node, with the
        # chart's command line (its fleet file read back from the chart's ConfigMap).
        fleet = client.CoreV1Api(kube).read_namespaced_config_map(f"{agent_name}-simulate", namespace)
        fleet_file = tmp_path / "fleet.yaml"
        fleet_file.write_text(fleet.data["fleet.yaml"])
        agent_args = container_args(rendered, "DaemonSet", agent_name)
        assert agent_args[:3] == ["agent", "run", "--node=$(NODE_NAME)"]
        agent_ports = []
        for node in nodes:
            port = free_port()
            agent_ports.append(port)
            args = set_flag(agent_args, "--node", node)
            args = set_flag(args, "--simulate", str(fleet_file))
            args = set_flag(args, "--metrics-port", str(port))
            procs.append(Process(f"agent-{node}", [*args, "--metrics-addr=127.0.0.1"], agent_kc))

        coord = client.CoordinationV1Api(kube)

        def profiles_published() -> bool:
            for p in procs:
                p.alive()
            got = custom.list_namespaced_custom_object(G, V, namespace, api.GPUPROFILE_PLURAL)["items"]
            leases = coord.list_namespaced_lease(
                namespace, label_selector="app.kubernetes.io/managed-by=vibe-agent"
            )
            beating = {o.metadata.name for o in leases.items if o.spec.renew_time}
            return {o["metadata"]["name"] for o in got} == set(nodes) and beating == set(nodes)

        wait_for(profiles_published, timeout=120, what="GPUProfiles from the agents")

        # The operator: two replicas (the chart's default), each with the chart's command line and the
        # operator's token; Kopf peering must leave exactly one of them working.
        op_args = container_args(rendered, "Deployment", op_name)
        assert f"--peering={release}" in op_args and f"--profile-namespace={namespace}" in op_args
        replicas: list[tuple[Process, int]] = []
        for i in range(one(rendered, "Deployment", op_name)["spec"]["replicas"]):
            metrics_port, health_port = free_port(), free_port()
            args = set_flag(op_args, "--metrics-port", str(metrics_port))
            args = set_flag(args, "--liveness", f"http://127.0.0.1:{health_port}/healthz")
            replica = Process(f"operator-{i}", args, op_kc)
            procs.append(replica)
            replicas.append((replica, metrics_port))
            wait_for(
                lambda r=replica, port=health_port: (
                    r.alive() and http_get(f"http://127.0.0.1:{port}/healthz")
                ),
                timeout=60,
                what=f"operator-{i} liveness",
            )
        assert len(replicas) == 2

        # Kopf starts each replica paused and resumes it when no live peer has a higher priority (it
        # pauses a working one when such a peer appears): one "active", the other "standby", for a while.
        stable: list[tuple[str, ...]] = []

        def settled() -> bool:
            states = tuple(peering_state(r) for r, _ in replicas)
            stable.append(states)
            return (
                sorted(states) == ["active", "standby"] and len(set(stable[-15:])) == 1 and len(stable) >= 15
            )

        wait_for(settled, timeout=90, what=f"Kopf peering to settle: {stable[-1:]}")
        operator, metrics_port = next((r, p) for r, p in replicas if peering_state(r) == "active")

        with user_namespace(kube) as ml:
            doc = moedeployment_yaml("tiny", {TEST_NODES_LABEL: prefix})
            applied = kubectl(cluster, "apply", "-n", ml, "-f", "-", stdin=doc)
            assert "created" in applied.stdout

            def ready() -> Mapping[str, Any] | None:
                operator.alive()
                obj = custom.get_namespaced_custom_object(G, V, ml, api.MOEDEPLOYMENT_PLURAL, "tiny")
                c = condition(obj, "Ready")
                return obj if c and c["status"] == "True" else None

            try:
                obj = wait_for(ready, timeout=120, what="MoEDeployment Ready")
            except TimeoutError:
                obj = custom.get_namespaced_custom_object(G, V, ml, api.MOEDEPLOYMENT_PLURAL, "tiny")
                pytest.fail(
                    f"not Ready: {obj.get('status')}\n--- operator:\n{operator.problems()}"
                    f"\n--- agent:\n{procs[0].problems()}"
                )
            status = obj["status"]
            assert status["nodes"] == sorted(nodes) and status["gpus"] == 8
            assert status["curveSource"] == "measured"
            assert condition(obj, "Degraded")["status"] == "False"
            # Conditions the Kubernetes way (as `kubectl wait --for=condition=Ready` and tools expect).
            assert status["observedGeneration"] == obj["metadata"]["generation"]
            for c in status["conditions"]:
                assert set(c) == {
                    "type",
                    "status",
                    "observedGeneration",
                    "reason",
                    "message",
                    "lastTransitionTime",
                }
                assert c["status"] in ("True", "False", "Unknown")
                assert re.fullmatch(r"[A-Z][A-Za-z0-9]*", c["reason"]), c
                assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", c["lastTransitionTime"]), c
                assert c["observedGeneration"] == obj["metadata"]["generation"]
            waited = kubectl(
                cluster, "wait", "-n", ml, "moedeployment/tiny", "--for=condition=Ready", "--timeout=10s"
            )
            assert "condition met" in waited.stdout
            cm = client.CoreV1Api(kube).read_namespaced_config_map("tiny-placement", ml)
            assert "placement.json" in cm.data

            # Argo CD's view of it: the health Lua on the live object.
            assert health(obj)["status"] == "Healthy"

            # GitOps: applying the same file again changes nothing, and nothing differs from it.
            again = kubectl(cluster, "apply", "-n", ml, "-f", "-", stdin=doc)
            assert "unchanged" in again.stdout, again.stdout
            diff = kubectl(cluster, "diff", "-n", ml, "-f", "-", stdin=doc, check=False)
            assert diff.returncode == 0 and not diff.stdout, diff.stdout + diff.stderr
            # The operator never wrote the spec: what was applied is there as applied (plus defaults).
            live_spec = custom.get_namespaced_custom_object(G, V, ml, api.MOEDEPLOYMENT_PLURAL, "tiny")[
                "spec"
            ]
            assert contains(live_spec, yaml.safe_load(doc)["spec"])

            # Metrics, as the chart's Services expose them: the active replica has the deployment's
            # series, the standby none; the labels the alerts aggregate and template on are there.
            for replica, port in replicas:
                text = http_get(f"http://127.0.0.1:{port}/metrics") or ""
                active = replica is operator
                assert (
                    bool(re.search(rf'vibe_deployment_ready\{{name="tiny",namespace="{ml}"\}} 1\.0', text))
                    is active
                )
            op_series = series(http_get(f"http://127.0.0.1:{metrics_port}/metrics") or "")
            assert {"namespace", "name"} <= op_series["vibe_placement_imbalance_ratio"]
            agent_series = series(http_get(f"http://127.0.0.1:{agent_ports[0]}/metrics") or "")
            assert {"UUID", "gpu", "modelName", "node"} <= agent_series["vibe_gpu_relative_speed"]
            assert {"node", "gpu", "state"} <= agent_series["vibe_gpu_drift_events_total"]

            # An input problem: Argo CD shows it as Degraded.
            broken = yaml.safe_load(doc)
            broken["metadata"]["name"] = "broken"
            broken["spec"]["workload"] = {"configMapRef": {"name": "no-such-loads"}}
            kubectl(cluster, "apply", "-n", ml, "-f", "-", stdin=yaml.safe_dump(broken))

            def degraded() -> Mapping[str, Any] | None:
                obj = custom.get_namespaced_custom_object(G, V, ml, api.MOEDEPLOYMENT_PLURAL, "broken")
                c = condition(obj, "Degraded")
                return obj if c and c["status"] == "True" else None

            obj = wait_for(degraded, timeout=60, what="MoEDeployment broken Degraded")
            assert condition(obj, "Degraded")["reason"] == "ConfigMapNotFound"
            hs = health(obj)
            assert hs["status"] == "Degraded" and hs["message"].startswith("ConfigMapNotFound: ")
            kubectl(cluster, "delete", "-n", ml, "moedeployment", "broken", "--wait=true", "--timeout=60s")

            _agent_is_refused(api_client(agent_kc), namespace, ml, nodes[0])
            _operator_is_refused(api_client(op_kc), namespace, ml, nodes[0])

            # Deleting works (the operator puts no finalizer on it).
            kubectl(cluster, "delete", "-n", ml, "moedeployment", "tiny", "--wait=true", "--timeout=60s")

        # Nothing was refused along the way: the chart's RBAC is enough for everything they did.
        for p in procs:
            p.alive()
            refused = refusals(p.text())
            assert not refused, f"{p.name}:\n" + "\n".join(refused[-5:])
    finally:
        for p in procs:
            p.stop()
        h.run("uninstall", release, "--namespace", namespace, "--wait", check=False)
    assert leftovers(cluster, release) == []


def _agent_is_refused(user: Any, agent_ns: str, other_ns: str, node: str) -> None:
    """The agent's identity may write GPUProfiles and Events in its namespace, and nothing else."""
    from kubernetes import client

    core, custom, apps = client.CoreV1Api(user), client.CustomObjectsApi(user), client.AppsV1Api(user)
    cm = {"metadata": {"name": "agent-was-here"}, "data": {"a": "b"}}
    assert forbidden(core.create_namespaced_config_map, agent_ns, cm)
    assert forbidden(core.create_namespaced_config_map, other_ns, cm)
    assert forbidden(core.patch_node, node, {"metadata": {"labels": {"agent": "was-here"}}})
    assert forbidden(core.list_node)  # it may read its own Node (get), not list them
    assert forbidden(core.list_namespaced_secret, agent_ns)
    assert forbidden(
        core.create_namespaced_pod, agent_ns, {"metadata": {"name": "p"}, "spec": {"containers": []}}
    )
    assert forbidden(apps.list_namespaced_daemon_set, agent_ns)
    assert forbidden(
        custom.create_namespaced_custom_object, G, V, other_ns, api.GPUPROFILE_PLURAL, FOREIGN_PROFILE
    )
    assert forbidden(custom.delete_namespaced_custom_object, G, V, agent_ns, api.GPUPROFILE_PLURAL, node)
    assert forbidden(
        custom.patch_namespaced_custom_object,
        G,
        V,
        other_ns,
        api.MOEDEPLOYMENT_PLURAL,
        "tiny",
        {"metadata": {"labels": {"agent": "was-here"}}},
    )
    assert forbidden(
        custom.patch_namespaced_custom_object_status,
        G,
        V,
        other_ns,
        api.MOEDEPLOYMENT_PLURAL,
        "tiny",
        {"status": {}},
    )
    assert forbidden(
        core.create_namespaced_event,
        other_ns,
        {"metadata": {"name": "e"}, "involvedObject": {"name": "x"}, "reason": "R", "message": "m"},
    )
    # ... while what it needs works with the same token.
    assert (
        custom.get_namespaced_custom_object(G, V, agent_ns, api.GPUPROFILE_PLURAL, node)["spec"]["nodeName"]
        == node
    )
    assert custom.list_cluster_custom_object(G, V, api.MOEDEPLOYMENT_PLURAL)["items"]


def _operator_is_refused(user: Any, release_ns: str, other_ns: str, node: str) -> None:
    """The operator's identity reads and writes what reconciling needs, and nothing else."""
    from kubernetes import client

    core, custom, apps = client.CoreV1Api(user), client.CustomObjectsApi(user), client.AppsV1Api(user)
    assert forbidden(core.list_namespaced_secret, other_ns)
    assert forbidden(core.patch_node, node, {"metadata": {"labels": {"operator": "was-here"}}})
    assert forbidden(core.delete_namespaced_config_map, "tiny-placement", other_ns)
    assert forbidden(
        custom.create_namespaced_custom_object, G, V, release_ns, api.GPUPROFILE_PLURAL, FOREIGN_PROFILE
    )
    assert forbidden(custom.delete_namespaced_custom_object, G, V, other_ns, api.MOEDEPLOYMENT_PLURAL, "tiny")
    assert forbidden(apps.list_namespaced_deployment, other_ns)
    assert forbidden(
        core.create_namespaced_pod, other_ns, {"metadata": {"name": "p"}, "spec": {"containers": []}}
    )
    assert core.read_node(node).metadata.name == node
    # Its role may create and update ConfigMaps (placements go to every namespace it serves); the
    # chart's ValidatingAdmissionPolicy narrows that to its own placement ConfigMaps (issue 15: it
    # could write any ConfigMap, kube-system's included).
    cm = {"metadata": {"name": "operator-was-here"}, "data": {"a": "b"}}
    assert forbidden(core.create_namespaced_config_map, "kube-system", cm)
    assert forbidden(core.create_namespaced_config_map, other_ns, cm)
    labelled = {"metadata": {"name": "x-placement", "labels": {"app.kubernetes.io/managed-by": "vibe"}}}
    assert forbidden(core.create_namespaced_config_map, other_ns, labelled)  # no MoEDeployment owns it
    root_ca = core.read_namespaced_config_map("kube-root-ca.crt", other_ns)  # RBAC allows the update
    root_ca.metadata.labels = {"app.kubernetes.io/managed-by": "vibe"}
    assert forbidden(core.replace_namespaced_config_map, "kube-root-ca.crt", other_ns, root_ca)
    placement = core.read_namespaced_config_map("tiny-placement", other_ns)  # its own: allowed
    placement.metadata.annotations["vibe.dev/policy-test"] = "1"
    core.replace_namespaced_config_map("tiny-placement", other_ns, placement)


# ---- upgrade and uninstall


def test_upgrade_with_other_values_then_uninstall_leaves_nothing(
    cluster: Any, kube: Any, helm: Helm, namespace: str, gpu_nodes: Any
) -> None:
    h = helm.with_env(cluster.env())
    # A node for the pre-upgrade hook Job's pod (kwok completes it): Helm waits for that Job, and
    # deletes it and its RBAC when it succeeds.
    gpu_nodes(1)
    release = f"u{uuid.uuid4().hex[:6]}"
    rbac_kinds = ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")
    with user_namespace(kube) as ml:
        try:
            h.run(
                "install",
                release,
                str(CHART),
                "--namespace",
                namespace,
                "--set",
                f"operator.peering.name={release}",
            )
            first = manifest(h, release, namespace)
            assert find(first, "DaemonSet") and find(first, "PodDisruptionBudget")
            assert one(first, "ClusterRole", f"{release}-vibe-operator")
            # The live cluster has no monitoring.coreos.com: no ServiceMonitor or PrometheusRule.
            assert not find(first, "ServiceMonitor") and not find(first, "PrometheusRule")
            assert set(leftovers(cluster, release)) >= {
                f"deployment.apps/{release}-vibe-operator",
                f"daemonset.apps/{release}-vibe-agent",
                f"clusterrole.rbac.authorization.k8s.io/{release}-vibe-operator",
            }

            # Upgrade: namespaced operator, one replica, no agent, NetworkPolicies, another profile TTL.
            changed = {
                "operator": {
                    "replicas": 1,
                    "watchNamespaces": [ml],
                    "profileTTLSeconds": 120,
                    "peering": {"name": release},
                },
                "agent": {"enabled": False},
                "networkPolicy": {"enabled": True},
            }
            with values_args(changed) as vargs:
                h.run("upgrade", release, str(CHART), "--namespace", namespace, *vargs)
            second = manifest(h, release, namespace)
            assert not find(second, "DaemonSet") and not find(second, "PodDisruptionBudget")
            assert {o["metadata"]["namespace"] for o in find(second, "Role")} == {ml, namespace}
            live = leftovers(cluster, release)
            for gone in (
                f"daemonset.apps/{release}-vibe-agent",
                f"poddisruptionbudget.policy/{release}-vibe-operator",
                f"clusterrole.rbac.authorization.k8s.io/{release}-vibe-agent",
                f"serviceaccount/{release}-vibe-agent",
                f"clusterkopfpeering.kopf.dev/{release}",
            ):
                assert gone not in live, f"{gone} survived the upgrade"
            assert f"networkpolicy.networking.k8s.io/{release}-vibe-operator" in live
            assert not [o for o in live if o.endswith(f"/{release}-vibe-crds-upgrade")], live
            assert f"kopfpeering.kopf.dev/{release}" in live
            dep = kubectl(
                cluster, "get", "-n", namespace, "deployment", f"{release}-vibe-operator", "-o", "yaml"
            ).stdout
            dep = yaml.safe_load(dep)
            assert dep["spec"]["replicas"] == 1
            args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
            assert f"--namespace={ml}" in args and "--profile-ttl=120" in args
            status = h.run("status", release, "--namespace", namespace).stdout
            assert "REVISION: 2" in status and "STATUS: deployed" in status
        finally:
            h.run("uninstall", release, "--namespace", namespace, "--wait", check=False)
        assert leftovers(cluster, release) == []
        # And nothing cluster-scoped under its names either.
        for kind in rbac_kinds[2:]:
            names = kubectl(cluster, "get", kind.lower(), "-o", "name").stdout
            assert release not in names
        # The CRDs stay, as Helm documents.
        assert "moedeployments.vibe.dev" in kubectl(cluster, "get", "crd", "-o", "name").stdout
