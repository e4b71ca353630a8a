"""The agent's main loop: step the node agents, publish what changed, heartbeat, follow model shapes.

Role in the data flow: between the node agents (pure decisions) and the publisher (API calls). One runner
drives one real node or many simulated ones with the same loop:

* at start each agent reads its Node (owner reference, GPU count check) and resumes its published profile;
* every ``poll_seconds`` each node agent ``step``s (NVML reads, drift detection, benchmarks when due);
* a node whose profile content changed is applied (server-side apply; an unchanged body is not sent at
  all), its conditions applied to ``status`` when they changed, its queued Events posted. A failed
  write is retried with exponential backoff (1 s doubling to 5 min), so a profile the API server refuses
  (422) is not re-sent every second;
* heartbeats renew each node's Lease every ``heartbeat_seconds``, staggered evenly over the period so
  1,000 simulated nodes make ~33 requests/s instead of 1,000 every 30 s, from their own thread, so
  neither a benchmark that holds the loop for a minute nor a profile write that keeps failing stops
  liveness; every ``exists_every``-th beat also checks (metadata only) that the profile still exists
  and re-creates it when it does not (a re-created CRD, a deleted object);
* every ``shapes_seconds`` the MoEDeployments are listed and the expert shapes of those that select this
  node handed to the agents (benchmarked when each GPU is next free; shapes no longer used are pruned).

API calls run on a small thread pool behind the publisher's rate limiter; a failed call is logged and
retried, never fatal (the API server may restart under us).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from vibe.agent.node import NodeAgent
from vibe.agent.publish import Publisher
from vibe.agent.shapes import ExpertShape, shapes_for_node

log = logging.getLogger("vibe.agent.runner")


@dataclass
class RunnerConfig:
    poll_seconds: float = 1.0
    heartbeat_seconds: int = 30
    shapes_seconds: float = 300.0  # 0 = never list MoEDeployments
    workers: int = 8
    exists_every: int = 4  # check the profile still exists every this many heartbeats
    retry_max_s: float = 300.0  # longest backoff between failed profile writes
    pods_seconds: float = 10.0  # ask the kubelet's pod-resources API this often (with a reader)


#: The CRD's limit of curves per GPU (spec.gpus[].curves maxItems).
MAX_CURVES = 32


class Runner:
    def __init__(
        self,
        agents: Sequence[NodeAgent],
        publisher: Publisher | None,
        cfg: RunnerConfig | None = None,
        base_shapes: Sequence[ExpertShape] = (),
        pod_resources: Any = None,
    ) -> None:
        self.agents = list(agents)
        self.publisher = publisher
        self.cfg = cfg or RunnerConfig()
        self.base_shapes = list(base_shapes) or (self.agents[0].shapes if self.agents else [])
        self.stop = threading.Event()
        self.pool = ThreadPoolExecutor(
            max_workers=max(1, self.cfg.workers), thread_name_prefix="vibe-publish"
        )
        self.pending: dict[str, Future[None]] = {}
        self.published: set[str] = set()  # nodes whose profile exists (Events and conditions may go)
        self.unsent: dict[str, list[Any]] = {}  # Events of a failed publish, sent with the next one
        self.applied: dict[str, str] = {}  # node -> hash of the body last applied (unchanged: not sent)
        self.sent_conditions: dict[str, list[dict[str, Any]]] = {}  # node -> status conditions last applied
        self.failures: dict[str, int] = {}  # node -> profile writes failed in a row
        self.retry_at: dict[str, float] = {}  # node -> monotonic time before which no write is retried
        self.errors = 0
        self.steps = 0
        self._hb_thread: threading.Thread | None = None
        self._last_shapes = 0.0
        self.pod_resources = pod_resources  # a vibe.agent.podresources.PodResourcesReader, real nodes only
        self._last_pods = -1e9

    # -- start ---------------------------------------------------------------------------------------

    def start(self) -> None:
        """Resume published profiles (agent restart), follow current shapes, then the first step."""
        if self.publisher is not None:
            pub = self.publisher
            facts = {a.node: self.pool.submit(pub.node, a.node) for a in self.agents}
            for a in self.agents:
                try:
                    a.set_node(facts[a.node].result())
                except Exception as e:
                    log.warning("node %s: cannot read the Node (%s)", a.node, _short(e))
                    a.set_node(None)
            futures = {a.node: self.pool.submit(pub.read, a.cfg.namespace, a.node) for a in self.agents}
            for a in self.agents:
                try:
                    published = futures[a.node].result()
                    if published is not None:
                        self.sent_conditions[a.node] = list(
                            (published.get("status") or {}).get("conditions") or []
                        )
                    n = a.resume(published)
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

    def refresh_pods(self) -> None:
        """Which GPUs each pod holds (kubelet pod-resources), into the profile when it changed."""
        now = time.monotonic()
        if self.pod_resources is None or now - self._last_pods < self.cfg.pods_seconds:
            return
        self._last_pods = now
        for a in self.agents:
            pods = self.pod_resources.read(list(a.infos.values()))
            if pods is not None and pods != a.pods:
                a.pods = pods
                a.dirty = True

    def tick(self) -> None:
        self.refresh_pods()
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
        if time.monotonic() < self.retry_at.get(a.node, 0.0):
            return  # backing off after failed writes
        body, digest = None, ""
        if a.dirty:
            b = a.body()
            # The CRD wants curves: publish once a GPU is measured, or at once to say it sees no GPUs.
            if b["spec"]["gpus"] or a.publish_empty:
                a.dirty = False
                digest = hashlib.sha256(json.dumps(b, sort_keys=True).encode()).hexdigest()
                if self.applied.get(a.node) != digest:
                    body = b
        conditions: list[dict[str, Any]] | None = a.condition_list()
        if conditions == self.sent_conditions.get(a.node, []):
            conditions = None
        retry = self.unsent.pop(a.node, [])
        exists = body is not None or a.node in self.published
        if not exists or (body is None and not (a.events or retry or conditions is not None)):
            self.unsent[a.node] = retry
            return  # Events and conditions are about the profile: they wait until it exists
        events = retry + list(a.events)
        a.events.clear()
        self.pending[a.node] = self.pool.submit(self._send, a, body, digest, conditions, events)

    def _send(
        self,
        a: NodeAgent,
        body: dict[str, Any] | None,
        digest: str,
        conditions: list[dict[str, Any]] | None,
        events: list[Any],
    ) -> None:
        pub = self.publisher
        assert pub is not None
        ns = a.cfg.namespace
        try:
            if body is not None:
                pub.apply(body)
                self.applied[a.node] = digest
                if a.node not in self.published:
                    self.published.add(a.node)
                    pub.heartbeat(ns, a.node, time.time(), a.cfg.heartbeat_seconds)
            if conditions is not None:
                pub.status(ns, a.node, conditions)
                self.sent_conditions[a.node] = conditions
            for ev in events:
                pub.event(ns, a.node, ev)
            self.failures.pop(a.node, None)
            self.retry_at.pop(a.node, None)
        except Exception as e:
            self.errors += 1
            if body is not None:
                a.dirty = True
            n = self.failures[a.node] = self.failures.get(a.node, 0) + 1
            wait = min(self.cfg.retry_max_s, 2.0 ** (n - 1))
            self.retry_at[a.node] = time.monotonic() + wait
            # Read by the loop only once this call is done (one request chain per node).
            self.unsent[a.node] = events[-100:]
            log.warning("node %s: publishing failed (%s); retrying in %.0f s", a.node, _short(e), wait)

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
        if time.monotonic() < self.retry_at.get(a.node, 0.0):
            return False
        measured = any(r.curves for r in a.records.values()) or a.publish_empty
        queued = bool(a.events or self.unsent.get(a.node))
        queued = queued or a.condition_list() != self.sent_conditions.get(a.node, [])
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
        beats = [0] * n
        while not self.stop.is_set():
            k = min(range(n), key=due.__getitem__)
            if self.stop.wait(max(0.0, due[k] - time.monotonic())):
                return
            a = self.agents[k]
            due[k] += period
            beats[k] += 1
            try:
                pub.heartbeat(a.cfg.namespace, a.node, time.time(), a.cfg.heartbeat_seconds)
            except Exception as e:
                self.errors += 1
                log.warning("node %s: heartbeat failed (%s)", a.node, _short(e))
            if a.node in self.published and beats[k] % max(1, self.cfg.exists_every) == 0:
                self._check_exists(a)

    def _check_exists(self, a: NodeAgent) -> None:
        """Re-create the profile when it is gone (404: its CRD was re-created, or it was deleted)."""
        pub = self.publisher
        assert pub is not None
        try:
            if pub.exists(a.cfg.namespace, a.node):
                return
        except Exception as e:
            log.warning("node %s: cannot check its GPUProfile (%s)", a.node, _short(e))
            return
        log.warning(
            "node %s: its GPUProfile is gone (deleted, or its CRD re-created); re-creating it", a.node
        )
        self.published.discard(a.node)
        self.applied.pop(a.node, None)
        self.sent_conditions.pop(a.node, None)
        self.retry_at.pop(a.node, None)
        a.dirty = True

    def refresh_shapes(self, force: bool = False) -> None:
        if self.publisher is None or self.cfg.shapes_seconds <= 0:
            return
        now = time.monotonic()
        if not force and now - self._last_shapes < self.cfg.shapes_seconds:
            return
        self._last_shapes = now
        try:
            bodies = self.publisher.moedeployments()
        except Exception as e:
            log.info("cannot list MoEDeployments (%s); benchmarking the default shapes", _short(e))
            return
        for a in self.agents:
            labels = a.facts.labels if a.facts is not None else None
            shapes, dropped = shapes_for_node(bodies, a.node, labels, self.base_shapes, MAX_CURVES)
            if [s.key for s in a.shapes] != [s.key for s in shapes] or bool(dropped) != a.capped:
                a.set_shapes(shapes, dropped)


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]
