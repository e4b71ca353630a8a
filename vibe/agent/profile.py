"""The GPUProfile object: what the agent knows about one node's GPUs, as the operator reads it.

Role in the data flow: the meeting point of benchmark (curves), telemetry (identity, clocks) and drift
(state, time scale) on one side, and the API server on the other. ``GPURecord`` is one GPU's published
state; ``build_profile`` renders a node's records into the GPUProfile body of docs/gpuprofile-contract.md
(pure, deterministic: the same records give the same bytes, so an unchanged profile is a no-op apply);
``records_from_profile`` reads one back, so a restarted agent resumes instead of re-benchmarking.

Curves are published as the isotonic (pool-adjacent-violators) fit of the measured medians: the cost
model needs a non-decreasing curve, and below the knee the raw medians dip within noise (the shared H100
data dips up to 6 %). Published seconds are the benchmarked curve times the drift time scale ("effective
now", per the contract); ``relativeSpeed`` is divided by it likewise.

The benchmark-time telemetry the drift detector compares against (SM and memory clocks, power limit) is
kept in the annotation ``vibe.dev/baseline``, because ``spec.gpus[].telemetry`` is refreshed on drift.

Liveness is not in the GPUProfile: ``build_lease`` renders the node's Lease (coordination.k8s.io/v1,
named after the node), renewed every heartbeat period; the profile's ``status`` holds only conditions
(``GPUsVisible``, ``ShapesCapped``), written when they change. Both objects carry an owner reference to
their Node when the agent could read it, so they go when the node goes.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vibe import api
from vibe.agent.drift import Baseline
from vibe.agent.shapes import ExpertShape
from vibe.agent.telemetry import GPUInfo, Sample, reason_mask

MANAGED_BY = {api.LABEL_MANAGED_BY: api.MANAGED_BY_AGENT}
GPU_RESOURCE = "nvidia.com/gpu"
GFD_COUNT_LABEL = "nvidia.com/gpu.count"
GFD_PRODUCT_LABEL = "nvidia.com/gpu.product"


@dataclass(frozen=True)
class NodeFacts:
    """What the agent reads of its Node: identity for owner references, what the cluster expects of it."""

    name: str
    uid: str
    labels: Mapping[str, str] = field(default_factory=dict)
    gpu_capacity: int | None = None  # status.capacity["nvidia.com/gpu"] (the device plugin's count)

    @property
    def owner(self) -> dict[str, Any]:
        # No blockOwnerDeletion: that would need the finalizers permission on Nodes.
        return {"apiVersion": "v1", "kind": "Node", "name": self.name, "uid": self.uid}

    @property
    def gfd_count(self) -> int | None:
        try:
            return int(self.labels[GFD_COUNT_LABEL])
        except (KeyError, ValueError):
            return None


def node_facts(body: Mapping[str, Any]) -> NodeFacts:
    meta = body.get("metadata") or {}
    cap = ((body.get("status") or {}).get("capacity") or {}).get(GPU_RESOURCE)
    try:
        gpus = int(str(cap)) if cap is not None else None
    except ValueError:
        gpus = None
    return NodeFacts(
        str(meta.get("name") or ""), str(meta.get("uid") or ""), dict(meta.get("labels") or {}), gpus
    )


@dataclass(frozen=True)
class Curve:
    """A benchmarked curve (before any drift scaling): seconds for one expert over ``tokens`` tokens."""

    shape: ExpertShape
    tokens: tuple[int, ...]
    seconds: tuple[float, ...]  # non-decreasing, > 0

    @classmethod
    def from_measured(cls, shape: ExpertShape, tokens: Sequence[int], medians: Sequence[float]) -> Curve:
        """Isotonic fit of measured medians (see the module docstring)."""
        return cls(shape, tuple(int(t) for t in tokens), tuple(isotonic(medians)))


@dataclass
class GPURecord:
    """One GPU's state as published (mutable: the node agent updates it in place)."""

    info: GPUInfo
    curves: list[Curve] = field(default_factory=list)
    benchmark_time: float | None = None
    baseline: Baseline = field(default_factory=Baseline)
    telemetry: Sample | None = None  # at benchmark time, refreshed on drift decisions
    base_speed: float | None = None  # relative speed at benchmark (before drift scaling)
    drift_state: str = "Stable"
    time_scale: float = 1.0
    drift_since: float | None = None
    drift_reason: str = ""

    @property
    def relative_speed(self) -> float | None:
        return None if self.base_speed is None else self.base_speed / self.time_scale

    def curve(self, key: tuple[int, int, str]) -> Curve | None:
        return next((c for c in self.curves if c.shape.key == key), None)


# -- numbers ----------------------------------------------------------------------------------------


def drifted(seconds: Sequence[float], time_scale: float) -> tuple[float, ...]:
    """A benchmarked curve as a GPU that drifted ``time_scale`` times slower runs it. Drift is found in
    the SM clock (held down at any load: heat, a power brake, a clock limit), which slows the compute
    region by the scale and the memory-bound floor by ``FLOOR_SHARE["clock"]`` of it (H100 clock probe:
    the floor pays 0.07-0.63 of a clock loss; benchmarks/results/gpu-slowness-h100-2026-12-07/)."""
    if time_scale == 1.0 or not seconds:
        return tuple(seconds)
    from vibe.placement import FLOOR_SHARE, slowed_curve

    return tuple(float(s) for s in slowed_curve(np.asarray(seconds), time_scale, FLOOR_SHARE["clock"]))


def undrifted(seconds: Sequence[float], time_scale: float) -> tuple[float, ...]:
    """``drifted``'s inverse: a published drifted curve back at benchmark time."""
    if time_scale == 1.0 or not seconds:
        return tuple(seconds)
    from vibe.placement import FLOOR_SHARE, unslowed_curve

    return tuple(float(s) for s in unslowed_curve(np.asarray(seconds), time_scale, FLOOR_SHARE["clock"]))


def isotonic(values: Sequence[float]) -> list[float]:
    """Least-squares non-decreasing fit (pool adjacent violators), O(n)."""
    blocks: list[list[float]] = []  # [mean, weight]
    for v in values:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, w2 = blocks.pop()
            m1, w1 = blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2])
    return [m for m, w in blocks for _ in range(int(w))]


#: A point is in a curve's compute region where the reference takes at least this many times its floor.
COMPUTE_REGION = 2.0


def relative_speed(curves: Iterable[Curve]) -> float | None:
    """Reference-curve time / this GPU's time in the compute region: median over a curve's points where
    the reference takes at least ``COMPUTE_REGION`` x its floor (all points where none does), median
    over curves.

    The reference is the measured H100 curve of ``vibe.placement`` (steady state at the power cap), so
    1.0 means "as fast as the nominal H100". GPUs of one product differ where the power cap binds: the
    memory-bound floor runs at the top clock below the cap on every GPU (H100 sweeps,
    benchmarks/results/gpu-slowness-h100-2026-12-07/), so a median over the whole grid, half of it
    floor points, hid a 1.5x slower GPU as 0.94. Curves whose shape was measured for the reference
    (bf16 DeepSeek-V3, Qwen3-235B, Mixtral) are preferred; other shapes compare against a scaled
    reference, which is only accurate to ~10 %, so they are used only when no measured shape was
    benchmarked.
    """
    curves = list(curves)
    exact = _reference_shapes()
    use = [c for c in curves if c.shape.key in exact] or curves
    ratios = []
    for c in use:
        ref = _reference_at(c.shape.key, c.tokens)
        if ref is None:
            continue
        inside, ref_s = ref
        own = np.asarray(c.seconds, dtype=float)[inside]
        compute = ref_s >= COMPUTE_REGION * float(ref_s.min())
        if not compute.any():
            compute = np.ones_like(compute)
        ratios.append(float(np.median(ref_s[compute] / own[compute])))
    return round(float(np.median(ratios)), 4) if ratios else None


@functools.lru_cache(maxsize=1)
def _reference_shapes() -> frozenset[tuple[int, int, str]]:
    from vibe.placement import reference_shapes

    return frozenset(reference_shapes().values())


@functools.lru_cache(maxsize=256)
def _reference_at(key: tuple[int, int, str], tokens: tuple[int, ...]) -> tuple[Any, Any] | None:
    """(mask of ``tokens`` inside the reference's range, reference seconds there), interpolated in log n."""
    from vibe.placement import reference_curve

    ref_t, ref_s = reference_curve(*key)
    t = np.asarray(tokens, dtype=float)
    inside = (t >= ref_t[0]) & (t <= ref_t[-1])
    if not inside.any():
        return None
    return inside, np.interp(np.log(t[inside]), np.log(ref_t), ref_s)


def rfc3339(t: float | None) -> str | None:
    if t is None:
        return None
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _sig(x: float, digits: int = 5) -> float:
    """Round to significant digits (keeps the object small and its bytes stable)."""
    if x == 0 or not math.isfinite(x):
        return x
    return round(x, digits - 1 - math.floor(math.log10(abs(x))))


# -- rendering --------------------------------------------------------------------------------------


def telemetry_fields(s: Sample | None, info: GPUInfo) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if s is not None:
        if s.sm_clock_hz is not None:
            out["smClockHz"] = int(s.sm_clock_hz)
        if s.mem_clock_hz is not None:
            out["memClockHz"] = int(s.mem_clock_hz)
        if s.power_w is not None:
            out["powerW"] = round(s.power_w, 1)
        if s.power_limit_w is not None:
            out["powerLimitW"] = round(s.power_limit_w, 1)
        if s.temperature_c is not None:
            out["temperatureC"] = round(s.temperature_c, 1)
        if s.clock_event_reasons is not None:
            out["clockEventReasons"] = s.reasons
    if info.max_sm_clock_hz is not None:
        out["maxSmClockHz"] = int(info.max_sm_clock_hz)
    return out


def gpu_entry(r: GPURecord) -> dict[str, Any]:
    """One item of ``spec.gpus``."""
    info = r.info
    g: dict[str, Any] = {"index": info.index, "uuid": info.uuid}
    if info.pci_bus_id:
        g["pciBusId"] = info.pci_bus_id
    if info.product:
        g["product"] = info.product
    if info.memory_bytes:
        g["memoryBytes"] = int(info.memory_bytes)
    if r.benchmark_time is not None:
        g["benchmarkTime"] = rfc3339(r.benchmark_time)
    if r.relative_speed is not None:
        g["relativeSpeed"] = round(r.relative_speed, 4)
    g["curves"] = [
        {
            "name": c.shape.name or f"{c.shape.hidden_size}x{c.shape.intermediate_size}",
            "hiddenSize": c.shape.hidden_size,
            "intermediateSize": c.shape.intermediate_size,
            "dtype": c.shape.dtype,
            "tokens": list(c.tokens),
            "seconds": [_sig(s) for s in drifted(c.seconds, r.time_scale)],
        }
        for c in sorted(
            r.curves, key=lambda c: (c.shape.hidden_size, c.shape.intermediate_size, c.shape.dtype)
        )
    ]
    tel = telemetry_fields(r.telemetry, info)
    if tel:
        g["telemetry"] = tel
    drift: dict[str, Any] = {
        "state": r.drift_state,
        "timeScale": round(r.time_scale, 4),
        "reason": r.drift_reason,
    }
    if r.drift_since is not None:
        drift["since"] = rfc3339(r.drift_since)
    g["drift"] = drift
    return g


def baseline_annotation(records: Iterable[GPURecord]) -> str:
    data = {}
    for r in records:
        b = r.baseline
        data[r.info.uuid] = {
            k: v
            for k, v in (
                ("smClockHz", b.sm_clock_hz),
                ("memClockHz", b.mem_clock_hz),
                ("powerLimitW", b.power_limit_w),
                ("calibrated", b.calibrated or None),
            )
            if v is not None
        }
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def build_profile(
    node: str,
    namespace: str,
    records: Sequence[GPURecord],
    *,
    source: str = "measured",
    agent_version: str = "",
    owner: Mapping[str, Any] | None = None,
    pods: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The GPUProfile body to server-side apply (spec and metadata; conditions go to status).

    ``owner``: the Node's owner reference (the profile is deleted with the node); ``pods``: the GPUs each
    pod on the node holds (kubelet pod-resources), published when known.
    """
    spec: dict[str, Any] = {"nodeName": node, "source": source}
    if agent_version:
        spec["agentVersion"] = agent_version
    spec["gpus"] = [gpu_entry(r) for r in sorted(records, key=lambda r: r.info.index) if r.curves]
    if pods is not None:
        spec["pods"] = [dict(p) for p in pods]
    meta: dict[str, Any] = {
        "name": node,
        "namespace": namespace,
        "labels": {**MANAGED_BY, api.LABEL_NODE: node[:63]},
        "annotations": {api.ANNOTATION_BASELINE: baseline_annotation(records)},
    }
    if owner:
        meta["ownerReferences"] = [dict(owner)]
    return {"apiVersion": api.API_VERSION, "kind": api.GPUPROFILE_KIND, "metadata": meta, "spec": spec}


def build_status(node: str, namespace: str, conditions: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The status apply: the profile's conditions (liveness is the Lease's, see ``build_lease``)."""
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.GPUPROFILE_KIND,
        "metadata": {"name": node, "namespace": namespace},
        "status": {"conditions": [dict(c) for c in conditions]},
    }


def micro_time(t: float) -> str:
    """A metav1.MicroTime: RFC 3339 with microseconds, UTC."""
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def build_lease(
    node: str, namespace: str, when: float, heartbeat_seconds: int, owner: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The node's liveness Lease: renewed every ``heartbeat_seconds``; the operator reads ``renewTime``."""
    meta: dict[str, Any] = {
        "name": node,
        "namespace": namespace,
        "labels": {**MANAGED_BY, "vibe.dev/node": node[:63]},
    }
    if owner:
        meta["ownerReferences"] = [dict(owner)]
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": meta,
        "spec": {
            "holderIdentity": f"vibe-agent/{node}"[:253],
            "leaseDurationSeconds": int(heartbeat_seconds),
            "renewTime": micro_time(when),
        },
    }


def condition(
    type_: str, status: bool | None, reason: str, message: str, when: float, generation: int = 0
) -> dict[str, Any]:
    """One metav1.Condition (status True, False or Unknown for None)."""
    c: dict[str, Any] = {
        "type": type_,
        "status": "Unknown" if status is None else ("True" if status else "False"),
        "reason": reason,
        "message": message[:1024],
        "lastTransitionTime": rfc3339(when),
    }
    if generation:
        c["observedGeneration"] = generation
    return c


# -- reading back (agent restart) -------------------------------------------------------------------


def records_from_profile(body: Mapping[str, Any], infos: Sequence[GPUInfo]) -> dict[str, GPURecord]:
    """The published records of ``body`` for the GPUs in ``infos``, by UUID (unknown UUIDs are dropped).

    Curves are un-scaled back to benchmark time (published seconds / timeScale), so that resuming and
    then publishing again gives the same object.
    """
    meta = body.get("metadata") or {}
    try:
        baselines = json.loads((meta.get("annotations") or {}).get(api.ANNOTATION_BASELINE) or "{}")
    except ValueError:
        baselines = {}
    by_uuid = {i.uuid: i for i in infos}
    out: dict[str, GPURecord] = {}
    for g in (body.get("spec") or {}).get("gpus") or ():
        info = by_uuid.get(str(g.get("uuid") or ""))
        if info is None:
            continue
        drift = g.get("drift") or {}
        scale = float(drift.get("timeScale") or 1.0)
        curves = []
        for c in g.get("curves") or ():
            try:
                shape = ExpertShape(
                    int(c["hiddenSize"]), int(c["intermediateSize"]), str(c["dtype"]), c.get("name", "")
                )
                seconds = tuple(float(s) for s in c["seconds"])
                curves.append(Curve(shape, tuple(c["tokens"]), undrifted(seconds, scale)))
            except (KeyError, TypeError, ValueError):
                continue
        b = baselines.get(info.uuid) or {}
        tel = g.get("telemetry") or {}
        speed = g.get("relativeSpeed")
        out[info.uuid] = GPURecord(
            info=info,
            curves=curves,
            benchmark_time=parse_time(g.get("benchmarkTime")),
            baseline=Baseline(
                b.get("smClockHz"), b.get("memClockHz"), b.get("powerLimitW"), bool(b.get("calibrated"))
            ),
            telemetry=Sample(
                time=0.0,
                sm_clock_hz=tel.get("smClockHz"),
                mem_clock_hz=tel.get("memClockHz"),
                power_w=tel.get("powerW"),
                power_limit_w=tel.get("powerLimitW"),
                temperature_c=tel.get("temperatureC"),
                clock_event_reasons=reason_mask(tel["clockEventReasons"])
                if "clockEventReasons" in tel
                else None,
            ),
            base_speed=None if speed is None else float(speed) * scale,
            drift_state=str(drift.get("state") or "Stable"),
            time_scale=scale,
            drift_since=parse_time(drift.get("since")),
            drift_reason=str(drift.get("reason") or ""),
        )
    return out
