"""The node agent's decisions: benchmark only when free, resume after restart, shapes, canary, failures."""

from __future__ import annotations

import os
from collections.abc import Sequence

import pytest
from fakes import ScriptedTelemetry

from vibe.agent.drift import Baseline
from vibe.agent.node import AgentConfig, NodeAgent
from vibe.agent.profile import Curve, drifted
from vibe.agent.profiler import ProfileOutcome
from vibe.agent.shapes import DEFAULT_MODELS, TOKEN_GRID, ExpertShape
from vibe.agent.simulate import reference_on_grid


class FakeProfiler:
    """Measures reference curves x ``factor``; counts calls; ``fail`` raises instead."""

    non_intrusive = False
    source = "measured"

    def __init__(self, factor: float = 1.0, canary_factor: float = 1.0) -> None:
        self.factor = factor
        self.canary_factor = canary_factor
        self.profiles: list[tuple[int, list[str]]] = []
        self.canaries = 0
        self.fail = False

    def profile(self, index: int, shapes: Sequence[ExpertShape]) -> ProfileOutcome:
        if self.fail:
            raise RuntimeError("CUDA out of memory")
        self.profiles.append((index, [s.label for s in shapes]))
        curves = [Curve(s, TOKEN_GRID, tuple(reference_on_grid(s, TOKEN_GRID) * self.factor)) for s in shapes]
        return ProfileOutcome(curves, Baseline(1_500_000_000, 2_619_000_000, 700.0), None, 7.5)

    def canary(self, index: int, shape: ExpertShape, tokens: Sequence[int]) -> tuple[list[float], float]:
        self.canaries += 1
        secs = reference_on_grid(shape, tokens) * self.factor * self.canary_factor
        return [float(s) for s in secs], 0.004


SHAPES = list(DEFAULT_MODELS)


def agent(tel: ScriptedTelemetry, prof: FakeProfiler, now: list[float], **cfg: object) -> NodeAgent:
    return NodeAgent("node", tel, prof, AgentConfig(shapes=SHAPES, **cfg), clock=lambda: now[0])  # type: ignore[arg-type]


def reasons(a: NodeAgent) -> list[str]:
    out = [e.reason for e in a.events]
    a.events.clear()
    return out


def test_benchmarks_free_gpus_and_defers_busy_ones() -> None:
    tel, prof, now = ScriptedTelemetry(gpus=2), FakeProfiler(), [0.0]
    tel.pids[1] = (123_456_789,)  # a serving process on GPU 1
    a = agent(tel, prof, now)
    a.step()
    assert [i for i, _ in prof.profiles] == [0]
    assert reasons(a) == ["Benchmarked", "BenchmarkDeferred"]
    assert [g["index"] for g in a.body()["spec"]["gpus"]] == [0]  # an unmeasured GPU is left out
    a.step()
    assert reasons(a) == []  # deferred once, not every second
    tel.pids[1] = ()
    a.step()
    assert [i for i, _ in prof.profiles] == [0, 1]
    assert reasons(a) == ["Benchmarked"]
    assert len(a.body()["spec"]["gpus"]) == 2


def test_own_cuda_context_does_not_count_as_serving() -> None:
    tel, prof, now = ScriptedTelemetry(gpus=1), FakeProfiler(), [0.0]
    tel.pids[0] = (os.getpid(),)
    a = agent(tel, prof, now)
    a.step()
    assert len(prof.profiles) == 1


def test_force_bench_and_unknown_processes() -> None:
    tel, prof, now = ScriptedTelemetry(gpus=1), FakeProfiler(), [0.0]
    tel.pids[0] = None  # type: ignore[call-overload]  # NVML could not tell
    a = agent(tel, prof, now)
    a.step()
    assert prof.profiles == [] and "unknown compute processes" in a.events[0].message
    forced = agent(tel, prof, now, force_bench=True)
    forced.step()
    assert len(prof.profiles) == 1


def test_restart_resumes_without_benchmarking() -> None:
    tel, prof, now = ScriptedTelemetry(gpus=2), FakeProfiler(), [1_000.0]
    a = agent(tel, prof, now)
    a.step()
    tel.sm_mhz[1] = 1200  # GPU 1 slows down 1.25x
    tel.reasons[1] = ["SwPowerCap", "HwSlowdown"]
    for _ in range(10):
        now[0] += 1
        a.step()
    assert a.records[1].drift_state == "Drifted"
    body = a.body()

    prof2 = FakeProfiler()
    b = agent(tel, prof2, now)
    assert b.resume(body) == 2
    b.step()
    assert prof2.profiles == []  # resumed, not re-benchmarked
    assert b.records[1].drift_state == "Drifted" and b.records[1].time_scale == a.records[1].time_scale
    assert b.body() == body  # the same object: re-applying it is a no-op
    assert [e for e in reasons(b) if e.startswith("GPU")] == []  # and no new drift decision


def test_restart_with_old_or_foreign_profile_benchmarks_again() -> None:
    tel, prof, now = ScriptedTelemetry(gpus=1), FakeProfiler(), [0.0]
    a = agent(tel, prof, now)
    a.step()
    body = a.body()
    now[0] = 10 * 86400.0
    b = agent(tel, prof, now)
    assert b.resume(body) == 0  # older than max_profile_age_s
    body["spec"]["gpus"][0]["uuid"] = "GPU-replaced"
    c = agent(tel, prof, [0.0])
    assert c.resume(body) == 0  # a different GPU in the slot
    assert c.resume(None) == 0


def test_new_shape_is_measured_alone_and_drift_is_never_baked_in() -> None:
    tel, prof, now = ScriptedTelemetry(gpus=1), FakeProfiler(), [0.0]
    a = agent(tel, prof, now)
    a.step()
    t0 = a.records[0].benchmark_time
    extra = ExpertShape(5120, 1536, "bf16", "new-model")
    a.set_shapes([*SHAPES, extra])
    now[0] = 50
    a.step()
    assert prof.profiles[-1] == (0, [extra.label])
    assert a.records[0].benchmark_time == t0  # a partial profile keeps the benchmark time and baseline
    assert len(a.body()["spec"]["gpus"][0]["curves"]) == 4
    # While drifted, a missing shape waits (its curve would carry the transient slowdown).
    tel.sm_mhz[0] = 1000
    tel.reasons[0] = ["SwPowerCap", "HwThermalSlowdown"]
    for _ in range(10):
        now[0] += 1
        a.step()
    assert a.records[0].drift_state == "Drifted"
    a.set_shapes([*SHAPES, extra, ExpertShape(2048, 768, "bf16")])
    n = len(prof.profiles)
    a.step()
    assert len(prof.profiles) == n


def test_periodic_reprofile_only_when_stable() -> None:
    tel, prof, now = ScriptedTelemetry(gpus=1), FakeProfiler(), [0.0]
    a = agent(tel, prof, now, reprofile_seconds=3600.0)
    a.step()
    now[0] = 1800
    a.step()
    assert len(prof.profiles) == 1
    now[0] = 3600
    a.step()
    assert len(prof.profiles) == 2 and len(prof.profiles[-1][1]) == len(SHAPES)


def test_idle_gpu_with_a_slowdown_reason_gets_a_canary() -> None:
    """Idle clocks say nothing; an idle GPU costs nothing to probe, so a slowdown reason triggers canaries."""
    tel, prof, now = ScriptedTelemetry(gpus=1), FakeProfiler(canary_factor=1.5), [0.0]
    a = agent(tel, prof, now)
    a.step()
    tel.util[0] = 0.0
    tel.sm_mhz[0] = 345
    tel.reasons[0] = ["GpuIdle", "HwSlowdown"]
    for _ in range(60):
        now[0] += 1
        a.step()
    assert prof.canaries >= 2
    rec = a.records[0]
    assert rec.drift_state == "Drifted" and rec.time_scale == pytest.approx(1.5, abs=0.02)
    assert "GPUDrifted" in reasons(a)
    assert a.counters[0].canary_seconds_total == pytest.approx(0.004 * prof.canaries)


def test_no_unasked_canary_on_an_idle_gpu_that_a_server_holds() -> None:
    tel, prof, now = ScriptedTelemetry(gpus=1), FakeProfiler(canary_factor=1.5), [0.0]
    a = agent(tel, prof, now)
    a.step()
    tel.util[0], tel.sm_mhz[0], tel.reasons[0] = 0.0, 345, ["GpuIdle", "HwSlowdown"]
    tel.pids[0] = (123_456_789,)  # a serving engine, idle between requests
    for _ in range(60):
        now[0] += 1
        a.step()
    assert prof.canaries == 0 and a.records[0].drift_state == "Stable"


def test_configured_canary_on_a_busy_gpu() -> None:
    tel, prof, now = ScriptedTelemetry(gpus=1), FakeProfiler(canary_factor=1.0), [0.0]
    a = agent(tel, prof, now, canary_seconds=60.0)
    for _ in range(181):
        a.step()
        now[0] += 1
    assert prof.canaries == 3  # at t = 60, 120 and 180 s
    assert a.records[0].drift_state == "Stable"
    off = agent(tel, FakeProfiler(), [0.0])
    for _ in range(100):
        off.step()
    assert off.profiler.canaries == 0  # type: ignore[attr-defined]


def test_benchmark_failure_is_an_event_not_a_crash() -> None:
    tel, prof, now = ScriptedTelemetry(gpus=1), FakeProfiler(), [0.0]
    prof.fail = True
    a = agent(tel, prof, now)
    a.step()
    ev = a.events[-1]
    assert ev.reason == "BenchmarkFailed" and ev.type == "Warning" and "out of memory" in ev.message
    assert a.body()["spec"]["gpus"] == []


def test_passive_drift_rescales_the_curves() -> None:
    tel, prof, now = ScriptedTelemetry(gpus=1), FakeProfiler(), [0.0]
    a = agent(tel, prof, now)
    a.step()
    before = a.body()["spec"]["gpus"][0]
    tel.sm_mhz[0] = 1200
    tel.reasons[0] = ["SwPowerCap", "HwSlowdown"]
    for _ in range(5):
        now[0] += 1
        a.step()
    after = a.body()["spec"]["gpus"][0]
    assert after["drift"]["state"] == "Drifted" and after["drift"]["timeScale"] == pytest.approx(1.25)
    assert after["drift"]["reason"] == "SM clock 1200 MHz vs 1500 MHz at benchmark (SwPowerCap, HwSlowdown)"
    assert after["telemetry"]["smClockHz"] == 1_200_000_000  # refreshed on the decision
    # a clock held down: the compute region x1.25, the floor by the clock share of it (profile.drifted)
    assert after["curves"][0]["seconds"] == pytest.approx(
        drifted(before["curves"][0]["seconds"], 1.25), rel=1e-3
    )
    assert after["benchmarkTime"] == before["benchmarkTime"]


def test_a_power_capped_gpu_settling_lower_under_load_is_learned_not_drift() -> None:
    """Measured on an H100: benchmarked at 1485 MHz after a short pre-heat, it settles at 1320-1358 MHz
    under sustained full load at the same cap, with no slowdown reason. That is how the GPU serves, not
    a change: the agent learns it as the GPU's normal clock (and publishes it), then catches a later
    drop from there."""
    tel, prof, now = ScriptedTelemetry(gpus=1, sm_mhz=1485), FakeProfiler(), [0.0]
    a = agent(tel, prof, now)
    a.step()
    tel.sm_mhz[0] = 1335  # -10 %, power-capped only
    for _ in range(40):
        now[0] += 1
        a.step()
    rec = a.records[0]
    assert rec.drift_state == "Stable" and [e for e in reasons(a) if e.startswith("GPUDrifted")] == []
    assert rec.baseline.calibrated and rec.baseline.sm_clock_hz == 1335 * 10**6
    body = a.body()
    b = agent(tel, FakeProfiler(), now)  # a restarted agent keeps what was learned
    assert b.resume(body) == 1 and b.records[0].baseline == rec.baseline

    tel.sm_mhz[0] = 1070  # then 1.25x slower than that, still without a reason (e.g. a failing fan)
    for _ in range(10):
        now[0] += 1
        a.step()
    assert rec.drift_state == "Drifted" and rec.time_scale == pytest.approx(1.25, abs=0.03)
    assert rec.drift_reason == "SM clock 1070 MHz vs 1335 MHz serving normally (SwPowerCap)"


def test_a_slowdown_with_a_reason_is_drift_even_before_calibration() -> None:
    tel, prof, now = ScriptedTelemetry(gpus=1), FakeProfiler(), [0.0]
    a = agent(tel, prof, now)
    a.step()
    tel.sm_mhz[0], tel.reasons[0] = 1200, ["SwPowerCap", "HwPowerBrakeSlowdown"]
    for _ in range(5):
        now[0] += 1
        a.step()
    assert not a.records[0].baseline.calibrated
    assert a.records[0].drift_state == "Drifted"


def test_calibration_never_learns_a_large_drop() -> None:
    base = Baseline(sm_clock_hz=1_500_000_000)
    assert base.calibrate([1_600_000_000] * 30).sm_clock_hz == 1_500_000_000  # never above the benchmark
    assert base.calibrate([900_000_000] * 30).sm_clock_hz == 1_200_000_000  # at most 20 % below it
