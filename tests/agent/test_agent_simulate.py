"""The simulator: the fleet file, SC'22-like speeds, the drift schedule, and telemetry that moves with it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vibe.agent.node import NodeAgent
from vibe.agent.profile import drifted
from vibe.agent.shapes import DEFAULT_MODELS, TOKEN_GRID
from vibe.agent.simulate import (
    SimProfiler,
    SimTelemetry,
    SimulationError,
    load_fleet,
    parse_duration,
    parse_fleet,
    reference_on_grid,
)

ROOT = Path(__file__).resolve().parents[2]


def test_explicit_nodes_and_counts() -> None:
    f = parse_fleet({"nodes": [{"name": "a", "gpus": [1.0, {"speed": 0.9}]}, {"name": "b", "gpus": 3}]})
    assert f.node_names() == ["a", "b"]
    assert [g.speed for g in f.nodes["a"]] == [1.0, 0.9]
    assert [g.speed for g in f.nodes["b"]] == [1.0, 1.0, 1.0]
    uuids = [g.info.uuid for gs in f.nodes.values() for g in gs]
    assert len(set(uuids)) == 5 and all(u.startswith("GPU-") for u in uuids)
    assert parse_fleet({"nodes": [{"name": "a", "gpus": 1}]}).nodes["a"][0].info.uuid == uuids[0]  # stable


@pytest.mark.parametrize(
    "data, message",
    [
        ({}, "no nodes"),
        ({"nodes": [{"gpus": [1]}]}, "needs a name"),
        ({"nodes": [{"name": "a", "gpus": []}]}, "non-empty"),
        ({"nodes": [{"name": "a", "gpus": [0]}]}, "speed must be > 0"),
        ({"nodes": [{"name": "a", "gpus": ["x"]}]}, "must be a number"),
        ({"nodes": [{"name": "a", "gpus": 1}, {"name": "a", "gpus": 1}]}, "duplicate"),
        ({"nodes": [{"name": "a", "gpus": 1}], "drift": [{"node": "z"}]}, "unknown node"),
        ({"nodes": [{"name": "a", "gpus": 1}], "drift": [{"gpu": 4}]}, "no GPU 4"),
        ({"nodes": [{"name": "a", "gpus": 1}], "drift": [{"at": "soon"}]}, "bad duration"),
        ({"nodes": [{"name": "a", "gpus": 1}], "drift": [{"timeScale": 0}]}, "timeScale"),
        ({"floorShare": 2, "nodes": [{"name": "a", "gpus": 1}]}, "floorShare must be in"),
        ({"nodes": [{"name": "a", "gpus": [{"speed": 1, "floorShare": "x"}]}]}, r"gpus\[0\]: floorShare"),
        ({"nodes": [{"name": "a", "gpus": 1}], "drift": [{"floorShare": -1}]}, r"drift\[0\]: floorShare"),
        ({"generate": {"count": 1, "floorShare": 1.5}}, "generate: floorShare"),
        ({"generate": [1]}, "generate: must be a mapping"),
        ({"generate": {"count": 2, "namePattern": "same"}}, "repeats"),
        ([1, 2], "mapping"),
    ],
)
def test_bad_files_say_where(data: object, message: str) -> None:
    with pytest.raises(SimulationError, match=message):
        parse_fleet(data)  # type: ignore[arg-type]


def test_generated_speeds_follow_sc22() -> None:
    f = parse_fleet({"seed": 3, "generate": {"count": 1000, "gpusPerNode": 8, "spread": 0.08, "outliers": 1}})
    assert len(f.nodes) == 1000 and f.node_names()[0] == "sim-node-000"
    speeds = np.array([g.speed for gs in f.nodes.values() for g in gs])
    slow = 1 / speeds
    normal = slow[slow < 1.4]
    assert normal.mean() - 1 == pytest.approx(0.08, abs=0.01)  # 8 % average
    assert normal.max() <= 1.22 + 1e-3  # 22 % max
    assert (slow >= 1.4).sum() == 1  # the outlier, 1.5x the median time
    assert slow.max() == pytest.approx(1.5 * np.median(slow), rel=0.01)
    again = parse_fleet({"seed": 3, "generate": {"count": 1000}})
    assert [g.speed for g in again.nodes["sim-node-007"]] == [g.speed for g in f.nodes["sim-node-007"]]


def test_durations() -> None:
    assert parse_duration(5, "x") == 5.0
    assert parse_duration("30s", "x") == 30.0
    assert parse_duration("2m", "x") == 120.0
    assert parse_duration("1.5h", "x") == 5400.0
    assert parse_duration("250ms", "x") == 0.25


def test_drift_schedule() -> None:
    f = parse_fleet(
        {
            "nodes": [{"name": "a", "gpus": 2}],
            "drift": [
                {"at": "10s", "gpu": 1, "timeScale": 1.25, "reason": "HwSlowdown"},
                {"at": "30s", "gpu": 1, "timeScale": 1.0},
                {"at": "40s", "gpu": 1, "timeScale": 2.0, "for": "5s", "reason": "HwThermalSlowdown"},
            ],
        }
    )
    g = f.nodes["a"][1]
    assert g.drift_at(0) == (1.0, "")
    assert g.drift_at(10) == (1.25, "HwSlowdown")
    assert g.drift_at(29.9) == (1.25, "HwSlowdown")
    assert g.drift_at(30) == (1.0, "")
    assert g.drift_at(42) == (2.0, "HwThermalSlowdown")
    assert g.drift_at(45) == (1.0, "")
    assert f.nodes["a"][0].drift_at(20) == (1.0, "")


def test_telemetry_moves_with_the_drift() -> None:
    now = [0.0]
    f = parse_fleet(
        {
            "nodes": [{"name": "a", "gpus": [0.9]}],
            "drift": [{"at": 10, "timeScale": 1.5, "reason": "HwThermalSlowdown"}],
        }
    )
    tel = SimTelemetry(f.nodes["a"], lambda: now[0])
    before = [tel.sample(0) for _ in range(200)]
    now[0] = 20.0
    after = [tel.sample(0) for _ in range(200)]
    ratio = np.median([s.sm_clock_hz for s in before]) / np.median([s.sm_clock_hz for s in after])
    assert ratio == pytest.approx(1.5, rel=0.03)
    assert "HwThermalSlowdown" in after[0].reasons and "SwPowerCap" in after[0].reasons
    assert "HwThermalSlowdown" not in before[0].reasons
    assert after[-1].thermal_violation_s > 0 and before[-1].thermal_violation_s == 0
    assert np.median([s.sm_clock_hz for s in before]) == pytest.approx(1_515e6 * 0.9, rel=0.02)
    assert all(s.compute_processes == 1 and s.utilization_pct == 100 for s in before)


def two_part(shape: object, tokens: tuple[int, ...], factor: float, floor_factor: float = 1.0) -> np.ndarray:
    """The reference curve at ``tokens``, its floor (smallest time of the whole reference curve) times
    ``floor_factor`` and the rest above it times ``factor``: written out here, not taken from vibe."""
    ref = reference_on_grid(shape, tokens)  # type: ignore[arg-type]
    floor = float(reference_on_grid(shape, TOKEN_GRID).min())
    return floor * floor_factor + (ref - floor) * factor


def test_profiler_curves_slow_the_compute_region_by_speed_and_drift() -> None:
    now = [0.0]
    f = parse_fleet({"nodes": [{"name": "a", "gpus": [0.8]}], "drift": [{"at": 5, "timeScale": 1.25}]})
    prof = SimProfiler(f.nodes["a"], lambda: now[0])
    shape = DEFAULT_MODELS[0]
    out = prof.profile(0, [shape])
    got = np.array(out.curves[0].seconds)
    assert got == pytest.approx(two_part(shape, TOKEN_GRID, 1 / 0.8), rel=0.04)  # 1 % noise
    now[0] = 6
    secs, cost = prof.canary(0, shape, (1, 256, 2048))
    assert np.array(secs) == pytest.approx(two_part(shape, (1, 256, 2048), 1.25 / 0.8), rel=0.04)
    assert cost > 0


def test_a_slow_gpu_keeps_its_floor_and_is_slow_above_it() -> None:
    """A GPU twice as slow (floorShare 0, the default): its floor point as the reference H100's, its
    largest point near twice as slow; floorShare 1 slows the whole curve (the "uniform" model)."""
    shape = DEFAULT_MODELS[0]
    ref = reference_on_grid(shape, TOKEN_GRID)
    assert int(np.argmin(ref)) == 0  # the floor is the 1-token point

    def ratios(fleet: dict[str, object]) -> np.ndarray:
        g = parse_fleet(fleet).nodes["a"]
        out = SimProfiler(g, lambda: 0.0).profile(0, [shape])
        return np.array(out.curves[0].seconds) / ref

    measured = ratios({"nodes": [{"name": "a", "gpus": [0.5]}]})
    assert measured[0] == pytest.approx(1.0, abs=0.04)  # the floor: unchanged
    assert measured[-1] == pytest.approx(1 + (ref[-1] - ref[0]) / ref[-1], rel=0.04)  # compute: 2x
    assert measured[-1] > 1.9
    for uniform in (
        {"floorShare": 1, "nodes": [{"name": "a", "gpus": [0.5]}]},
        {"nodes": [{"name": "a", "gpus": [{"speed": 0.5, "floorShare": 1}]}]},
    ):
        assert ratios(uniform) == pytest.approx(np.full(len(TOKEN_GRID), 2.0), rel=0.04)
    half = ratios({"nodes": [{"name": "a", "gpus": [{"speed": 0.5, "floorShare": 0.5}]}]})
    assert half[0] == pytest.approx(1.5, rel=0.04)


def test_drift_slows_the_compute_region_and_its_floor_share_of_the_floor() -> None:
    now = [0.0]
    f = parse_fleet(
        {
            "nodes": [{"name": "a", "gpus": 2}],
            "drift": [
                {"at": 1, "gpu": 0, "timeScale": 1.5},
                {"at": 1, "gpu": 1, "timeScale": 1.5, "floorShare": 1, "reason": "HwThermalSlowdown"},
            ],
        }
    )
    prof = SimProfiler(f.nodes["a"], lambda: now[0])
    shape, tokens = DEFAULT_MODELS[0], (1, 8192)
    now[0] = 2
    power, heat = (np.array(prof.canary(i, shape, tokens)[0]) for i in (0, 1))
    assert power == pytest.approx(two_part(shape, tokens, 1.5), rel=0.04)
    assert power[0] == pytest.approx(reference_on_grid(shape, (1,))[0], rel=0.04)
    assert heat == pytest.approx(reference_on_grid(shape, tokens) * 1.5, rel=0.04)
    # the clock falls by the time scale either way (one clock per GPU: the serving clock at the cap)
    tel = SimTelemetry(f.nodes["a"], lambda: now[0])
    ratio = np.median([tel.sample(1).sm_clock_hz for _ in range(100)]) / np.median(
        [tel.sample(0).sm_clock_hz for _ in range(100)]
    )
    assert ratio == pytest.approx(1.0, rel=0.02)


def test_floor_share_in_the_file() -> None:
    f = parse_fleet(
        {
            "floorShare": 0.25,
            "nodes": [{"name": "a", "gpus": [1.0, {"speed": 0.9, "floorShare": 1}]}],
            "generate": {"count": 1, "gpusPerNode": 2, "floorShare": 0.5},
            "drift": [
                {"at": 1, "timeScale": 1.2},
                {"at": 1, "node": "sim-node-000", "timeScale": 1.2, "floorShare": 0},
            ],
        }
    )
    assert [g.floor_share for g in f.nodes["a"]] == [0.25, 1.0]
    assert [g.floor_share for g in f.nodes["sim-node-000"]] == [0.5, 0.5]
    assert f.nodes["a"][0].steps[0].floor_share == 0.25
    assert f.nodes["sim-node-000"][0].steps[0].floor_share == 0.0
    plain = parse_fleet({"nodes": [{"name": "a", "gpus": 1}], "drift": [{"timeScale": 2}]}).nodes["a"][0]
    assert plain.floor_share == 0.0 and plain.steps[0].floor_share == 0.0  # the measured default


def test_a_simulated_node_catches_its_scheduled_drift_and_recovers() -> None:
    now = [0.0]
    f = parse_fleet(
        {
            "nodes": [{"name": "n", "gpus": [1.0, 0.95, 0.97, 1.0]}],
            "drift": [{"at": "30s", "gpu": 3, "timeScale": 1.25, "reason": "HwSlowdown", "for": "60s"}],
        }
    )
    gpus = f.nodes["n"]
    clock = lambda: now[0]  # noqa: E731
    agent = NodeAgent("n", SimTelemetry(gpus, clock), SimProfiler(gpus, clock), clock=clock)
    timeline = []
    for t in range(150):
        now[0] = float(t)
        agent.step()
        timeline += [(t, e.reason) for e in agent.events if e.reason.startswith("GPU")]
        agent.events.clear()
    drifted = [t for t, r in timeline if r == "GPUDrifted"]
    cleared = [t for t, r in timeline if r == "GPUDriftCleared"]
    assert len(drifted) == 1 and 30 <= drifted[0] <= 34, timeline
    assert len(cleared) == 1 and 90 <= cleared[0] <= 110, timeline
    assert all(r.drift_state == "Stable" for r in agent.records.values())
    assert agent.counters[3].drift_events == 1 and agent.counters[3].clears == 1


def test_published_profile_scales_on_drift() -> None:
    now = [0.0]
    f = parse_fleet({"nodes": [{"name": "n", "gpus": 2}], "drift": [{"at": 5, "gpu": 1, "timeScale": 1.25}]})
    gpus = f.nodes["n"]
    clock = lambda: now[0]  # noqa: E731
    agent = NodeAgent("n", SimTelemetry(gpus, clock), SimProfiler(gpus, clock), clock=clock)
    agent.step()
    first = agent.body()
    for t in range(1, 20):
        now[0] = t
        agent.step()
    body = agent.body()
    assert body["spec"]["source"] == "simulated"
    g1_before, g1 = first["spec"]["gpus"][1], body["spec"]["gpus"][1]
    assert g1["drift"]["state"] == "Drifted"
    assert g1["drift"]["timeScale"] == pytest.approx(1.25, abs=0.04)
    # the compute region x timeScale, the floor by the clock share of it (vibe.agent.profile.drifted)
    want = drifted(g1_before["curves"][0]["seconds"], g1["drift"]["timeScale"])
    assert g1["curves"][0]["seconds"] == pytest.approx(want, rel=2e-3)
    assert "SM clock" in g1["drift"]["reason"]
    assert body["spec"]["gpus"][0] == first["spec"]["gpus"][0]  # the healthy GPU did not move


def test_example_fleet_files_load(tmp_path: Path) -> None:
    for path in sorted((ROOT / "examples" / "agent").glob("*.yaml")):
        fleet = load_fleet(path)
        assert fleet.nodes, path
    data = {"nodes": [{"name": "j", "gpus": [1.0]}]}
    p = tmp_path / "fleet.json"
    p.write_text(json.dumps(data))
    assert load_fleet(p).node_names() == ["j"]


def test_load_fleet_seed_override_and_bad_files(tmp_path: Path) -> None:
    p = tmp_path / "gen.yaml"
    p.write_text("seed: 1\ngenerate: {count: 4, gpusPerNode: 8, spread: 0.08}\n")

    def speeds(fleet: object) -> list[float]:
        return [g.speed for gs in fleet.nodes.values() for g in gs]  # type: ignore[attr-defined]

    assert speeds(load_fleet(p, seed=1)) == speeds(load_fleet(p))
    assert speeds(load_fleet(p, seed=2)) != speeds(load_fleet(p))
    assert speeds(load_fleet(p, seed=2)) == speeds(
        parse_fleet({"seed": 2, "generate": {"count": 4, "gpusPerNode": 8, "spread": 0.08}})
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes: [\n")
    with pytest.raises(SimulationError, match="not valid YAML"):
        load_fleet(bad)
    (tmp_path / "bad.json").write_text("{nodes")
    with pytest.raises(SimulationError, match="not valid JSON"):
        load_fleet(tmp_path / "bad.json")
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(SimulationError, match="no nodes"):
        load_fleet(tmp_path / "empty.yaml", seed=3)
