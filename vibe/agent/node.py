"""The node agent: one node's GPUs, from telemetry and benchmarks to the GPUProfile it should publish.

Role in the data flow: the agent's brain, free of Kubernetes and of torch. Each ``step`` (every second)
reads every GPU's telemetry, feeds the drift detectors, and decides what to do; the runner publishes
``body()`` when ``dirty`` and posts the queued ``events``. The same class runs a real node (NVML +
``TorchProfiler``) and each simulated node (``SimTelemetry`` + ``SimProfiler``).

Decisions, per GPU:

* **Benchmark** when the GPU has no curves yet, a shape is missing (a new MoEDeployment), or the
  periodic re-profile is due — but only while no other process holds a compute context on it (NVML), or
  when asked (``force_bench``), so a serving GPU is never disturbed. A GPU that waits is left out of
  the profile until it can be measured. A Drifted GPU is not re-profiled: that would bake a transient
  slowdown into its curves; the time scale carries the drift instead.
* **Drift (passive)**: the clock-based estimate of ``drift.estimate_scale`` goes into an EWMA detector
  with hysteresis; on a decision the published curves are rescaled (``timeScale``), the telemetry
  refreshed, and a ``GPUDrifted`` / ``GPUDriftCleared`` Event queued.
* **Canary**: a few points of one shape, measured; their ratio to the benchmarked curve is a direct
  time-scale estimate for a second detector. It runs every ``canary_seconds`` where configured (its cost
  lands on serving, so off by default), and on an idle GPU that no other process holds and that shows a
  slowdown reason (idle clocks say nothing, and a free GPU costs nothing to probe). The GPU's scale is
  the larger of the two detectors'.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vibe.agent.drift import (
    CALIBRATION_SAMPLES,
    DriftConfig,
    DriftDetector,
    calibration_sample,
    describe,
    estimate_scale,
    is_busy,
)
from vibe.agent.profile import (
    GPURecord,
    NodeFacts,
    build_profile,
    condition,
    records_from_profile,
    relative_speed,
)
from vibe.agent.profiler import ProfileOutcome, Profiler
from vibe.agent.shapes import ExpertShape, default_shapes
from vibe.agent.telemetry import SLOWDOWN_REASONS, GPUInfo, Sample, TelemetrySource, own_pids

log = logging.getLogger("vibe.agent")

#: The canary detector sees one sample per canary, so it averages fewer of them.
CANARY_DRIFT = DriftConfig(alpha=0.5, min_samples=2)


@dataclass
class AgentConfig:
    namespace: str = "vibe-system"
    heartbeat_seconds: int = 30
    shapes: list[ExpertShape] = field(default_factory=default_shapes)
    drift: DriftConfig = field(default_factory=DriftConfig)
    canary_seconds: float = 0.0  # run a canary on busy GPUs this often (0 = never)
    canary_tokens: tuple[int, ...] = (1, 256, 2048)
    idle_canary_seconds: float = 15.0  # at most this often on an idle GPU with a slowdown reason
    reprofile_seconds: float = 0.0  # re-benchmark an idle, stable GPU this often (0 = never)
    max_profile_age_s: float = 7 * 86400.0  # resume a published profile younger than this after restart
    force_bench: bool = False  # benchmark even while other processes use the GPU


@dataclass
class Event:
    reason: str  # Benchmarked | GPUDrifted | GPUDriftCleared | BenchmarkDeferred | BenchmarkFailed
    message: str
    type: str = "Normal"  # Normal | Warning


@dataclass
class GPUCounters:
    """Per-GPU numbers for the exporter beyond the record itself."""

    drift_events: int = 0  # Stable -> Drifted
    clears: int = 0  # Drifted -> Stable
    benchmark_duration_s: float | None = None
    canary_seconds_total: float = 0.0  # device time spent in canaries
    canaries: int = 0
    last_canary: float = 0.0
    xids: int = 0
    deferred: bool = False  # a benchmark is waiting for the GPU to be free


class NodeAgent:
    """One node: records (what is published), detectors, last samples, queued events."""

    def __init__(
        self,
        node: str,
        telemetry: TelemetrySource,
        profiler: Profiler,
        cfg: AgentConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        version: str = "",
    ) -> None:
        self.node = node
        self.telemetry = telemetry
        self.profiler = profiler
        self.cfg = cfg or AgentConfig()
        self.clock = clock
        self.version = version
        self.source = profiler.source
        self.infos: dict[int, GPUInfo] = {g.index: g for g in telemetry.gpus()}
        self.records: dict[int, GPURecord] = {i: GPURecord(info=g) for i, g in self.infos.items()}
        self.detectors = {i: DriftDetector(self.cfg.drift) for i in self.infos}
        self.canary_detectors = {i: DriftDetector(CANARY_DRIFT) for i in self.infos}
        self.calibration: dict[int, list[int]] = {}  # GPU -> SM clocks seen while learning its serving clock
        self.counters = {i: GPUCounters() for i in self.infos}
        self.last: dict[int, Sample] = {}
        self.events: list[Event] = []
        self.dirty = True
        self.own = own_pids()
        self.shapes = list(self.cfg.shapes)
        self.facts: NodeFacts | None = None  # the Node, once read (owner reference, GPU count check)
        self.conditions: dict[str, dict[str, Any]] = {}  # type -> metav1.Condition, in status
        self.expected_gpus: int | None = None  # what the node says it has (GFD count, else capacity)
        self.pods: list[dict[str, Any]] | None = None  # pod -> GPU UUIDs from kubelet pod-resources

    # -- life cycle ---------------------------------------------------------------------------------

    def resume(self, body: dict[str, Any] | None) -> int:
        """Adopt the GPUs of a published profile (agent restart); returns how many were resumed.

        A GPU is resumed when its UUID is in the profile and its benchmark is younger than
        ``max_profile_age_s``; its drift state and scale continue where they were.
        """
        if not body:
            return 0
        for c in (body.get("status") or {}).get("conditions") or ():
            mine = self.conditions.get(str(c.get("type")))
            if mine is not None and mine["status"] == c.get("status") and c.get("lastTransitionTime"):
                mine["lastTransitionTime"] = c["lastTransitionTime"]  # the same state since then
        old = records_from_profile(body, list(self.infos.values()))
        now = self.clock()
        n = 0
        for i, info in self.infos.items():
            rec = old.get(info.uuid)
            if rec is None or not rec.curves or rec.benchmark_time is None:
                continue
            if now - rec.benchmark_time > self.cfg.max_profile_age_s:
                continue
            rec.info = info
            self.records[i] = rec
            drifted = rec.drift_state == "Drifted"
            self.detectors[i].reset(drifted=drifted, scale=rec.time_scale)
            n += 1
        # The spec stays as published unless something changes: an identical apply is a no-op.
        self.dirty = True
        return n

    def set_shapes(self, shapes: Sequence[ExpertShape], dropped: Sequence[ExpertShape] = ()) -> None:
        """Benchmark ``shapes`` from now on and prune curves of any other shape; ``dropped`` are shapes in
        use that did not fit under the CRD's cap (condition ``ShapesCapped``)."""
        self.shapes = list(shapes)
        keep = {s.key for s in self.shapes}
        for rec in self.records.values():
            kept = [c for c in rec.curves if c.shape.key in keep]
            if len(kept) != len(rec.curves):
                rec.curves = kept
                self.dirty = True
        if dropped:
            few = ", ".join(s.label for s in list(dropped)[:5]) + (" ..." if len(dropped) > 5 else "")
            msg = (
                f"{len(dropped)} expert shape(s) of the MoEDeployments selecting this node are not "
                f"benchmarked: at most {len(self.shapes)} curves per GPU fit in a GPUProfile ({few}); "
                "the operator scales the closest measured curve for them"
            )
            self._set_condition("ShapesCapped", True, "TooManyShapes", msg, "Warning")
        else:
            self._set_condition(
                "ShapesCapped", False, "AllShapesProfiled", "every shape in use is benchmarked"
            )

    def set_node(self, facts: NodeFacts | None) -> None:
        """The Node as read at start (None: unreadable): owner reference and the GPU visibility check.

        NVML's GPUs are compared with GPU feature discovery's ``nvidia.com/gpu.count`` label and the
        ``nvidia.com/gpu`` capacity (divided by the GFD ``nvidia.com/gpu.replicas`` label under time
        slicing; left out under MIG, where it counts instances). A disagreement means the agent's
        container does not see what the node has (a runtime that injected no devices, an ignored
        NVIDIA_VISIBLE_DEVICES, ...): condition ``GPUsVisible=False``, a Warning Event and the metrics
        ``vibe_agent_gpus_visible``/``vibe_agent_gpus_expected``, and the profile is published even
        with no GPUs so the condition can be seen.
        """
        self.facts = facts
        self.dirty = True
        seen = len(self.infos)
        if facts is None:
            self.expected_gpus = None
            msg = f"NVML shows {seen} GPU(s); the Node could not be read to compare"
            self._set_condition("GPUsVisible", None, "NodeUnreadable", msg)
            return
        labels = facts.labels
        capacity = facts.gpu_capacity
        if (
            capacity is not None
            and "nvidia.com/mig.strategy" in labels
            and labels["nvidia.com/mig.strategy"] != "none"
        ):
            capacity = None  # MIG: the capacity counts instances (or is 0 with the mixed strategy)
        try:
            replicas = max(1, int(labels.get("nvidia.com/gpu.replicas", "1")))
        except ValueError:
            replicas = 1
        per_gpu = None if capacity is None else capacity // replicas
        said = []
        if facts.gfd_count is not None:
            said.append(f"GFD label nvidia.com/gpu.count={facts.gfd_count}")
        if capacity is not None:
            said.append(
                f"capacity nvidia.com/gpu={capacity}"
                + (f" ({replicas} replicas each)" if replicas > 1 else "")
            )
        expected = facts.gfd_count if facts.gfd_count is not None else per_gpu
        self.expected_gpus = expected
        if expected is None:
            msg = f"NVML shows {seen} GPU(s); the Node has no nvidia.com/gpu capacity or GFD count to compare"
            self._set_condition("GPUsVisible", None, "NodeHasNoGPUCount", msg)
            return
        agree = seen == expected and (per_gpu is None or per_gpu == seen)
        what = f"NVML shows {seen} GPU(s); the node has {' and '.join(said)}"
        if agree:
            self._set_condition("GPUsVisible", True, "GPUCountMatches", what)
        else:
            self._set_condition(
                "GPUsVisible",
                False,
                "GPUCountMismatch",
                f"{what}: the agent does not see the node's GPUs (runtime class, NVIDIA_VISIBLE_DEVICES, "
                "device plugin or MIG settings; docs/operations.md, GPU setups)",
                "Warning",
                event="GPUVisibilityMismatch",
            )

    @property
    def capped(self) -> bool:
        c = self.conditions.get("ShapesCapped")
        return c is not None and c["status"] == "True"

    @property
    def publish_empty(self) -> bool:
        """Publish a profile without GPUs: only to show that the agent sees fewer GPUs than the node has."""
        c = self.conditions.get("GPUsVisible")
        return c is not None and c["status"] == "False"

    def condition_list(self) -> list[dict[str, Any]]:
        return [self.conditions[k] for k in sorted(self.conditions)]

    def _set_condition(
        self,
        type_: str,
        status: bool | None,
        reason: str,
        message: str,
        ev_type: str = "Normal",
        event: str = "",
    ) -> None:
        old = self.conditions.get(type_)
        new = condition(type_, status, reason, message, self.clock())
        if old is not None and (old["status"], old["reason"], old["message"]) == (
            new["status"],
            reason,
            new["message"],
        ):
            return
        if old is not None and old["status"] == new["status"]:
            new["lastTransitionTime"] = old["lastTransitionTime"]
        self.conditions[type_] = new
        if status is False or (type_ == "ShapesCapped" and status):
            self.events.append(Event(event or type_, message, ev_type))
            log.warning("node %s: %s", self.node, message)

    def body(self) -> dict[str, Any]:
        return build_profile(
            self.node,
            self.cfg.namespace,
            list(self.records.values()),
            source=self.source,
            agent_version=self.version,
            owner=self.facts.owner if self.facts is not None and self.facts.uid else None,
            pods=self.pods,
        )

    # -- the 1 Hz step -------------------------------------------------------------------------------

    def step(self) -> None:
        for i in self.infos:
            s = self.telemetry.sample(i)
            self.last[i] = s
            if s.xids:
                c = self.counters[i]
                c.xids += len(s.xids)
                self.events.append(Event("GPUXid", f"GPU {i}: XID {', '.join(map(str, s.xids))}", "Warning"))
            self._maybe_benchmark(i, s)
            self._detect(i, s)
            self._maybe_canary(i, s)

    def missing_shapes(self, i: int) -> list[ExpertShape]:
        have = {c.shape.key for c in self.records[i].curves}
        return [s for s in self.shapes if s.key not in have]

    def _maybe_benchmark(self, i: int, s: Sample) -> None:
        rec, cfg, now = self.records[i], self.cfg, self.clock()
        if rec.drift_state == "Drifted" and rec.curves:
            return
        missing = self.missing_shapes(i)
        due = (
            cfg.reprofile_seconds > 0
            and rec.benchmark_time is not None
            and now - rec.benchmark_time >= cfg.reprofile_seconds
        )
        if not (missing or due or not rec.curves):
            return
        if getattr(self.profiler, "disabled", ""):
            return  # said once at start (a driver too old for torch's CUDA): telemetry only
        shapes = self.shapes if (due or not rec.curves) else missing
        others = s.other_processes(self.own)
        if not (cfg.force_bench or self.profiler.non_intrusive or others == 0):
            c = self.counters[i]
            if not c.deferred:
                c.deferred = True
                why = (
                    "unknown compute processes (NVML)" if others is None else f"{others} compute process(es)"
                )
                self.events.append(Event("BenchmarkDeferred", f"GPU {i}: {why}; waiting until it is free"))
                log.info("node %s GPU %d: benchmark deferred (%s)", self.node, i, why)
            return
        self.benchmark(i, shapes)

    def benchmark(self, i: int, shapes: Sequence[ExpertShape]) -> ProfileOutcome | None:
        """Profile GPU ``i`` for ``shapes`` now and merge the curves into its record."""
        try:
            out = self.profiler.profile(i, list(shapes))
        except Exception as e:  # CUDA OOM, a driver error: report, keep the old curves
            log.exception("node %s GPU %d: benchmark failed", self.node, i)
            self.events.append(Event("BenchmarkFailed", f"GPU {i}: {type(e).__name__}: {e}", "Warning"))
            return None
        self._apply_profile(i, out, full=set(s.key for s in shapes) >= {s.key for s in self.shapes})
        return out

    def _apply_profile(self, i: int, out: ProfileOutcome, full: bool) -> None:
        rec, now, c = self.records[i], self.clock(), self.counters[i]
        new = {cv.shape.key: cv for cv in out.curves}
        rec.curves = [cv for cv in rec.curves if cv.shape.key not in new] + list(new.values())
        if full or rec.benchmark_time is None:
            rec.benchmark_time = now
            rec.baseline = out.baseline
            self.calibration.pop(i, None)
            rec.telemetry = out.telemetry
            rec.drift_state, rec.time_scale, rec.drift_since, rec.drift_reason = "Stable", 1.0, now, ""
            self.detectors[i].reset()
            self.canary_detectors[i].reset()
        try:
            rec.base_speed = relative_speed(rec.curves)
        except Exception as e:  # the reference data is part of vibe.placement; never fatal here
            log.warning("relative speed unavailable: %s", e)
        c.benchmark_duration_s = out.duration_s
        c.deferred = False
        speed = f", relative speed {rec.relative_speed:.3f}" if rec.relative_speed is not None else ""
        notes = f" ({'; '.join(out.notes)})" if out.notes else ""
        what = f"GPU {i} ({rec.info.uuid}): {len(out.curves)} curve(s) in {out.duration_s:.1f} s"
        self.events.append(Event("Benchmarked", f"{what}{speed}{notes}"))
        self.dirty = True

    def _detect(self, i: int, s: Sample) -> None:
        rec = self.records[i]
        if not rec.curves:
            return
        if not rec.baseline.calibrated:
            # Learning the steady serving clock: a sample fit for it is no evidence of drift yet; one with a
            # slowdown reason or a lowered power limit still is (against the benchmark's clock).
            clock = calibration_sample(s, rec.baseline)
            if clock is not None:
                seen = self.calibration.setdefault(i, [])
                seen.append(clock)
                if len(seen) >= CALIBRATION_SAMPLES:
                    bench_hz = rec.baseline.sm_clock_hz or 0
                    rec.baseline = rec.baseline.calibrate(seen)
                    del self.calibration[i]
                    self.dirty = True  # publish the calibrated baseline (it survives restarts)
                    log.info(
                        "node %s GPU %d: steady serving SM clock %d MHz (benchmark %d MHz)",
                        self.node, i, (rec.baseline.sm_clock_hz or 0) // 10**6,
                        bench_hz // 10**6,
                    )  # fmt: skip
                return
        scale, _ = estimate_scale(s, rec.baseline)
        decision = self.detectors[i].update(scale)
        if decision:
            self._decide(i, s)

    def _maybe_canary(self, i: int, s: Sample) -> None:
        rec, cfg, c, now = self.records[i], self.cfg, self.counters[i], self.clock()
        if not rec.curves:
            return
        since = now - c.last_canary
        if is_busy(s):
            due = cfg.canary_seconds > 0 and since >= cfg.canary_seconds
        else:
            free = self.profiler.non_intrusive or s.other_processes(self.own) == 0
            due = free and bool(set(s.reasons) & SLOWDOWN_REASONS) and since >= cfg.idle_canary_seconds
        if not due:
            return
        c.last_canary = now
        curve = next((cv for cv in rec.curves if cv.shape.dtype == "bf16"), rec.curves[0])
        try:
            secs, cost = self.profiler.canary(i, curve.shape, cfg.canary_tokens)
        except Exception as e:
            log.warning("node %s GPU %d: canary failed: %s", self.node, i, e)
            return
        c.canaries += 1
        c.canary_seconds_total += cost
        base = np.interp(cfg.canary_tokens, curve.tokens, curve.seconds)
        ratio = float(statistics.median(np.asarray(secs) / base))
        if self.canary_detectors[i].update(max(ratio, 1.0)):
            self._decide(i, s)

    def _decide(self, i: int, s: Sample) -> None:
        """Publish the combined state of both detectors for GPU ``i`` after one of them decided."""
        rec, now = self.records[i], self.clock()
        drifted = [d for d in (self.detectors[i], self.canary_detectors[i]) if d.drifted]
        was = rec.drift_state
        if drifted:
            scale = max(d.scale for d in drifted)
            rec.drift_state, rec.time_scale = "Drifted", scale
            rec.drift_reason = describe(s, rec.baseline, scale)
            if was != "Drifted":
                rec.drift_since = now
                self.counters[i].drift_events += 1
            self.events.append(
                Event(
                    "GPUDrifted",
                    f"GPU {i} ({rec.info.uuid}) runs {scale:.2f}x its benchmarked time: {rec.drift_reason}",
                    "Warning",
                )
            )
        elif was == "Drifted":
            rec.drift_state, rec.time_scale, rec.drift_since, rec.drift_reason = "Stable", 1.0, now, ""
            self.counters[i].clears += 1
            self.events.append(
                Event("GPUDriftCleared", f"GPU {i} ({rec.info.uuid}) is back to its benchmarked speed")
            )
        else:
            return
        rec.telemetry = s
        log.info("node %s GPU %d: %s (time scale %.2f)", self.node, i, rec.drift_state, rec.time_scale)
        self.dirty = True
