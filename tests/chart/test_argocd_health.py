"""The Argo CD health check for MoEDeployment, run as Lua.

The check is deploy/argocd/moedeployment-health.lua; docs/operations.md and the argocd-cm patch carry
the same text. It runs here in Lua 5.1 (through lupa), the dialect of the interpreter Argo CD embeds,
the way Argo CD runs it: the object as the global ``obj``, the chunk returning ``{status, message}``.
The statuses fed to it are built with the operator's own condition code, so they are the shapes the
operator writes; the cluster test also runs it on a live MoEDeployment.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import pytest
import yaml
from chart_helpers import ARGOCD_HEALTH_LUA, ROOT, health

from vibe import api
from vibe.operator.conditions import Condition, merge

LUA = ARGOCD_HEALTH_LUA
ARGOCD_CM = ROOT / "deploy" / "argocd" / "argocd-cm-health.yaml"
DOCS = ROOT / "docs" / "operations.md"
NOW = "2026-11-23T12:00:00Z"


def moed(generation: int = 1, status: Mapping[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": api.API_VERSION,
        "kind": api.MOEDEPLOYMENT_KIND,
        "metadata": {"name": "dsv3", "namespace": "ml", "generation": generation},
        "spec": {"model": {"layers": 58, "experts": 256}},
    }
    if status is not None:
        body["status"] = dict(status)
    return body


def status(generation: int, *conditions: Condition, observed: int | None = None) -> dict[str, Any]:
    return {
        "observedGeneration": generation if observed is None else observed,
        "conditions": merge(None, conditions, generation=generation, now=NOW),
    }


READY = Condition("Ready", True, "Placed", "placement generation 1 in ConfigMap dsv3-placement")
HEALTHY_INPUTS = Condition("Degraded", False, "InputsHealthy", "GPU profiles fresh, loads readable")
NO_DRIFT = Condition("Drifted", False, "NoDrift", "the placement in service matches the current inputs")


def test_the_copies_agree() -> None:
    lua = LUA.read_text()
    cm = yaml.safe_load(ARGOCD_CM.read_text())
    assert cm["data"]["resource.customizations.health.vibe.dev_MoEDeployment"] == lua
    blocks = re.findall(r"```lua\n(.*?)```", DOCS.read_text(), re.DOTALL)
    assert blocks == [lua], "docs/operations.md must carry deploy/argocd/moedeployment-health.lua verbatim"


def test_not_reconciled_yet() -> None:
    assert health(moed())["status"] == "Progressing"
    assert health(moed(status={}))["status"] == "Progressing"
    hs = health(moed(status={"observedGeneration": 1}))
    assert hs["status"] == "Progressing" and "operator" in hs["message"]


def test_healthy() -> None:
    hs = health(moed(1, status(1, READY, HEALTHY_INPUTS, NO_DRIFT)))
    assert hs == {
        "status": "Healthy",
        "message": "Placed: placement generation 1 in ConfigMap dsv3-placement",
    }


def test_new_generation_not_observed_yet() -> None:
    # The spec moved to generation 2; status still describes generation 1.
    hs = health(moed(2, status(1, READY, HEALTHY_INPUTS)))
    assert hs["status"] == "Progressing" and "generation 2" in hs["message"]
    # observedGeneration caught up but the Ready condition is older (computed for generation 1).
    st = status(1, READY, HEALTHY_INPUTS)
    st["observedGeneration"] = 2
    assert health(moed(2, st))["status"] == "Progressing"


def test_drifted_is_still_healthy() -> None:
    drifted = Condition("Drifted", True, "PerformanceDrift", "gain 1.2% below minGain 3%")
    hs = health(moed(1, status(1, READY, HEALTHY_INPUTS, drifted)))
    assert hs["status"] == "Healthy"
    assert "drifted: PerformanceDrift: gain 1.2% below minGain 3%" in hs["message"]


def test_first_placement_pending() -> None:
    pending = Condition("Ready", False, "Pending", "no placement yet")
    hs = health(moed(1, status(1, pending, HEALTHY_INPUTS)))
    assert hs == {"status": "Progressing", "message": "Pending: no placement yet"}


@pytest.mark.parametrize(
    "reason", ["ConfigMapNotFound", "InsufficientGPUs", "InfeasibleSlots", "ShapeMismatch", "InvalidLoads"]
)
def test_input_problems_are_degraded(reason: str) -> None:
    msg = f"{reason} explained"
    hs = health(
        moed(3, status(3, Condition("Ready", False, reason, msg), Condition("Degraded", True, reason, msg)))
    )
    assert hs == {"status": "Degraded", "message": f"{reason}: {msg}"}


def test_stale_profiles_with_a_placement_in_service_are_degraded() -> None:
    stale = Condition(
        "Degraded", True, "StaleGPUProfile", "GPUProfiles of 1 node(s) (gpu-7) have no heartbeat"
    )
    hs = health(moed(1, status(1, READY, stale)))
    assert hs["status"] == "Degraded" and hs["message"].startswith("StaleGPUProfile: ")


def test_ready_false_for_another_reason_is_degraded() -> None:
    hs = health(moed(1, status(1, Condition("Ready", False, "PlacementConflict", "two writers"))))
    assert hs == {"status": "Degraded", "message": "PlacementConflict: two writers"}


def test_condition_without_message_or_reason() -> None:
    st = {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True"}]}
    assert health(moed(1, st)) == {"status": "Healthy", "message": "Placement ready"}
    st = {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "Unknown"}]}
    assert health(moed(1, st))["status"] == "Progressing"


def test_no_generation_in_metadata() -> None:
    body = moed(1, status(1, READY))
    del body["metadata"]["generation"]
    assert health(body)["status"] == "Healthy"
