"""The Prometheus exporter: its output parses, names and labels follow the conventions, values match."""

from __future__ import annotations

import urllib.request

import pytest
from fakes import FakeNvml
from prometheus_client.parser import text_string_to_metric_families

from vibe.agent.exporter import GPU_LABELS, AgentCollector, render, serve
from vibe.agent.node import NodeAgent
from vibe.agent.profile import drifted
from vibe.agent.simulate import SimProfiler, SimTelemetry, parse_fleet
from vibe.agent.telemetry import NvmlTelemetry


def sim_agent(drift: list | None = None) -> tuple[NodeAgent, list[float]]:
    now = [0.0]
    # floorShare 1: GPU 1 is 0.9x at every point of its curves, so its relative speed reads 0.9 (with the
    # default 0 its floor-bound points run as the reference's and the median point reads ~0.99)
    fleet = parse_fleet(
        {"floorShare": 1, "nodes": [{"name": "node-a", "gpus": [1.0, 0.9]}], "drift": drift or []}
    )
    gpus = fleet.nodes["node-a"]
    agent = NodeAgent(
        "node-a", SimTelemetry(gpus, lambda: now[0]), SimProfiler(gpus, lambda: now[0]), clock=lambda: now[0]
    )
    return agent, now


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_output_parses_and_follows_conventions() -> None:
    agent, _ = sim_agent()
    agent.step()
    fams = families(render(AgentCollector(lambda: [agent], version="9.9")))
    assert all(name.startswith("vibe_") for name in fams)
    counters = {n for n, f in fams.items() if f.type == "counter"}
    assert counters == {
        "vibe_gpu_drift_events",
        "vibe_gpu_throttle_seconds",
        "vibe_gpu_ecc_errors",
        "vibe_gpu_xid_errors",
        "vibe_gpu_canary_seconds",
        "vibe_gpu_canaries",
    }
    for name in counters:  # counters are exposed with _total
        assert all(s.name == f"{name}_total" for s in fams[name].samples if not s.name.endswith("_created"))
    for unit in ("hertz", "watts", "celsius", "seconds"):
        assert any(n.endswith(unit) for n in fams), unit
    info = fams["vibe_agent_info"].samples[0]
    assert info.labels == {"version": "9.9", "node": "node-a", "source": "simulated"}


def test_per_gpu_labels_join_with_dcgm() -> None:
    agent, _ = sim_agent()
    agent.step()
    fams = families(render(AgentCollector(lambda: [agent])))
    speed = fams["vibe_gpu_relative_speed"].samples
    assert len(speed) == 2
    for s in speed:
        assert set(GPU_LABELS) <= set(s.labels)
        assert s.labels["modelName"] == "NVIDIA H100 80GB HBM3"
        assert s.labels["UUID"].startswith("GPU-")
        assert s.labels["source"] == "simulated" and s.labels["node"] == "node-a"
    by_gpu = {s.labels["gpu"]: s.value for s in speed}
    assert by_gpu["0"] == pytest.approx(1.0, abs=0.03) and by_gpu["1"] == pytest.approx(0.9, abs=0.03)


def test_values_match_the_agent_state() -> None:
    agent, now = sim_agent(drift=[{"at": 5, "gpu": 1, "timeScale": 1.5, "reason": "HwSlowdown"}])
    for t in range(20):
        now[0] = t
        agent.step()
    fams = families(render(AgentCollector(lambda: [agent], curves=True, telemetry=True)))

    def value(name: str, gpu: str, **extra: str) -> float:
        for s in fams[name.removesuffix("_total")].samples:
            if (
                s.name == name
                and s.labels["gpu"] == gpu
                and all(s.labels.get(k) == v for k, v in extra.items())
            ):
                return s.value
        raise KeyError((name, gpu, extra))

    assert value("vibe_gpu_drifted", "1") == 1 and value("vibe_gpu_drifted", "0") == 0
    assert value("vibe_gpu_drift_time_scale", "1") == pytest.approx(1.5, abs=0.05)
    assert value("vibe_gpu_drift_events_total", "1", state="Drifted") == 1
    assert value("vibe_gpu_clock_event_reason", "1", reason="HwSlowdown") == 1
    assert value("vibe_gpu_clock_event_reason", "0", reason="HwSlowdown") == 0
    rec = agent.records[1]
    assert value("vibe_gpu_sm_clock_hertz", "1") == agent.last[1].sm_clock_hz
    assert value("vibe_gpu_power_limit_watts", "1") == 700.0
    assert value("vibe_gpu_throttle_seconds_total", "1", cause="power") > 0
    assert value("vibe_gpu_last_benchmark_timestamp_seconds", "1") == rec.benchmark_time
    curve = rec.curves[0]
    got = value(
        "vibe_gpu_expert_ffn_seconds",
        "1",
        hidden_size=str(curve.shape.hidden_size),
        dtype=curve.shape.dtype,
        tokens=str(curve.tokens[-1]),
    )
    assert got == pytest.approx(drifted(curve.seconds, rec.time_scale)[-1])  # as the GPUProfile publishes it


def test_curves_are_off_by_default() -> None:
    agent, _ = sim_agent()
    agent.step()
    fams = families(render(AgentCollector(lambda: [agent])))
    assert not fams["vibe_gpu_expert_ffn_seconds"].samples
    assert fams["vibe_gpu_relative_speed"].samples


def test_measured_source_and_missing_fields() -> None:
    """A real-mode agent with NVML (faked) and no curves yet still exports telemetry, labelled measured."""

    class NoProfiler:
        non_intrusive = False
        source = "measured"

    fake = FakeNvml(gpus=1, unsupported=frozenset({"ecc"}))
    fake.pids[0] = [123456789]  # someone else serves: no benchmark
    agent = NodeAgent("gpu-1", NvmlTelemetry.open(lib=fake), NoProfiler())
    agent.step()
    fams = families(render(AgentCollector(lambda: [agent], telemetry=True)))
    assert fams["vibe_gpu_sm_clock_hertz"].samples[0].labels["source"] == "measured"
    assert fams["vibe_gpu_compute_processes"].samples[0].value == 1
    assert not fams["vibe_gpu_ecc_errors"].samples  # unsupported: absent, not zero
    assert not fams["vibe_gpu_relative_speed"].samples  # not benchmarked yet


def test_http_endpoint() -> None:
    agent, _ = sim_agent()
    agent.step()
    server = serve(AgentCollector(lambda: [agent]), 0, "127.0.0.1")
    try:
        port = server.server_address[1]
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        server.shutdown()
    assert "vibe_gpu_relative_speed" in families(body)


#: Series per GPU of each exporter setting: the numbers docs/operations.md ("Agent metrics") documents.
SERIES_PER_GPU = {
    "default": ({}, 26),
    "--curve-metrics": ({"curves": True}, 110),
    "--telemetry-metrics": ({"telemetry": True}, 31),
    "--curve-metrics --telemetry-metrics": ({"curves": True, "telemetry": True}, 115),
}


@pytest.mark.parametrize("setting", list(SERIES_PER_GPU))
def test_series_per_gpu_of_each_setting(setting: str) -> None:
    """Counted on a node of 4 GPUs with the default 6 shapes; the per-node series are counted apart."""
    kwargs, per_gpu = SERIES_PER_GPU[setting]
    fleet = parse_fleet({"nodes": [{"name": "n", "gpus": 4}], "seed": 1})
    now = [0.0]
    gpus = fleet.nodes["n"]
    agent = NodeAgent("n", SimTelemetry(gpus, lambda: now[0]), SimProfiler(gpus, lambda: now[0]))
    agent.step()
    fams = families(render(AgentCollector(lambda: [agent], **kwargs)))
    by_gpu: dict[str, int] = {}
    per_node = 0
    for f in fams.values():
        for s in f.samples:
            if "UUID" in s.labels:
                by_gpu[s.labels["UUID"]] = by_gpu.get(s.labels["UUID"], 0) + 1
            else:
                per_node += 1
    assert sorted(by_gpu.values()) == [per_gpu] * 4, by_gpu
    assert per_node <= 4  # vibe_agent_info, vibe_agent_telemetry_available, the GPU visibility gauges
    assert bool(fams["vibe_gpu_expert_ffn_seconds"].samples) is bool(kwargs.get("curves"))


#: dcgm-exporter's default counters (its etc/default-counters.csv, the uncommented lines), by the
#: metric name it exports: what the agent must not duplicate unless asked to.
DCGM_DEFAULT_COUNTERS = {
    "DCGM_FI_DEV_SM_CLOCK",
    "DCGM_FI_DEV_MEM_CLOCK",
    "DCGM_FI_DEV_MEMORY_TEMP",
    "DCGM_FI_DEV_GPU_TEMP",
    "DCGM_FI_DEV_POWER_USAGE",
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
    "DCGM_FI_DEV_PCIE_TX_THROUGHPUT",
    "DCGM_FI_DEV_PCIE_RX_THROUGHPUT",
    "DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_MEM_COPY_UTIL",
    "DCGM_FI_DEV_ENC_UTIL",
    "DCGM_FI_DEV_DEC_UTIL",
    "DCGM_FI_DEV_XID_ERRORS",
    "DCGM_FI_DEV_FB_FREE",
    "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL",
    "DCGM_FI_DEV_VGPU_LICENSE_STATUS",
    "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
    "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
    "DCGM_FI_DEV_ROW_REMAP_FAILURE",
}


def test_no_dcgm_exporter_duplicates_by_default() -> None:
    """The five series that copy dcgm-exporter's defaults are exported only when asked for (5 per GPU)."""
    from vibe.agent.exporter import DCGM_DUPLICATES

    assert set(DCGM_DUPLICATES.values()) <= DCGM_DEFAULT_COUNTERS
    agent, _ = sim_agent()
    agent.step()
    default = families(render(AgentCollector(lambda: [agent])))
    asked = families(render(AgentCollector(lambda: [agent], telemetry=True)))
    for name in DCGM_DUPLICATES:
        assert not default[name].samples, name
        assert asked[name].samples, name
    # Not among dcgm-exporter's defaults (its violation and ECC lines are commented out): kept.
    for name in ("vibe_gpu_throttle_seconds", "vibe_gpu_power_limit_watts", "vibe_gpu_sm_clock_max_hertz"):
        assert default[name].samples, name
