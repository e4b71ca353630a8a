"""``vibe operator --kubeconfig --context``: Kopf's watches and the reconciler both use the flags.

The operator runs as a real process whose ``$KUBECONFIG`` and the given file's current context both
point at a port nobody listens on; only the context named by ``--context`` reaches the test cluster.
A MoEDeployment becoming Ready therefore proves that Kopf logged in (``@kopf.on.login``) and that the
reconciler's client read and wrote through the flags, not through the defaults.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster_plugin import TEST_NODES_LABEL
from operator_builders import deployment_body, profile_body
from operator_harness import Objects, running_operator

from vibe.cluster.processes import free_port
from vibe.cluster.waiting import wait_for
from vibe.crds.apply import apply_crds
from vibe.placement.synthetic import skewed_loads

pytestmark = pytest.mark.cluster


def kubeconfig_with_a_decoy(real: Path, out: Path, context: str) -> None:
    """``real`` with its context renamed ``context`` and a current context ``decoy`` that leads nowhere."""
    cfg = yaml.safe_load(real.read_text())
    (ctx,) = cfg["contexts"]
    (cluster,) = cfg["clusters"]
    nowhere = {**cluster["cluster"], "server": f"https://127.0.0.1:{free_port()}"}
    cfg["clusters"].append({"name": "decoy", "cluster": nowhere})
    cfg["contexts"] = [
        {"name": context, "context": ctx["context"]},
        {"name": "decoy", "context": {**ctx["context"], "cluster": "decoy"}},
    ]
    cfg["current-context"] = "decoy"
    out.write_text(yaml.safe_dump(cfg))


def test_operator_reconciles_through_kubeconfig_and_context_flags(
    cluster: Any, kube: Any, namespace: str, gpu_nodes: Any, tmp_path: Path
) -> None:
    apply_crds(kube)
    flags_config, env_config = tmp_path / "flags.yaml", tmp_path / "env.yaml"
    kubeconfig_with_a_decoy(cluster.kubeconfig, flags_config, context="vibe-real")
    kubeconfig_with_a_decoy(cluster.kubeconfig, env_config, context="unused")
    prefix = f"flags-{uuid.uuid4().hex[:6]}"
    with running_operator(
        flags_config,
        namespace,
        "--kubeconfig", str(flags_config),
        "--context", "vibe-real",
        "--namespace", namespace,
        env={"KUBECONFIG": str(env_config), "HOME": str(tmp_path)},
    ) as op:  # fmt: skip
        objs = Objects(kube, namespace, namespace, log=op.tail)
        for node in gpu_nodes(2, prefix=prefix, gpus_per_node=4):
            objs.put_profile(profile_body(node, gpus=4))
        loads = skewed_loads(4, 16, mean_tokens=512.0, seed=3).tolist()
        objs.put_loads("loads", json.dumps({"loads": loads}))
        objs.create(
            deployment_body(
                "flags",
                selector={TEST_NODES_LABEL: prefix},
                count=8,
                slots=3,
                workload={"configMapRef": {"name": "loads"}},
            )
        )
        ready = objs.wait_condition("flags", "Ready", "True", "Placed")
        assert "placement generation 1" in ready["message"]
        assert objs.config_map("flags-placement") is not None
        assert "Traceback" not in op.tail(400), op.tail(400)


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


def _listening(pid: int, port: int) -> set[str]:
    """Local addresses (hex, as /proc shows them) the process's network namespace listens on at ``port``."""
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.rpartition(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def test_the_metrics_endpoint_binds_its_address_and_drops_idle_connections(
    cluster: Any, kube: Any, namespace: str
) -> None:
    """Issue 20, defect 12: 1000 idle half-sent requests took the operator from 34 to 1034 threads, still
    held after 60 s, and the endpoint (every tenant's names and reasons) could not be bound to localhost.
    Now ``--metrics-addr 127.0.0.1`` binds only the loopback, the threads stay bounded under 1000 idle
    clients, the idle ones are closed after the timeout, and scrapes work again afterwards."""
    import socket
    import time

    from vibe import metrics_http

    apply_crds(kube)
    with running_operator(
        cluster.kubeconfig, namespace, "--namespace", namespace, "--metrics-addr", "127.0.0.1"
    ) as op:
        assert op.proc is not None
        assert _listening(op.proc.pid, op.metrics_port) == {"0100007F"}  # 127.0.0.1 only
        assert "vibe_reconcile" in op.metrics()
        base = _threads(op.proc.pid)
        idle = []
        try:
            for _ in range(1000):
                s = socket.create_connection(("127.0.0.1", op.metrics_port), timeout=5)
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # headers never finished
                idle.append(s)
            time.sleep(1)
            held = _threads(op.proc.pid)
            assert held <= base + metrics_http.MAX_CONNECTIONS + 2, (base, held)
            wait_for(
                lambda: _threads(op.proc.pid) <= base + 2,
                timeout=metrics_http.TIMEOUT_S + 20,
                interval=0.5,
                what="the idle connections' threads to end",
            )
            assert "vibe_reconcile" in op.metrics()
        finally:
            for s in idle:
                s.close()
        assert "Traceback" not in op.tail(400), op.tail(400)
