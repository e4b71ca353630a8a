"""Prometheus metrics of the operator (``vibe_`` prefix), served on ``--metrics-addr``:``--metrics-port``.

Role: what an SRE graphs and alerts on. Per MoEDeployment (labels ``namespace``, ``name``): the
predicted step time of the placement in service, its imbalance, gap to the lower bound, gain over the
baseline policy, its generation, and the moves made; drift decisions by kind; reconcile duration and
errors by reason. Series of a deleted MoEDeployment are removed (``forget``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from vibe import metrics_http

REGISTRY = CollectorRegistry(auto_describe=True)
_L = ("namespace", "name")

STEP_SECONDS = Gauge(
    "vibe_placement_predicted_step_seconds",
    "Predicted MoE time per forward step of the placement in service",
    _L,
    registry=REGISTRY,
)
IMBALANCE = Gauge(
    "vibe_placement_imbalance_ratio",
    "Mean over layers of max/mean GPU time (1 = balanced)",
    _L,
    registry=REGISTRY,
)
GAP = Gauge(
    "vibe_placement_gap_to_bound_ratio", "Predicted step time / lower bound - 1", _L, registry=REGISTRY
)
GAIN = Gauge(
    "vibe_placement_gain_vs_baseline_ratio",
    "1 - step time / step time of the baseline (token-balanced) policy",
    _L,
    registry=REGISTRY,
)
GENERATION = Gauge("vibe_placement_generation", "Placement generation in service", _L, registry=REGISTRY)
READY = Gauge("vibe_deployment_ready", "1 when the Ready condition is True", _L, registry=REGISTRY)
DEGRADED = Gauge(
    "vibe_deployment_degraded", "1 when Degraded is True (label: reason)", (*_L, "reason"), registry=REGISTRY
)
MOVES = Counter("vibe_placement_moves", "Expert slots changed by re-placements", _L, registry=REGISTRY)
WRITES = Counter(
    "vibe_placement_writes", "Placement ConfigMap writes (label: reason)", (*_L, "reason"), registry=REGISTRY
)
DRIFT = Counter(
    "vibe_drift_events",
    "Drift evaluations by kind (PerformanceDrift, WorkloadDrift) and decision",
    (*_L, "kind", "decision"),
    registry=REGISTRY,
)
RECONCILE = Histogram(
    "vibe_reconcile_duration_seconds",
    "Duration of one reconcile (label: outcome)",
    ("outcome",),
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
ERRORS = Counter(
    "vibe_reconcile_errors", "Reconciles that ended in a problem or an error", ("reason",), registry=REGISTRY
)

WORKER_RESTARTS = Counter(
    "vibe_placement_worker_restarts",
    "Placement worker pools rebuilt after a worker process died or overran its deadline (label: lane)",
    ("lane",),
    registry=REGISTRY,
)
COMPUTE_HEALTHY = Gauge(
    "vibe_placement_workers_healthy",
    "1 while the placement worker pool of a lane works (0: it cannot be rebuilt; liveness fails)",
    ("lane",),
    registry=REGISTRY,
)


def serve(port: int, addr: str = "0.0.0.0") -> Any:
    """Serve ``/metrics`` on ``addr:port`` (bounded connections, timeouts: ``vibe.metrics_http``)."""
    return metrics_http.serve(REGISTRY, port, addr) if port else None


def record(namespace: str, name: str, status: Mapping[str, Any]) -> None:
    """Set the per-deployment gauges from its new status."""
    p = status.get("predicted") or {}
    labels = (namespace, name)
    for gauge, key in (
        (STEP_SECONDS, "stepTimeSeconds"),
        (IMBALANCE, "imbalance"),
        (GAP, "gapToBound"),
        (GAIN, "gainVsBaseline"),
    ):
        if isinstance(p.get(key), (int, float)):
            gauge.labels(*labels).set(p[key])
    if "placementGeneration" in status:
        GENERATION.labels(*labels).set(status["placementGeneration"])
    conds = {c["type"]: c for c in status.get("conditions") or ()}
    READY.labels(*labels).set(1 if conds.get("Ready", {}).get("status") == "True" else 0)
    _clear(DEGRADED, labels)
    deg = conds.get("Degraded")
    if deg and deg.get("status") == "True":
        DEGRADED.labels(*labels, deg.get("reason", "")).set(1)


def forget(namespace: str, name: str) -> None:
    """Drop every series of a deleted MoEDeployment."""
    for metric in (STEP_SECONDS, IMBALANCE, GAP, GAIN, GENERATION, READY, MOVES, DEGRADED, WRITES, DRIFT):
        _clear(metric, (namespace, name))


#: Label names after (namespace, name) of the per-deployment families that have more.
_EXTRA_LABELS: dict[Any, tuple[str, ...]] = {
    DEGRADED: ("reason",),
    WRITES: ("reason",),
    DRIFT: ("kind", "decision"),
}


def _clear(metric: Any, prefix: tuple[str, ...]) -> None:
    """Remove every child of ``metric`` whose first label values are ``prefix``, with prometheus_client's
    public API: the children are read from ``collect()`` (a Counter also yields ``_created`` samples with
    the same labels) and removed with ``remove()``."""
    names = (*_L, *_EXTRA_LABELS.get(metric, ()))
    children = {
        tuple(sample.labels[n] for n in names)
        for family in metric.collect()
        for sample in family.samples
        if all(n in sample.labels for n in names)
    }
    for values in children:
        if values[: len(prefix)] == prefix:
            metric.remove(*values)
