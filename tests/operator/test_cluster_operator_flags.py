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
