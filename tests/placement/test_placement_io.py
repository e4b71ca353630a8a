"""Reading loads / fleets / placements, and the vibe, SGLang and EPLB formats' shapes and bytes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from placement_helpers import h100_fleet4, instances

from vibe.engines import ENGINES
from vibe.placement import (
    PlacementError,
    read_fleet,
    read_loads,
    read_placement,
    reference_curve,
    solve,
)

# ---------------------------------------------------------------- loads


def test_our_json_and_a_bare_array():
    np.testing.assert_array_equal(read_loads({"loads": [[1, 2], [3, 4]]}), [[1, 2], [3, 4]])
    np.testing.assert_array_equal(read_loads([[1, 2]]), [[1, 2]])


def test_sglang_recorder_steps_are_averaged():
    steps = [[[2, 0], [4, 4]], [[4, 2], [0, 4]]]  # [steps][layers][experts]
    np.testing.assert_array_equal(read_loads({"logical_count": steps}), [[3, 1], [2, 4]])
    np.testing.assert_array_equal(read_loads({"logical_count": [[10, 20]], "num_steps": 10}), [[1, 2]])


def test_relative_frequencies_rescaled_to_a_batch():
    got = read_loads({"loads": [[1, 3], [2, 2]]}, tokens_per_step=100, top_k=2)
    np.testing.assert_allclose(got, [[50, 150], [100, 100]])
    got = read_loads({"loads": [[1, 3]], "topK": 2}, tokens_per_step=100)
    np.testing.assert_allclose(got, [[50, 150]])


@pytest.mark.parametrize(
    ("obj", "kwargs", "words"),
    [
        ({"nope": 1}, {}, "'loads' or 'logical_count'"),
        ({"loads": [[1, 2], [3]]}, {}, "rectangular"),
        ({"loads": [[1, float("nan")]]}, {}, "NaN"),
        ({"loads": [[1, -1]]}, {}, "negative"),
        ({"loads": [1, 2]}, {}, "[layers][experts]"),
        ({"loads": [[1, 2]]}, {"tokens_per_step": 10}, "--top-k"),
        ({"loads": [[0, 0]]}, {"tokens_per_step": 10, "top_k": 1}, "no load"),
        ({"loads": [[1, 2]], "num_steps": 0}, {}, "num_steps"),
        ("text", {}, "JSON object"),
        ({"loads": [["1", "2"]]}, {}, "array of numbers"),
        ({"loads": [[True, False]]}, {}, "array of numbers"),
        ({"loads": [[1, None]]}, {}, "array of numbers"),
    ],
)
def test_bad_loads(obj, kwargs, words):
    with pytest.raises(PlacementError) as e:
        read_loads(obj, **kwargs)
    assert e.value.reason == "InvalidLoads"
    assert words in str(e.value)


# ---------------------------------------------------------------- fleets


def test_fleet_forms():
    t, s = reference_curve()
    fleet = read_fleet(
        {
            "reference": {"hiddenSize": 7168, "intermediateSize": 2048},
            "gpus": [
                {"id": "a/0", "node": "a", "tokens": t.tolist(), "seconds": s.tolist(), "uuid": "GPU-1"},
                {"id": "a/1", "node": "a", "timeScale": 1.5},
                {"id": "a/2", "node": "a", "roofline": {"floorSeconds": 4e-5, "secondsPerToken": 1.4e-7}},
                {"id": "a/3", "node": "a", "timeScale": 1.5, "floorShare": 0},
            ],
        }
    )
    assert fleet.ids == ["a/0", "a/1", "a/2", "a/3"]
    # a power-capped GPU: the floor as the reference's, the compute above it x1.5
    assert fleet.gpus[3].seconds[0] == pytest.approx(s.min())
    np.testing.assert_allclose(fleet.gpus[3].seconds - s.min(), (s - s.min()) * 1.5)
    assert fleet.gpus[0].uuid == "GPU-1"
    np.testing.assert_allclose(fleet.gpus[1].seconds, s * 1.5)
    assert fleet.gpus[2].seconds[0] == pytest.approx(4e-5, rel=1e-3)


@pytest.mark.parametrize(
    ("obj", "reason", "words"),
    [
        ({}, "InvalidFleet", "'gpus' list"),
        ({"gpus": []}, "InvalidFleet", "no GPUs"),
        ({"gpus": [{"node": "a"}]}, "InvalidFleet", "string 'id'"),
        ({"gpus": [{"id": "a/0"}]}, "InvalidCurve", "has no curve"),
        ({"gpus": [{"id": "a/0", "tokens": [1, 2], "seconds": [2, 1]}]}, "InvalidCurve", "not monotone"),
        ({"gpus": [{"id": "a/0", "tokens": [], "seconds": []}]}, "InvalidCurve", "empty"),
        ({"gpus": [{"id": "a/0", "tokens": [1, 2]}]}, "InvalidCurve", "both"),
        ({"gpus": [{"id": "a/0", "roofline": {"floorSeconds": 1}}]}, "InvalidCurve", "roofline"),
        (
            {"gpus": [{"id": "a/0", "roofline": {"floorSeconds": 4e-5, "secondsPerToken": 0}}]},
            "InvalidCurve",
            "GPU 'a/0': roofline floorSeconds and secondsPerToken must be > 0",
        ),
        (
            {"gpus": [{"id": "a/0", "reference": {"hiddenSize": 0, "intermediateSize": 2048}}]},
            "InvalidCurve",
            "GPU 'a/0': hidden and intermediate sizes must be positive",
        ),
        (
            {
                "gpus": [
                    {"id": "a/0", "reference": {"hiddenSize": 7168, "intermediateSize": 2048, "dtype": "x"}}
                ]
            },
            "InvalidCurve",
            "GPU 'a/0': unknown dtype 'x'",
        ),
        (
            {"gpus": [{"id": "a/0", "tokens": [1, 2], "seconds": ["1", "2"]}]},
            "InvalidCurve",
            "list of numbers",
        ),
        (
            {"gpus": [{"id": "a/0", "tokens": [1, 2], "seconds": [1, 2], "timeScale": -1}]},
            "InvalidCurve",
            "timeScale",
        ),
        (
            {"gpus": [{"id": "a/0", "tokens": [1, 2], "seconds": [1, 2], "floorShare": 2}]},
            "InvalidCurve",
            "floorShare must be a number in [0, 1]",
        ),
    ],
)
def test_bad_fleets(obj, reason, words):
    with pytest.raises(PlacementError) as e:
        read_fleet(obj)
    assert e.value.reason == reason
    assert words in str(e.value)


# ---------------------------------------------------------------- outputs


@settings(max_examples=40, deadline=None)
@given(instances())
def test_formats_shapes_and_round_trips(inst):
    loads, fleet, s = inst
    layers, e = loads.shape
    p = len(fleet) * s
    base = solve(loads, fleet, s, "token-balanced")
    r = solve(loads, fleet, s, "vibe")
    doc = json.loads(ENGINES["vibe"].write(r, fleet, base))
    assert doc["numPhysicalExperts"] == p and doc["slotsPerGPU"] == s and doc["numGPUs"] == len(fleet)
    assert [g["id"] for g in doc["gpus"]] == fleet.ids
    assert len(doc["layers"]) == layers
    for layer, d in enumerate(doc["layers"]):
        assert d["physicalToLogical"] == r.placement.phy2log[layer].tolist()
        assert len(d["logicalToPhysical"]) == e and sum(d["logicalCount"]) == p
        for x, slots in enumerate(d["logicalToPhysical"]):
            assert len(slots) == d["logicalCount"][x] and all(d["physicalToLogical"][q] == x for q in slots)
        assert len(d["gpuSeconds"]) == len(fleet)
    assert doc["predicted"]["lowerBoundSeconds"] <= doc["predicted"]["stepTimeSeconds"]
    assert doc["baseline"]["policy"] == "token-balanced"

    sg = json.loads(ENGINES["sglang"].write(r, fleet, None))
    assert list(sg) == ["physical_to_logical_map"]  # SGLang passes keys as kwargs: nothing else allowed
    assert np.array(sg["physical_to_logical_map"]).shape == (layers, p)

    ep = json.loads(ENGINES["eplb"].write(r, fleet, None))
    assert np.array(ep["phy2log"]).shape == (layers, p)
    assert np.array(ep["log2phy"]).shape == (layers, e, p - e + 1)
    assert np.array(ep["logcnt"]).shape == (layers, e)
    assert (np.array(ep["log2phy"]) >= -1).all()

    for obj, kw in (
        (doc, {}),
        (sg, {"slots_per_gpu": s, "num_experts": e}),
        (ep, {"slots_per_gpu": s, "num_experts": e}),
    ):
        back = read_placement(obj, **kw)
        np.testing.assert_array_equal(back.phy2log, r.placement.phy2log)


def test_bytes_are_canonical():
    loads = np.array([[5.0, 100.0, 30.0, 7.0]])
    fleet = h100_fleet4()
    data = ENGINES["vibe"].write(solve(loads, fleet, 2), fleet, None)
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert json.dumps(json.loads(data), sort_keys=True, separators=(",", ":")).encode() + b"\n" == data
    assert b"solve" not in data and b'Time"' not in data  # no timings, no timestamps


def test_read_placement_errors():
    with pytest.raises(PlacementError, match="slots per GPU"):
        read_placement({"physical_to_logical_map": [[0, 1]]})
    with pytest.raises(PlacementError, match="unknown placement file"):
        read_placement({"foo": 1})


def test_every_format_is_deterministic_to_the_byte():
    """Same inputs, fresh objects: the same bytes from every policy (incremental included) in every format."""
    from vibe.placement import replace_incremental
    from vibe.placement.synthetic import h100_fleet, skewed_loads

    def outputs() -> list[bytes]:
        loads = skewed_loads(4, 64, mean_tokens=300, seed=4)
        fleet = h100_fleet(8, spread=0.08, outliers=1, seed=5)
        results = [solve(loads, fleet, 9, p) for p in ("round-robin", "linear", "token-balanced", "vibe")]
        drifted = np.round(0.7 * loads + 0.3 * skewed_loads(4, 64, mean_tokens=300, seed=6))
        results.append(replace_incremental(results[-1].placement, drifted, fleet))
        results.append(replace_incremental(results[-2].placement, drifted, fleet, max_moves=12))
        out = []
        for r in results:
            out += [engine.write(r, fleet, results[2]) for engine in ENGINES.values()]
        return out

    first, second = outputs(), outputs()
    assert len(first) == 6 * len(ENGINES) and first == second
