"""The GPUProfile body: the contract's fields, deterministic bytes, the round trip a restart relies on."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from vibe import api
from vibe.agent.drift import Baseline
from vibe.agent.profile import (
    Curve,
    GPURecord,
    NodeFacts,
    build_lease,
    build_profile,
    build_status,
    condition,
    drifted,
    isotonic,
    parse_time,
    records_from_profile,
    relative_speed,
    rfc3339,
    undrifted,
)
from vibe.agent.shapes import DEFAULT_MODELS, TOKEN_GRID, ExpertShape
from vibe.agent.simulate import reference_on_grid
from vibe.agent.telemetry import GPUInfo, Sample, reason_mask
from vibe.placement import slowed_curve

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def record(index: int = 0, scale: float = 1.0, speed: float = 1.0) -> GPURecord:
    info = GPUInfo(
        index=index, uuid=f"GPU-{index}", pci_bus_id="00000000:18:00.0", product="H100", memory_bytes=1
    )
    curves = [
        Curve.from_measured(s, TOKEN_GRID, list(reference_on_grid(s, TOKEN_GRID) / speed))
        for s in DEFAULT_MODELS
    ]
    rec = GPURecord(
        info=info,
        curves=curves,
        benchmark_time=1_795_000_000.0,
        baseline=Baseline(1_500_000_000, 2_619_000_000, 700.0),
        telemetry=Sample(time=0, sm_clock_hz=1_500_000_000, clock_event_reasons=reason_mask(["SwPowerCap"])),
        base_speed=relative_speed(curves),
        time_scale=scale,
        drift_state="Drifted" if scale != 1.0 else "Stable",
        drift_since=1_795_000_100.0,
        drift_reason="slow" if scale != 1.0 else "",
    )
    return rec


def test_body_has_the_contract_fields() -> None:
    body = build_profile("node-7", "vibe-system", [record(0), record(1, scale=1.25)], agent_version="0.1.0")
    assert body["apiVersion"] == api.API_VERSION and body["kind"] == api.GPUPROFILE_KIND
    assert body["metadata"]["name"] == "node-7" and body["metadata"]["namespace"] == "vibe-system"
    assert body["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "vibe-agent",
        api.LABEL_NODE: "node-7",
    }
    spec = body["spec"]
    assert spec["nodeName"] == "node-7" and spec["source"] == "measured" and spec["agentVersion"] == "0.1.0"
    g0, g1 = spec["gpus"]
    assert g0["index"] == 0 and g0["uuid"] == "GPU-0" and g0["pciBusId"] and g0["product"] == "H100"
    assert g0["benchmarkTime"] == "2026-11-18T11:06:40Z"
    assert g0["relativeSpeed"] == pytest.approx(1.0, abs=1e-3)
    assert len(g0["curves"]) == 3
    c = g0["curves"][0]
    assert set(c) == {"name", "hiddenSize", "intermediateSize", "dtype", "tokens", "seconds"}
    assert c["tokens"] == list(TOKEN_GRID)
    assert all(b >= a > 0 for a, b in itertools.pairwise(c["seconds"]))
    assert g0["telemetry"] == {
        "smClockHz": 1_500_000_000,
        "clockEventReasons": ["SwPowerCap"],
    }
    assert g0["drift"] == {"state": "Stable", "timeScale": 1.0, "reason": "", "since": "2026-11-18T11:08:20Z"}
    # Drift scales the published curves and the relative speed.
    assert g1["drift"]["state"] == "Drifted" and g1["drift"]["timeScale"] == 1.25
    assert g1["curves"][0]["seconds"] == pytest.approx(drifted(c["seconds"], 1.25), rel=1e-4)
    assert g1["relativeSpeed"] == pytest.approx(g0["relativeSpeed"] / 1.25, rel=1e-3)
    assert (
        json.loads(body["metadata"]["annotations"][api.ANNOTATION_BASELINE])["GPU-1"]["smClockHz"]
        == 1_500_000_000
    )


def test_body_validates_against_the_crd_schema_fields() -> None:
    """Every field the agent writes is in crds/gpuprofile.yaml (the API server would prune the others)."""
    crd = yaml.safe_load((ROOT / "crds" / "gpuprofile.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    gpu_schema = schema["properties"]["spec"]["properties"]["gpus"]["items"]["properties"]
    body = build_profile("n", "ns", [record(0, scale=1.1)])
    g = body["spec"]["gpus"][0]
    assert set(body["spec"]) <= set(schema["properties"]["spec"]["properties"])
    assert set(g) <= set(gpu_schema), set(g) - set(gpu_schema)
    assert set(g["telemetry"]) <= set(gpu_schema["telemetry"]["properties"])
    assert set(g["drift"]) <= set(gpu_schema["drift"]["properties"])
    assert set(g["curves"][0]) <= set(gpu_schema["curves"]["items"]["properties"])
    assert set(build_status("n", "ns", [])["status"]) <= set(schema["properties"]["status"]["properties"])


def test_same_records_same_bytes() -> None:
    a = json.dumps(build_profile("n", "ns", [record(1), record(0)]), sort_keys=True)
    b = json.dumps(build_profile("n", "ns", [record(0), record(1)]), sort_keys=True)
    assert a == b


def test_gpus_without_curves_are_left_out() -> None:
    empty = GPURecord(info=GPUInfo(index=3, uuid="GPU-3"))
    assert [g["index"] for g in build_profile("n", "ns", [record(0), empty])["spec"]["gpus"]] == [0]


def test_round_trip_resumes_the_same_profile() -> None:
    recs = [record(0), record(1, scale=1.3)]
    body = build_profile("n", "ns", recs, source="simulated")
    back = records_from_profile(body, [r.info for r in recs])
    assert set(back) == {"GPU-0", "GPU-1"}
    assert back["GPU-1"].time_scale == 1.3 and back["GPU-1"].drift_state == "Drifted"
    assert back["GPU-1"].baseline == recs[1].baseline
    again = build_profile("n", "ns", [back["GPU-0"], back["GPU-1"]], source="simulated")
    assert json.dumps(again, sort_keys=True) == json.dumps(body, sort_keys=True)


def test_a_drifted_gpu_publishes_its_floor_slowed_by_the_clock_share_only() -> None:
    """Drift is a clock held down at any load: compute x scale, the memory-bound floor x (1 + 0.3 (scale
    - 1)) as the H100 clock probe measured it (0.07-0.63), not the whole curve x scale as before."""
    seconds = (40e-6, 40e-6, 41e-6, 60e-6, 400e-6, 1600e-6)
    out = drifted(seconds, 1.5)
    assert out[0] == pytest.approx(40e-6 * 1.15)  # floor: 0.3 of the 50 %
    assert out[-1] - out[0] == pytest.approx((1600e-6 - 40e-6) * 1.5)  # above the floor: x1.5
    assert out[-1] < 1600e-6 * 1.5
    assert undrifted(out, 1.5) == pytest.approx(seconds)
    assert drifted(seconds, 1.0) == seconds and undrifted(seconds, 1.0) == seconds


def test_unknown_gpus_and_broken_curves_are_dropped() -> None:
    body = build_profile("n", "ns", [record(0)])
    body["spec"]["gpus"][0]["curves"].append({"hiddenSize": "x"})
    back = records_from_profile(body, [GPUInfo(index=0, uuid="GPU-0"), GPUInfo(index=1, uuid="GPU-new")])
    assert set(back) == {"GPU-0"} and len(back["GPU-0"].curves) == 3
    assert records_from_profile({"spec": {}}, []) == {}


def test_status_holds_conditions_and_the_lease_the_heartbeat() -> None:
    cond = condition("GPUsVisible", False, "GPUCountMismatch", "m", 1_795_000_000.0)
    st_ = build_status("n", "ns", [cond])
    assert st_["status"] == {
        "conditions": [
            {
                "type": "GPUsVisible",
                "status": "False",
                "reason": "GPUCountMismatch",
                "message": "m",
                "lastTransitionTime": "2026-11-18T11:06:40Z",
            }
        ]
    }
    assert "spec" not in st_
    owner = NodeFacts("n", "u-1").owner
    lease = build_lease("n", "ns", 1_795_000_000.25, 30, owner)
    assert lease["apiVersion"] == "coordination.k8s.io/v1" and lease["metadata"]["name"] == "n"
    assert lease["spec"] == {
        "holderIdentity": "vibe-agent/n",
        "leaseDurationSeconds": 30,
        "renewTime": "2026-11-18T11:06:40.250000Z",
    }
    assert lease["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Node", "name": "n", "uid": "u-1"}
    ]


def test_relative_speed_of_the_reference_is_one_and_scales() -> None:
    curves = [Curve(s, TOKEN_GRID, tuple(reference_on_grid(s, TOKEN_GRID))) for s in DEFAULT_MODELS]
    assert relative_speed(curves) == pytest.approx(1.0, abs=1e-3)
    slow = [Curve(c.shape, c.tokens, tuple(x * 1.2 for x in c.seconds)) for c in curves]
    assert relative_speed(slow) == pytest.approx(1 / 1.2, abs=1e-3)
    # A power-capped slow GPU: 1.5x slower in compute, its floor as fast as its peers' (measured). Over
    # the whole grid (half of it floor points) it read 0.94; in the compute region it reads ~1/1.5.
    capped = [Curve(c.shape, c.tokens, tuple(slowed_curve(np.asarray(c.seconds), 1.5, 0.0))) for c in curves]
    assert relative_speed(capped) == pytest.approx(1 / 1.5, rel=0.06)
    odd = [Curve(ExpertShape(1024, 512, "fp8"), (1, 2), (1e-5, 2e-5))]
    assert relative_speed(odd) is not None  # other shapes: against the scaled reference
    assert relative_speed([]) is None


@given(st.lists(st.floats(min_value=1e-6, max_value=1.0), min_size=1, max_size=40))
def test_isotonic_is_monotone_and_least_squares_blocks(values: list[float]) -> None:
    fit = isotonic(values)
    assert len(fit) == len(values)
    assert all(b >= a - 1e-15 for a, b in itertools.pairwise(fit))
    assert sum(fit) == pytest.approx(sum(values), rel=1e-9)  # PAV preserves the total
    if values == sorted(values):
        assert fit == pytest.approx(values)


def test_time_helpers() -> None:
    assert rfc3339(None) is None
    assert parse_time(rfc3339(1_795_000_000.0)) == 1_795_000_000.0
    assert parse_time("garbage") is None and parse_time(None) is None
