"""Helpers for the chart tests: find (or build) helm, render the chart, walk what it rendered.

helm comes from the same place as the rest of the local control plane: built from the Go module pinned
in hack/k8s/go.mod by hack/build-cluster.sh and cached by version (``vibe.cluster.binaries``). Nothing is
skipped when it is missing: it is built, as CI builds it.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "vibe"
VALUES_DIR = Path(__file__).resolve().parent / "values"
CRDS = ROOT / "crds"
NAMESPACE = "vibe-system"
RELEASE = "vibe"

# The Prometheus Operator kinds the chart renders only when the cluster serves them.
MONITORING_APIS = ("monitoring.coreos.com/v1/ServiceMonitor", "monitoring.coreos.com/v1/PrometheusRule")


def helm_binary(build_missing: bool = True) -> Path:
    """The pinned helm binary, built first when it is missing."""
    from vibe.cluster import binaries

    path = binaries.locate()["helm"]
    if not path.is_file() and build_missing:
        binaries.build(["helm"])
    if not path.is_file():
        raise binaries.BinariesMissing(f"helm not built at {path}")
    return path


class HelmError(RuntimeError):
    def __init__(self, args: Sequence[str], rc: int, out: str, err: str) -> None:
        super().__init__(f"helm {' '.join(args)} exited {rc}:\n{err or out}")
        self.rc, self.out, self.err = rc, out, err


class Helm:
    def __init__(self, binary: Path, env: Mapping[str, str] | None = None) -> None:
        self.binary = binary
        self.env = dict(env) if env is not None else None

    def run(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.binary), *args], capture_output=True, text=True, env=self.env, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise HelmError(args, proc.returncode, proc.stdout, proc.stderr)
        return proc

    def with_env(self, env: Mapping[str, str]) -> Helm:
        return Helm(self.binary, env)

    def template(
        self,
        values: Mapping[str, Any] | None = None,
        *,
        files: Iterable[Path] = (),
        api_versions: Iterable[str] = (),
        release: str = RELEASE,
        namespace: str = NAMESPACE,
        extra: Sequence[str] = (),
    ) -> list[dict[str, Any]]:
        """``helm template`` of the chart: the rendered objects (CRDs not included)."""
        return parse_docs(
            self.template_text(
                values,
                files=files,
                api_versions=api_versions,
                release=release,
                namespace=namespace,
                extra=extra,
            )
        )

    def template_text(
        self,
        values: Mapping[str, Any] | None = None,
        *,
        files: Iterable[Path] = (),
        api_versions: Iterable[str] = (),
        release: str = RELEASE,
        namespace: str = NAMESPACE,
        extra: Sequence[str] = (),
    ) -> str:
        with values_args(values, files) as vargs:
            args = ["template", release, str(CHART), "--namespace", namespace, *vargs, *extra]
            for api in api_versions:
                args += ["--api-versions", api]
            return self.run(*args).stdout


class values_args:
    """``-f`` arguments for value files plus a temporary file holding ``values`` (a context manager)."""

    def __init__(self, values: Mapping[str, Any] | None, files: Iterable[Path] = ()) -> None:
        self.values = values
        self.files = list(files)
        self.tmp: Any = None

    def __enter__(self) -> list[str]:
        args: list[str] = []
        for f in self.files:
            args += ["-f", str(f)]
        if self.values:
            self.tmp = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
            yaml.safe_dump(dict(self.values), self.tmp)
            self.tmp.close()
            args += ["-f", self.tmp.name]
        return args

    def __exit__(self, *exc: object) -> None:
        if self.tmp is not None:
            Path(self.tmp.name).unlink(missing_ok=True)


def parse_docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def find(
    objs: Iterable[Mapping[str, Any]], kind: str, name: str | None = None, namespace: str | None = None
) -> list[Mapping[str, Any]]:
    out = []
    for o in objs:
        if o.get("kind") != kind:
            continue
        if name is not None and o["metadata"]["name"] != name:
            continue
        if namespace is not None and o["metadata"].get("namespace") != namespace:
            continue
        out.append(o)
    return out


def one(
    objs: Iterable[Mapping[str, Any]], kind: str, name: str | None = None, namespace: str | None = None
) -> Mapping[str, Any]:
    found = find(objs, kind, name, namespace)
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def pod_specs(objs: Iterable[Mapping[str, Any]]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for o in objs:
        if o.get("kind") in ("Deployment", "DaemonSet", "StatefulSet", "Job"):
            yield f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]["spec"]


def rules_of(role: Mapping[str, Any]) -> set[tuple[str, str, str]]:
    """A Role's or ClusterRole's rules as (apiGroup, resource, verb) triples."""
    out = set()
    for r in role.get("rules") or ():
        for g in r.get("apiGroups") or ():
            for res in r.get("resources") or ():
                for v in r.get("verbs") or ():
                    out.add((g, res, v))
    return out


def triples(spec: Mapping[tuple[str, str], Iterable[str]]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for (g, r), verbs in spec.items() for v in verbs}


# ---- metrics the chart's alerts and dashboard use, and those the code defines

_DEFINED = re.compile(
    r"\b(Gauge|Counter|Histogram|Summary|Info|Enum|GaugeMetricFamily|CounterMetricFamily|"
    r"HistogramMetricFamily|SummaryMetricFamily|InfoMetricFamily|"
    # the agent's collector builds its families through small local helpers named after the kind
    r"gauge|counter)\(\s*[\"'](vibe_[a-z0-9_]+)[\"']"
)
_SUFFIXES = {
    "Counter": ("_total", "_created"),
    "counter": ("_total",),
    "CounterMetricFamily": ("_total",),
    "Histogram": ("_bucket", "_sum", "_count", "_created"),
    "HistogramMetricFamily": ("_bucket", "_sum", "_count"),
    "Summary": ("_sum", "_count", "_created"),
    "SummaryMetricFamily": ("_sum", "_count"),
    "Info": ("_info",),
    "InfoMetricFamily": ("_info",),
}


def defined_metrics(package: Path = ROOT / "vibe") -> set[str]:
    """Every series name the vibe package can export (from its prometheus_client definitions)."""
    names: set[str] = set()
    for path in package.rglob("*.py"):
        for kind, name in _DEFINED.findall(path.read_text(errors="replace")):
            suffixes = _SUFFIXES.get(kind, ("",))
            base = name
            for s in suffixes:  # prometheus_client accepts a counter named with its _total already
                if s and base.endswith(s):
                    base = base[: -len(s)]
            names.update(base + s for s in suffixes)
    return names


def promql_metric_names(expr: str) -> set[str]:
    """Metric names used by a PromQL expression (parsed, so a syntax error raises)."""
    import promql_parser

    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            for m in node.matchers.matchers:
                if m.name == "__name__":
                    names.add(m.value)
        for attr in ("expr", "lhs", "rhs", "vector_selector", "param"):
            child = getattr(node, attr, None)
            if isinstance(child, promql_parser.Expr):
                visit(child)
        for child in getattr(node, "args", None) or ():
            if isinstance(child, promql_parser.Expr):
                visit(child)

    visit(promql_parser.parse(expr))
    return names


def grafana_to_promql(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced by values PromQL accepts."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1h")
    return re.sub(r"\$\{?([a-zA-Z_]+)\}?", ".*", expr)


def load_json(path: Path) -> Any:
    return json.loads(path.read_text())


# ---- the local control plane's kubectl


INSTANCE_LABEL = "app.kubernetes.io/instance"


def kubectl_binary() -> Path:
    from vibe.cluster import binaries

    return binaries.locate()["kubectl"]


def kubectl(
    cluster: Any, *args: str, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(kubectl_binary()), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=cluster.env(),
        timeout=120,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"kubectl {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}{proc.stdout}"
        )
    return proc


def leftovers(cluster: Any, release: str) -> list[str]:
    """Every object of any listable kind, in any namespace, that carries the release's instance label."""
    kinds = kubectl(cluster, "api-resources", "--verbs=list", "-o", "name").stdout.split()
    kinds = [k for k in kinds if k not in ("events", "events.events.k8s.io")]
    out = kubectl(cluster, "get", ",".join(kinds), "-A", "-l", f"{INSTANCE_LABEL}={release}", "-o", "name")
    return [line for line in out.stdout.splitlines() if line.strip()]


# ---- the Argo CD health check

ARGOCD_HEALTH_LUA = ROOT / "deploy" / "argocd" / "moedeployment-health.lua"


def health(obj: Mapping[str, Any]) -> dict[str, str]:
    """Run the MoEDeployment health Lua on ``obj`` as Argo CD does: the object as the global ``obj``,
    the chunk returning ``{status, message}``; in Lua 5.1 (through lupa), the dialect Argo CD embeds."""
    import lupa.lua51 as lua51

    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    hs = lua.execute(ARGOCD_HEALTH_LUA.read_text())
    return dict(hs.items())


def agent_pod_on(core: Any, namespace: str, node: str, timeout: float = 60) -> Any:
    """The chart's agent pod on ``node`` (a ``CoreV1Api`` read), waited for; TimeoutError if none comes."""
    from vibe.cluster.waiting import wait_for

    def pod() -> Any:
        pods = core.list_namespaced_pod(
            namespace,
            label_selector="app.kubernetes.io/component=agent",
            field_selector=f"spec.nodeName={node}",
        ).items
        return pods[0] if pods else None

    return wait_for(pod, timeout=timeout, what=f"the agent's pod on {node}")


def pod_bound_client(kube: Any, cluster: Any, namespace: str, sa: str, pod: Any, path: Path) -> Any:
    """An ApiClient authenticating with a token bound to ``pod`` (as the kubelet projects it)."""
    from kubernetes import client, config

    token = (
        client.CoreV1Api(kube)
        .create_namespaced_service_account_token(
            sa,
            namespace,
            {
                "spec": {
                    "expirationSeconds": 3600,
                    "boundObjectRef": {
                        "kind": "Pod",
                        "apiVersion": "v1",
                        "name": pod.metadata.name,
                        "uid": pod.metadata.uid,
                    },
                }
            },
        )
        .status.token
    )
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"][:1],
        "users": [{"name": "agent", "user": {"token": token}}],
        "contexts": [
            {"name": "agent", "context": {"cluster": admin["clusters"][0]["name"], "user": "agent"}}
        ],
        "current-context": "agent",
    }
    path.write_text(yaml.safe_dump(doc))
    return config.new_client_from_config(config_file=str(path))


def refused(call: Any, *args: Any, **kwargs: Any) -> str:
    """The API server's refusal message (403), failing the test when the call is allowed."""
    from kubernetes.client.exceptions import ApiException

    try:
        call(*args, **kwargs)
    except ApiException as e:
        assert e.status == 403, f"expected 403, got {e.status}: {e.body}"
        return str(e.body)
    raise AssertionError(f"{getattr(call, '__name__', call)} was allowed")


def wait_enforced(what: str, call: Any, *args: Any, **kwargs: Any) -> None:
    """The API server loads a new policy asynchronously: wait until a dry run of ``call`` is refused."""
    from kubernetes.client.exceptions import ApiException

    from vibe.cluster.waiting import wait_for

    def enforced() -> bool:
        try:
            call(*args, dry_run="All", **kwargs)
        except ApiException as e:
            return e.status == 403
        return False

    wait_for(enforced, timeout=30, interval=0.5, what=what)
