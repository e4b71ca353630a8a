"""Cluster-test harness: install the CRDs, run the operator as a real process, create and watch objects.

The operator runs as ``python -m vibe.operator`` with the test cluster's KUBECONFIG, so killing it is a
real SIGKILL and a restart really starts from the cluster's state. Its log is kept in a file and shown
when a wait times out.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from cluster_plugin import TEST_NODES_LABEL
from operator_builders import profile_body

from vibe import api, contract
from vibe.cluster.processes import free_port
from vibe.cluster.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
G, V = api.GROUP, api.VERSION


class OperatorProcess:
    """``python -m vibe.operator`` against the test cluster."""

    def __init__(
        self, kubeconfig: Path, profile_namespace: str, *extra: str, env: Mapping[str, str] | None = None
    ) -> None:
        """``env``: the process's environment on top of this one (default: ``KUBECONFIG=kubeconfig``)."""
        self.kubeconfig = kubeconfig
        self.env = dict(env) if env is not None else {"KUBECONFIG": str(kubeconfig)}
        self.profile_namespace = profile_namespace
        self.extra = list(extra)
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.log = Path(tempfile.mkstemp(prefix="vibe-operator-", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None

    def start(self) -> OperatorProcess:
        args = [
            sys.executable, "-m", "vibe.operator",
            "--profile-namespace", self.profile_namespace,
            "--metrics-port", str(self.metrics_port),
            "--liveness", f"http://127.0.0.1:{self.health_port}/healthz",
            "--resync", "10",
            "--solve-budget", "0.2",
            *self.extra,
        ]  # fmt: skip
        if "--peering" not in self.extra:
            args.append("--standalone")
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        fh = self.log.open("ab")
        self.proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        wait_for(self.live, timeout=60, interval=0.2, what=f"operator liveness\n{self.tail()}")
        return self

    def live(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"operator exited with {self.proc.returncode}:\n{self.tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def count(self, series: str) -> float:
        """The sum of a metric's samples whose labels include those given, e.g.
        ``vibe_reconcile_errors_total{reason="InvalidLoads"}`` (0 when there are none)."""
        return count_metric(self.metrics(), series)

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye to peers (what a crash or an OOM kill does)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def count_metric(text: str, series: str) -> float:
    """Sum of the samples of ``series`` (``name`` or ``name{label="v",...}``) in Prometheus text."""
    total = 0.0
    name, _, labels = series.partition("{")
    want = set(labels.rstrip("}").split(",")) if labels else set()
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            head, _, value = line.rpartition(" ")
            have = set(head[len(name) + 1 : -1].split(",")) if "{" in head else set()
            if want <= have:
                total += float(value)
    return total


@contextlib.contextmanager
def running_operator(
    kubeconfig: Path, profile_namespace: str, *extra: str, env: Mapping[str, str] | None = None
) -> Iterator[OperatorProcess]:
    op = OperatorProcess(kubeconfig, profile_namespace, *extra, env=env).start()
    try:
        yield op
    finally:
        op.stop()


# ------------------------------------------------------------------------------------------------
# Objects


class Objects:
    """Create, read and wait on the objects of one test namespace (plus GPUProfiles in theirs)."""

    def __init__(
        self, api: Any, namespace: str, profile_namespace: str, log: Callable[[], str] = str
    ) -> None:
        from kubernetes import client

        self.api = api
        self.ns = namespace
        self.profile_ns = profile_namespace
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.log = log

    # GPUProfiles, as the agent writes them (spec, then the heartbeat in status)
    def put_profile(self, body: Mapping[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        body = json.loads(json.dumps(body))
        body["metadata"]["namespace"] = self.profile_ns
        name = body["metadata"]["name"]
        status = body.pop("status", None)
        try:
            self.custom.create_namespaced_custom_object(G, V, self.profile_ns, api.GPUPROFILE_PLURAL, body)
        except ApiException as e:
            if e.status != 409:
                raise
            self.custom.patch_namespaced_custom_object(
                G, V, self.profile_ns, api.GPUPROFILE_PLURAL, name, {"spec": body["spec"]}
            )
        if status:
            self.custom.patch_namespaced_custom_object_status(
                G, V, self.profile_ns, api.GPUPROFILE_PLURAL, name, {"status": status}
            )

    def patch_profile_spec(self, name: str, spec: Mapping[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            G, V, self.profile_ns, api.GPUPROFILE_PLURAL, name, {"spec": spec}
        )

    # MoEDeployments
    def create(self, body: Mapping[str, Any]) -> dict:
        return self.custom.create_namespaced_custom_object(
            G, V, self.ns, api.MOEDEPLOYMENT_PLURAL, dict(body)
        )

    def get(self, name: str) -> dict:
        return self.custom.get_namespaced_custom_object(G, V, self.ns, api.MOEDEPLOYMENT_PLURAL, name)

    def patch(self, name: str, patch: Mapping[str, Any]) -> dict:
        return self.custom.patch_namespaced_custom_object(
            G, V, self.ns, api.MOEDEPLOYMENT_PLURAL, name, dict(patch)
        )

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(G, V, self.ns, api.MOEDEPLOYMENT_PLURAL, name)

    # ConfigMaps
    def put_loads(self, name: str, text: str, key: str = "loads.json") -> None:
        from kubernetes.client.exceptions import ApiException

        body = {"metadata": {"name": name}, "data": {key: text}}
        try:
            self.core.create_namespaced_config_map(self.ns, body)
        except ApiException as e:
            if e.status != 409:
                raise
            self.core.patch_namespaced_config_map(name, self.ns, {"data": {key: text}})

    def config_map(self, name: str) -> dict | None:
        from kubernetes.client.exceptions import ApiException

        try:
            rsp = self.core.read_namespaced_config_map(name, self.ns, _preload_content=False)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return json.loads(rsp.data)

    def events(self, name: str) -> list[dict]:
        rsp = self.core.list_namespaced_event(
            self.ns, field_selector=f"involvedObject.name={name}", _preload_content=False
        )
        return json.loads(rsp.data)["items"]

    # waits
    def condition(self, name: str, type_: str) -> dict | None:
        for c in (self.get(name).get("status") or {}).get("conditions") or ():
            if c["type"] == type_:
                return c
        return None

    def wait_condition(
        self, name: str, type_: str, status: str, reason: str | None = None, timeout: float = 60
    ) -> dict:
        def check() -> dict | None:
            c = self.condition(name, type_)
            if c and c["status"] == status and (reason is None or c["reason"] == reason):
                return c
            return None

        return wait_for(
            check, timeout=timeout, interval=0.2, what=self._what(name, f"{type_}={status} {reason or ''}")
        )

    def wait_generation(self, name: str, generation: int, timeout: float = 60) -> dict:
        def check() -> dict | None:
            cm = self.config_map(f"{name}-placement")
            if (
                cm
                and int(cm["metadata"]["annotations"][contract.ANNOTATION_PLACEMENT_GENERATION]) >= generation
            ):
                return cm
            return None

        return wait_for(
            check, timeout=timeout, interval=0.2, what=self._what(name, f"placement generation {generation}")
        )

    def wait_event(self, name: str, reason: str, timeout: float = 30) -> dict:
        def check() -> dict | None:
            return next((e for e in self.events(name) if e.get("reason") == reason), None)

        return wait_for(check, timeout=timeout, interval=0.3, what=self._what(name, f"Event {reason}"))

    def _what(self, name: str, what: str) -> str:
        try:
            status = json.dumps(self.get(name).get("status"), indent=1)[:3000]
        except Exception as e:  # the object may be gone
            status = repr(e)
        return f"{name}: {what}\nstatus: {status}\noperator log:\n{self.log()}"


def put_fleet(
    gpu_nodes: Callable[..., list[str]], objs: Objects, stem: str, n: int = 2, gpus: int = 4, **profile: Any
) -> tuple[dict[str, str], list[str]]:
    """``n`` fake GPU nodes (``gpu_nodes``, prefix ``stem-<random>``) of ``gpus`` GPUs, each with its
    GPUProfile (``profile_body(node, gpus=gpus, **profile)``): (their nodeSelector, their names)."""
    prefix = f"{stem}-{uuid.uuid4().hex[:6]}"
    names = gpu_nodes(n, prefix=prefix, gpus_per_node=gpus)
    for node in names:
        objs.put_profile(profile_body(node, gpus=gpus, **profile))
    return {TEST_NODES_LABEL: prefix}, names
