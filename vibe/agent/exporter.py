"""Prometheus metrics of the agent: per-GPU speed, curves, clocks, power, throttling and drift.

Role in the data flow: the SRE's view of what the agent publishes in GPUProfiles, scraped from
``/metrics``. A custom collector renders the node agents' current state at scrape time (no shadow copies
to keep in sync, and one process simulating 1,000 nodes costs nothing between scrapes).

Conventions: ``vibe_`` prefix, base units (seconds, hertz, watts, celsius), ``_total`` for counters.
Per-GPU series carry the labels that join with dcgm-exporter (``UUID``, ``gpu``, ``modelName``), plus
``node`` and ``source`` (measured | simulated), so ``vibe_gpu_relative_speed * on (UUID) group_left
DCGM_FI_DEV_SM_CLOCK`` works.

Series per GPU (counted by tests/agent/test_exporter.py, documented in docs/operations.md): the default
exports what only vibe knows (speed, drift, benchmarks, canaries, clock-event reasons, processes, XIDs)
and the NVML telemetry dcgm-exporter does not export by default (maximum SM clock, power limit, throttle
time, ECC). The five series that duplicate dcgm-exporter's default counters (``DCGM_DUPLICATES``: SM
and memory clock, GPU temperature, power draw, utilisation) are opt-in (``telemetry=True``, the agent's
``--telemetry-metrics``, the chart's ``agent.metrics.telemetry``): dcgm-exporter runs on GPU nodes of
every GPU Operator install, and two copies of a series cost Prometheus twice for nothing.
``vibe_gpu_expert_ffn_seconds`` (``curves=True``) adds one series per (GPU, shape, token count): 6 shapes
x 14 points = 84 per GPU, the same numbers as the GPUProfile, so it is off by default.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from vibe.agent.node import NodeAgent
from vibe.agent.profile import GPURecord, drifted
from vibe.agent.telemetry import REASON_NAMES, GPUInfo, Sample

if TYPE_CHECKING:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

GPU_LABELS = ["UUID", "gpu", "modelName", "node", "source"]

#: vibe's series that dcgm-exporter's default counters (its ``etc/default-counters.csv``) already
#: export, with the DCGM field of each: exported only with ``telemetry=True``.
DCGM_DUPLICATES = {
    "vibe_gpu_sm_clock_hertz": "DCGM_FI_DEV_SM_CLOCK",
    "vibe_gpu_memory_clock_hertz": "DCGM_FI_DEV_MEM_CLOCK",
    "vibe_gpu_temperature_celsius": "DCGM_FI_DEV_GPU_TEMP",
    "vibe_gpu_power_watts": "DCGM_FI_DEV_POWER_USAGE",
    "vibe_gpu_utilization_ratio": "DCGM_FI_DEV_GPU_UTIL",
}


class AgentCollector:
    """A prometheus-client collector over node agents (``agents`` is called at every scrape)."""

    def __init__(
        self,
        agents: Callable[[], Iterable[NodeAgent]],
        *,
        curves: bool = False,
        telemetry: bool = False,
        version: str = "",
    ) -> None:
        self.agents = agents
        self.curves = curves
        self.telemetry = telemetry
        self.version = version

    def describe(self) -> list[Any]:
        return []  # unchecked collector: families are produced at scrape time

    def collect(self) -> Iterator[Any]:
        f = _Families.new()
        for agent in self.agents():
            self._add_node(f, agent)
            for i, rec in list(agent.records.items()):
                self._add_gpu(f, agent, i, rec)
        yield from f.in_order()

    def _add_node(self, f: _Families, agent: NodeAgent) -> None:
        """The node's own series: the agent's info, NVML working, GPUs seen and expected."""
        f.info.add_metric([self.version, agent.node, agent.source], 1)
        f.nvml.add_metric([agent.node], 1 if agent.telemetry.available else 0)
        f.visible.add_metric([agent.node], len(agent.infos))
        if agent.expected_gpus is not None:
            f.expected.add_metric([agent.node], agent.expected_gpus)

    def _add_gpu(self, f: _Families, agent: NodeAgent, i: int, rec: GPURecord) -> None:
        """One GPU's series: what the agent decided (speed, drift, curves, benchmarks, canaries), then
        its latest telemetry sample."""
        g = rec.info
        lab = [g.uuid, str(g.index), g.product, agent.node, agent.source]
        c = agent.counters[i]
        if rec.relative_speed is not None:
            f.speed.add_metric(lab, rec.relative_speed)
        if rec.curves:
            f.scale.add_metric(lab, rec.time_scale)
            f.drifted.add_metric(lab, 1 if rec.drift_state == "Drifted" else 0)
        f.drift_events.add_metric([*lab, "Drifted"], c.drift_events)
        f.drift_events.add_metric([*lab, "Stable"], c.clears)
        if self.curves:
            for cv in rec.curves:
                sh = cv.shape
                base = [*lab, sh.name, str(sh.hidden_size), str(sh.intermediate_size), sh.dtype]
                for n, s in zip(cv.tokens, drifted(cv.seconds, rec.time_scale), strict=True):
                    f.ffn.add_metric([*base, str(n)], s)
        if rec.benchmark_time is not None:
            f.bench_ts.add_metric(lab, rec.benchmark_time)
        if c.benchmark_duration_s is not None:
            f.bench_s.add_metric(lab, c.benchmark_duration_s)
        f.canary.add_metric(lab, c.canary_seconds_total)
        f.canaries.add_metric(lab, c.canaries)
        f.xid.add_metric(lab, c.xids)
        sample = agent.last.get(i)
        if sample is not None:
            self._add_sample(f, lab, g, sample)

    def _add_sample(self, f: _Families, lab: list[str], g: GPUInfo, sample: Sample) -> None:
        """A GPU's telemetry: what dcgm-exporter does not export by default, then (``telemetry``) what
        it does (``DCGM_DUPLICATES``)."""
        _opt(f.procs, lab, sample.compute_processes)
        if sample.clock_event_reasons is not None:
            active = set(sample.reasons)
            for r in REASON_NAMES:
                f.reasons.add_metric([*lab, r], 1 if r in active else 0)
        _opt(f.sm_max, lab, g.max_sm_clock_hz)
        _opt(f.limit, lab, sample.power_limit_w)
        if sample.power_violation_s is not None:
            f.throttle.add_metric([*lab, "power"], sample.power_violation_s)
        if sample.thermal_violation_s is not None:
            f.throttle.add_metric([*lab, "thermal"], sample.thermal_violation_s)
        if sample.ecc_uncorrected is not None:
            f.ecc.add_metric([*lab, "uncorrected"], sample.ecc_uncorrected)
        if sample.ecc_corrected is not None:
            f.ecc.add_metric([*lab, "corrected"], sample.ecc_corrected)
        if not self.telemetry:
            return  # DCGM_DUPLICATES: dcgm-exporter's default counters have them
        _opt(f.sm, lab, sample.sm_clock_hz)
        _opt(f.mem, lab, sample.mem_clock_hz)
        _opt(f.power, lab, sample.power_w)
        _opt(f.temp, lab, sample.temperature_c)
        _opt(f.util, lab, None if sample.utilization_pct is None else sample.utilization_pct / 100.0)


@dataclass
class _Families:
    """The metric families of one scrape, in the order they are exposed (the fields' order)."""

    info: GaugeMetricFamily
    nvml: GaugeMetricFamily
    visible: GaugeMetricFamily
    expected: GaugeMetricFamily
    speed: GaugeMetricFamily
    scale: GaugeMetricFamily
    drifted: GaugeMetricFamily
    drift_events: CounterMetricFamily
    ffn: GaugeMetricFamily
    sm: GaugeMetricFamily
    sm_max: GaugeMetricFamily
    mem: GaugeMetricFamily
    power: GaugeMetricFamily
    limit: GaugeMetricFamily
    temp: GaugeMetricFamily
    util: GaugeMetricFamily
    reasons: GaugeMetricFamily
    throttle: CounterMetricFamily
    ecc: CounterMetricFamily
    xid: CounterMetricFamily
    procs: GaugeMetricFamily
    bench_ts: GaugeMetricFamily
    bench_s: GaugeMetricFamily
    canary: CounterMetricFamily
    canaries: CounterMetricFamily

    def in_order(self) -> list[GaugeMetricFamily | CounterMetricFamily]:
        return [getattr(self, x.name) for x in fields(self)]

    @classmethod
    def new(cls) -> _Families:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        def gauge(name: str, doc: str, extra: tuple[str, ...] = (), unit: str = "") -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=[*GPU_LABELS, *extra], unit=unit)

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, labels=[*GPU_LABELS, *extra])

        return cls(
            info=GaugeMetricFamily(
                "vibe_agent_info",
                "The agent (value 1): version, node, source",
                labels=["version", "node", "source"],
            ),
            nvml=GaugeMetricFamily(
                "vibe_agent_telemetry_available", "1 when GPU telemetry (NVML) works", labels=["node"]
            ),
            visible=GaugeMetricFamily(
                "vibe_agent_gpus_visible", "GPUs the agent sees through NVML", labels=["node"]
            ),
            expected=GaugeMetricFamily(
                "vibe_agent_gpus_expected",
                "GPUs the node says it has (GFD nvidia.com/gpu.count, else the nvidia.com/gpu capacity)",
                labels=["node"],
            ),
            speed=gauge(
                "vibe_gpu_relative_speed",
                "Reference H100 time / this GPU's time, drift included (1 = nominal)",
            ),
            scale=gauge(
                "vibe_gpu_drift_time_scale", "Time now / time at benchmark, as published in the GPUProfile"
            ),
            drifted=gauge("vibe_gpu_drifted", "1 while the GPU's drift state is Drifted"),
            drift_events=counter(
                "vibe_gpu_drift_events", "Drift state changes decided by the agent", ("state",)
            ),
            ffn=gauge(
                "vibe_gpu_expert_ffn_seconds",
                "Seconds to run ONE expert's SwiGLU FFN over `tokens` tokens, effective now "
                "(GPUProfile curve)",
                ("expert", "hidden_size", "intermediate_size", "dtype", "tokens"),
            ),
            sm=gauge("vibe_gpu_sm_clock_hertz", "SM clock"),
            sm_max=gauge("vibe_gpu_sm_clock_max_hertz", "Maximum SM clock"),
            mem=gauge("vibe_gpu_memory_clock_hertz", "Memory clock"),
            power=gauge("vibe_gpu_power_watts", "Power draw"),
            limit=gauge("vibe_gpu_power_limit_watts", "Enforced power limit"),
            temp=gauge("vibe_gpu_temperature_celsius", "GPU temperature"),
            util=gauge(
                "vibe_gpu_utilization_ratio", "Fraction of time a kernel ran (NVML utilization.gpu / 100)"
            ),
            reasons=gauge(
                "vibe_gpu_clock_event_reason", "1 while the clock-event reason is active", ("reason",)
            ),
            throttle=counter(
                "vibe_gpu_throttle_seconds",
                "Time clocks were held below maximum (NVML violation)",
                ("cause",),
            ),
            ecc=counter("vibe_gpu_ecc_errors", "Volatile ECC errors since the driver loaded", ("type",)),
            xid=counter("vibe_gpu_xid_errors", "XID critical errors seen by the agent"),
            procs=gauge("vibe_gpu_compute_processes", "Processes holding a compute context on the GPU"),
            bench_ts=gauge(
                "vibe_gpu_last_benchmark_timestamp_seconds", "When the GPU's curves were benchmarked"
            ),
            bench_s=gauge("vibe_gpu_benchmark_duration_seconds", "Duration of the GPU's last full benchmark"),
            canary=counter("vibe_gpu_canary_seconds", "Device time spent in canary benchmarks"),
            canaries=counter("vibe_gpu_canaries", "Canary benchmarks run"),
        )


def _opt(family: Any, labels: list[str], value: float | int | None) -> None:
    if value is not None:
        family.add_metric(labels, float(value))


def registry_for(collector: AgentCollector) -> Any:
    """A fresh registry holding only the agent's collector (no process/platform collectors)."""
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    return reg


def serve(collector: AgentCollector, port: int, addr: str = "0.0.0.0") -> Any:
    """Serve ``/metrics`` on ``addr:port`` in a daemon thread (bounded connections, timeouts:
    ``vibe.metrics_http``); returns the server (``.shutdown()``)."""
    from vibe import metrics_http

    return metrics_http.serve(registry_for(collector), port, addr)


def render(collector: AgentCollector) -> str:
    """The exposition text (tests, ``vibe agent bench --metrics``)."""
    from prometheus_client import generate_latest

    return generate_latest(registry_for(collector)).decode()
