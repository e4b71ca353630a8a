"""The README's main command, end to end: `vibe demo` on its own local cluster, as a user runs it.

It builds nothing new (the session's binaries are cached), starts a separate control plane, installs
the chart, runs the operator and a simulated agent as the chart's ServiceAccounts, places DeepSeek-V3,
throttles one GPU and must show the re-placement. Afterwards the test reads the outcome back from the
API server itself before taking the cluster down.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from vibe import api, contract
from vibe.cluster import Cluster

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

NAME = "vibe-e2e"


def _run_demo() -> str:
    """`vibe demo --keep` on the test's cluster, as a user runs it: its output, once it exited 0."""
    proc = subprocess.run(
        [sys.executable, "-m", "vibe", "demo", "--cluster", NAME, "--keep"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=840,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    return out


@pytest.mark.timeout(1800)
def test_demo_places_detects_drift_and_replaces(cluster_binaries: object) -> None:
    from kubernetes import client

    try:
        out = _run_demo()
        assert "Traceback" not in out
        for expected in ("Ready after", "token-balanced", "lower bound", "Drifted, timeScale", "re-placed"):
            assert expected in out, f"{expected!r} missing from the demo's output:\n{out[-6000:]}"

        with Cluster(NAME).api_client() as kube:
            moed = client.CustomObjectsApi(kube).get_namespaced_custom_object(
                api.GROUP, api.VERSION, "vibe-demo", api.MOEDEPLOYMENT_PLURAL, "deepseek-v3"
            )
            st = moed["status"]
            assert st["placementGeneration"] == 2
            assert st["lastReplacement"]["moves"] > 0
            assert st["predicted"]["stepTimeSeconds"] >= st["predicted"]["lowerBoundSeconds"]
            assert st["predicted"]["gainVsBaseline"] > 0
            ready = next(c for c in st["conditions"] if c["type"] == "Ready")
            assert ready["status"] == "True"
            cm = client.CoreV1Api(kube).read_namespaced_config_map("deepseek-v3-placement", "vibe-demo")
            assert cm.metadata.annotations[contract.ANNOTATION_PLACEMENT_GENERATION] == "2"
            assert {"placement.json", "sglang-expert-location.json"} <= set(cm.data)
            profile = client.CustomObjectsApi(kube).get_namespaced_custom_object(
                api.GROUP, api.VERSION, "vibe-system", api.GPUPROFILE_PLURAL, "gpu-node-3"
            )
            gpu2 = next(g for g in profile["spec"]["gpus"] if g["index"] == 2)
            assert gpu2["drift"]["state"] == "Drifted"
            assert profile["spec"]["source"] == "simulated"

        # Issue 15 #13: a second run on the kept cluster starts clean and tells the same story (it saw
        # the GPU already drifted, "re-planned 765 s after the drift" and no re-placement).
        out2 = _run_demo()
        assert "Clean up what the previous demo run left" in out2
        assert "removed namespace vibe-demo" in out2
        assert "generation 1 → 2" in out2, out2[-4000:]
        lag = re.search(r"re-planned (\d+)s after the GPUProfile reported the drift", out2)
        assert lag and int(lag.group(1)) < 120, out2[-4000:]
        with Cluster(NAME).api_client() as kube:
            moed = client.CustomObjectsApi(kube).get_namespaced_custom_object(
                api.GROUP, api.VERSION, "vibe-demo", api.MOEDEPLOYMENT_PLURAL, "deepseek-v3"
            )
            assert moed["status"]["placementGeneration"] == 2
    finally:
        Cluster(NAME).down()
