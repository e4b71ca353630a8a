"""A deleted MoEDeployment's series go, with prometheus_client's public API; other deployments' stay."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import generate_latest

from vibe.operator import metrics


def test_forget_removes_only_that_deployments_series() -> None:
    for ns, name in (("f-ns", "gone"), ("f-ns", "kept")):
        metrics.READY.labels(ns, name).set(1)
        metrics.DEGRADED.labels(ns, name, "StaleGPUProfile").set(1)
        metrics.WRITES.labels(ns, name, "Initial").inc()
        metrics.DRIFT.labels(ns, name, "PerformanceDrift", "Replaced").inc()
        metrics.MOVES.labels(ns, name).inc(3)
    metrics.forget("f-ns", "gone")
    text = generate_latest(metrics.REGISTRY).decode()
    assert 'name="gone"' not in text
    for family in ("vibe_deployment_ready", "vibe_deployment_degraded", "vibe_placement_writes_total",
                   "vibe_drift_events_total", "vibe_placement_moves_total"):  # fmt: skip
        assert re.search(rf'^{family}\{{[^}}]*name="kept"', text, re.MULTILINE), family
    metrics.forget("f-ns", "kept")


def test_no_private_prometheus_client_attributes() -> None:
    source = (Path(metrics.__file__)).read_text()
    assert "._metrics" not in source
