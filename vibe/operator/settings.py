"""Run-time settings of the operator: ``vibe operator`` flags, or the environment under plain ``kopf run``.

Role: the one object every layer reads its knobs from. The CLI fills ``CURRENT`` before Kopf starts; the
startup handler falls back to ``from_env`` so ``kopf run -m vibe.operator.handlers`` works too.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class OperatorSettings:
    #: Namespace of the GPUProfiles (the agent's namespace).
    profile_namespace: str = "vibe-system"
    #: A GPUProfile whose heartbeat is older than this is stale (Degraded=True, placement kept).
    profile_ttl_s: float = 300.0
    #: Port of the Prometheus metrics endpoint (0: none).
    metrics_port: int = 8080
    #: Address it binds (127.0.0.1: only inside the pod; the metrics name every MoEDeployment).
    metrics_addr: str = "0.0.0.0"
    #: Search budget per solve (the engine counts it as deterministic work, not wall time).
    solve_budget_s: float = 1.0
    #: Every deployment is reconciled at least this often (stale heartbeats are only seen this way).
    resync_s: float = 60.0
    #: Retry backoff after a problem: first delay, doubling, capped (a worker also resyncs every
    #: ``resync_s``, so a retry never waits longer than that: a fix nobody watches, such as a node
    #: label, is still seen within one resync).
    backoff_initial_s: float = 5.0
    backoff_max_s: float = 300.0
    #: Worker processes for placement work (0: threads in the operator's process).
    compute_processes: int = field(default_factory=lambda: default_compute_processes())
    #: Credentials of Kopf's watches and of the reconciler's client (``vibe.kubeclient``): a kubeconfig
    #: file and a context in it; ``None``: in-cluster service account, then ``$KUBECONFIG``.
    kubeconfig: str | None = None
    context: str | None = None

    @classmethod
    def from_env(cls) -> OperatorSettings:
        env = os.environ
        return cls(
            profile_namespace=env.get("VIBE_PROFILE_NAMESPACE", cls.profile_namespace),
            profile_ttl_s=float(env.get("VIBE_PROFILE_TTL", cls.profile_ttl_s)),
            metrics_port=int(env.get("VIBE_METRICS_PORT", cls.metrics_port)),
            metrics_addr=env.get("VIBE_METRICS_ADDR", cls.metrics_addr),
            solve_budget_s=float(env.get("VIBE_SOLVE_BUDGET", cls.solve_budget_s)),
            resync_s=float(env.get("VIBE_RESYNC_SECONDS", cls.resync_s)),
            compute_processes=int(env.get("VIBE_COMPUTE_PROCESSES", default_compute_processes())),
        )


def available_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (a container's
    ``resources.limits.cpu``), rounded up. ``os.cpu_count()`` would count every core of the node."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota visible: the affinity is the limit
    return max(1, cpus)


def default_compute_processes() -> int:
    """Placement worker processes: one per usable CPU, at most 4."""
    return min(4, available_cpus())


#: Set by ``vibe operator`` before Kopf starts.
CURRENT: OperatorSettings | None = None
