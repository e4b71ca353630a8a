"""The agent process put together: node agents (simulated or on GPUs), a publisher, metrics, the runner.

Role: the body of ``vibe agent run``, free of Typer so that it can be tested and reused. ``simulated``
and ``on_gpus`` make the ``NodeAgent`` objects (a fleet file's nodes, or this node's GPUs through NVML
and torch); ``publisher`` chooses where profiles go (the cluster, or files under a directory); ``run``
serves the metrics, drives the ``Runner`` until it is stopped (SIGTERM, ``duration``, or one step with
``once``) and shuts everything down. Heavy imports (torch, NVML, the Kubernetes client) happen inside.
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vibe.agent.node import AgentConfig, NodeAgent
    from vibe.agent.runner import Runner, RunnerConfig
    from vibe.agent.shapes import ExpertShape

log = logging.getLogger("vibe.agent")


def simulated(
    fleet_file: Path, cfg: AgentConfig, node: str | None = None, seed: int | None = None
) -> list[NodeAgent]:
    """The agents of a fleet file's nodes (or only ``node``: a DaemonSet pod, or the first node's GPUs
    under that name). ``OSError`` or ``SimulationError`` for a file that cannot be used."""
    from vibe import __version__
    from vibe.agent.node import NodeAgent
    from vibe.agent.simulate import SimProfiler, SimTelemetry, load_fleet

    fleet = load_fleet(fleet_file, seed=seed)
    t0: list[float] = []

    def clock() -> float:
        """Seconds since the first step: the drift schedule's "at" counts from when the agent runs."""
        if not t0:
            t0.append(time.monotonic())
        return time.monotonic() - t0[0]

    names = fleet.node_names()
    selected = {node: fleet.nodes.get(node) or fleet.nodes[names[0]]} if node else fleet.nodes
    agents = [
        NodeAgent(name, SimTelemetry(gpus, clock), SimProfiler(gpus, clock), cfg, version=__version__)
        for name, gpus in selected.items()
    ]
    log.info("simulating %d node(s), %d GPU(s)", len(agents), sum(len(a.infos) for a in agents))
    return agents


def on_gpus(node: str, cfg: AgentConfig) -> list[NodeAgent]:
    """This node's agent: NVML telemetry and torch benchmarks (disabled, with a reason, when the driver
    is too old for torch's CUDA; without NVML it logs why and sees no GPUs)."""
    from vibe import __version__
    from vibe.agent.bench import BenchConfig
    from vibe.agent.cuda import driver_problem, torch_cuda
    from vibe.agent.node import NodeAgent
    from vibe.agent.profiler import TorchProfiler
    from vibe.agent.telemetry import NvmlTelemetry

    telemetry = NvmlTelemetry.open()
    if not telemetry.available:
        log.error("no GPU telemetry (%s); use --simulate FILE on a node without GPUs", telemetry.error)
    too_old = driver_problem(telemetry.driver(), *torch_cuda())
    if too_old:
        log.error("%s", too_old)
    profiler = TorchProfiler(telemetry, BenchConfig(), disabled=too_old or "")
    agent = NodeAgent(node, telemetry, profiler, cfg, version=__version__)
    log.info("node %s: %d GPU(s)", node, len(agent.infos))
    return [agent]


def publisher(
    out_dir: Path | None = None,
    kubeconfig: Path | None = None,
    context: str | None = None,
    qps: float = 20.0,
    burst: int = 40,
) -> Any:
    """Files under ``out_dir``, else the cluster (``vibe.kubeclient``; ``CredentialsError`` without)."""
    if out_dir is not None:
        from vibe.agent.publish import DirPublisher

        return DirPublisher(out_dir)
    from vibe.agent.publish import KubePublisher
    from vibe.kubeclient import api_client

    api = api_client(str(kubeconfig) if kubeconfig is not None else None, context=context)
    return KubePublisher(api, qps=qps, burst=burst)


@dataclass(frozen=True)
class Metrics:
    """The Prometheus endpoint: ``port`` 0 is off; ``curves`` and ``telemetry`` choose the series."""

    port: int = 0
    addr: str = "0.0.0.0"
    curves: bool = False
    telemetry: bool = False


def run(
    agents: list[NodeAgent],
    publisher: Any,
    config: RunnerConfig,
    shapes: list[ExpertShape],
    *,
    metrics: Metrics = Metrics(),
    pod_resources_socket: str = "",
    once: bool = False,
    duration: float | None = None,
) -> Runner:
    """Run the agents until stopped (SIGTERM, Ctrl-C, ``duration``; one step with ``once``); return the
    finished runner (its ``steps`` and ``errors``)."""
    from vibe import __version__
    from vibe.agent.runner import Runner

    server = None
    if metrics.port:
        from vibe.agent.exporter import AgentCollector, serve

        collector = AgentCollector(
            lambda: agents, curves=metrics.curves, telemetry=metrics.telemetry, version=__version__
        )
        server = serve(collector, metrics.port, metrics.addr)
        log.info("metrics on %s:%d/metrics", metrics.addr, metrics.port)
    reader = None
    if pod_resources_socket:
        from vibe.agent.podresources import PodResourcesReader

        reader = PodResourcesReader(pod_resources_socket)
    runner = Runner(agents, publisher, config, base_shapes=shapes, pod_resources=reader)
    signal.signal(signal.SIGTERM, lambda *_: runner.stop.set())
    try:
        runner.start()
        if not once:
            runner.run(duration)
    except KeyboardInterrupt:
        pass
    finally:
        runner.close()
        if server is not None:
            server.shutdown()
    log.info("stopped after %d step(s), %d publish error(s)", runner.steps, runner.errors)
    return runner
