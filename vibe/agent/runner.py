"""The agent's main loop: step the node agents, publish what changed, heartbeat, follow model shapes.

Role in the data flow: between the node agents (pure decisions) and the publisher (API calls). One runner
drives one real node or many simulated ones with the same loop:

* every ``poll_seconds`` each node agent ``step``s (NVML reads, drift detection, benchmarks when due);
* a node whose spec changed is applied (server-side apply), its queued Events posted;
* heartbeats go out every ``heartbeat_seconds`` per node, staggered evenly over the period so 1,000
  simulated nodes make ~33 requests/s instead of 1,000 every 30 s, from their own thread, so a
  benchmark that holds the loop for a minute never makes a profile look stale;
* every ``shapes_seconds`` the MoEDeployments are listed and new expert shapes handed to the agents
  (benchmarked when each GPU is next free).

API calls run on a small thread pool behind the publisher's rate limiter; a failed call is logged and
retried on the next change or heartbeat, never fatal (the API server may restart under us).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from vibe.agent.node import NodeAgent
from vibe.agent.publish import Publisher
from vibe.agent.shapes import ExpertShape, dedupe, shapes_from_moedeployments, with_all_dtypes

log = logging.getLogger("vibe.agent.runner")


@dataclass
class RunnerConfig:
    poll_seconds: float = 1.0
    heartbeat_seconds: int = 30
    shapes_seconds: float = 300.0  # 0 = never list MoEDeployments
    workers: int = 8


class Runner:
    def __init__(
        self,
        agents: Sequence[NodeAgent],
        publisher: Publisher | None,
        cfg: RunnerConfig | None = None,
        base_shapes: Sequence[ExpertShape] = (),
    ) -> None:
        self.agents = list(agents)
        self.publisher = publisher
        self.cfg = cfg or RunnerConfig()
        self.base_shapes = list(base_shapes) or (self.agents[0].shapes if self.agents else [])
        self.stop = threading.Event()
        self.pool = ThreadPoolExecutor(
            max_workers=max(1, self.cfg.workers), thread_name_prefix="vibe-publish"
        )
        self.pending: dict[str, Future] = {}
        self.published: set[str] = set()  # nodes whose profile exists (heartbeats may go)
        self.unsent: dict[str, list] = {}  # Events of a failed publish, sent with the next one
        self.errors = 0
        self.steps = 0
        self._hb_thread: threading.Thread | None = None
        self._last_shapes = 0.0

    # -- start ---------------------------------------------------------------------------------------

    def start(self) -> None:
        """Resume published profiles (agent restart), follow current shapes, then the first step."""
        if self.publisher is not None:
            futures = {
                a.node: self.pool.submit(self.publisher.read, a.cfg.namespace, a.node) for a in self.agents
            }
            for a in self.agents:
                try:
                    n = a.resume(futures[a.node].result())
                    if n:
                        log.info(
                            "node %s: resumed %d GPU profile(s) from the published GPUProfile", a.node, n
                        )
                except Exception as e:
                    log.warning("node %s: cannot read its GPUProfile (%s); benchmarking afresh", a.node, e)
        self.refresh_shapes(force=True)
        self.tick()
        self.flush()
        if self.publisher is not None and self.cfg.heartbeat_seconds > 0:
            self._hb_thread = threading.Thread(target=self._heartbeats, name="vibe-heartbeat", daemon=True)
            self._hb_thread.start()

    def run(self, duration: float | None = None) -> None:
        """Loop until ``stop`` is set (SIGTERM) or ``duration`` seconds passed."""
        t_end = None if duration is None else time.monotonic() + duration
        next_t = time.monotonic()
        while not self.stop.is_set():
            next_t += self.cfg.poll_seconds
            wait = next_t - time.monotonic()
            if wait < 0:  # a benchmark or a huge fleet held the loop: do not try to catch up
                next_t = time.monotonic()
                wait = 0
            if t_end is not None and next_t > t_end:
                self.stop.wait(max(0.0, t_end - time.monotonic()))
                break
            if self.stop.wait(wait):
                break
            self.refresh_shapes()
            self.tick()
        self.flush()

    def close(self) -> None:
        self.stop.set()
        if self._hb_thread is not None:
            self._hb_thread.join(timeout=5)
        self.flush()
        self.pool.shutdown(wait=True)

    # -- one tick --------------------------------------------------------------------------------------

    def tick(self) -> None:
        for a in self.agents:
            try:
                a.step()
            except Exception:
                log.exception("node %s: step failed", a.node)
            if self.publisher is None:
                a.dirty = False
                a.events.clear()
                continue
            self._publish(a)
        self.steps += 1

    def _publish(self, a: NodeAgent) -> None:
        prev = self.pending.get(a.node)
        if prev is not None and not prev.done():
            return  # one request chain per node at a time; the next tick picks up what changed
        body = None
        if a.dirty:
            b = a.body()
            if b["spec"]["gpus"]:  # the CRD wants curves: publish once a GPU is measured
                body, a.dirty = b, False
        retry = self.unsent.pop(a.node, [])
        if body is None and (a.node not in self.published or not (a.events or retry)):
            self.unsent[a.node] = retry
            return  # Events are about the profile: they wait until it exists
        events = retry + list(a.events)
        a.events.clear()
        self.pending[a.node] = self.pool.submit(self._send, a, body, events)

    def _send(self, a: NodeAgent, body: dict | None, events: list) -> None:
        pub = self.publisher
        assert pub is not None
        ns = a.cfg.namespace
        try:
            if body is not None:
                pub.apply(body)
                if a.node not in self.published:
                    self.published.add(a.node)
                    pub.heartbeat(ns, a.node, time.time(), a.cfg.heartbeat_seconds)
            for ev in events:
                pub.event(ns, a.node, ev)
        except Exception as e:
            self.errors += 1
            if body is not None:
                a.dirty = True
            # Read by the loop only once this call is done (one request chain per node).
            self.unsent[a.node] = events[-100:]
            log.warning("node %s: publishing failed (%s); retrying on the next tick", a.node, _short(e))

    def flush(self, timeout: float = 60.0) -> None:
        """Wait for in-flight publishes (and publish what is still dirty)."""
        if self.publisher is None:
            return
        deadline = time.monotonic() + timeout
        for _ in range(3):
            for f in list(self.pending.values()):
                f.result(timeout=max(0.1, deadline - time.monotonic()))
            if not any(self._has_work(a) for a in self.agents):
                return
            for a in self.agents:
                self._publish(a)

    def _has_work(self, a: NodeAgent) -> bool:
        measured = any(r.curves for r in a.records.values())
        queued = bool(a.events or self.unsent.get(a.node))
        return (a.dirty and measured) or (queued and a.node in self.published)

    # -- heartbeats and shapes -------------------------------------------------------------------------

    def _heartbeats(self) -> None:
        """Each node's heartbeat every period, node k offset by k/N of it (see the module docstring)."""
        pub = self.publisher
        assert pub is not None  # started only with a publisher
        period = float(self.cfg.heartbeat_seconds)
        n = max(1, len(self.agents))
        t0 = time.monotonic()
        due = [t0 + period * (k / n) for k in range(n)]
        while not self.stop.is_set():
            k = min(range(n), key=due.__getitem__)
            if self.stop.wait(max(0.0, due[k] - time.monotonic())):
                return
            a = self.agents[k]
            due[k] += period
            if a.node not in self.published:
                continue
            try:
                pub.heartbeat(a.cfg.namespace, a.node, time.time(), a.cfg.heartbeat_seconds)
            except Exception as e:
                self.errors += 1
                log.warning("node %s: heartbeat failed (%s)", a.node, _short(e))

    def refresh_shapes(self, force: bool = False) -> None:
        if self.publisher is None or self.cfg.shapes_seconds <= 0:
            return
        now = time.monotonic()
        if not force and now - self._last_shapes < self.cfg.shapes_seconds:
            return
        self._last_shapes = now
        try:
            served = shapes_from_moedeployments(self.publisher.moedeployments())
        except Exception as e:
            log.info("cannot list MoEDeployments (%s); benchmarking the default shapes", _short(e))
            return
        shapes = dedupe([*self.base_shapes, *with_all_dtypes(served)])
        for a in self.agents:
            if [s.key for s in a.shapes] != [s.key for s in shapes]:
                a.set_shapes(shapes)


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]
