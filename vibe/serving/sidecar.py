"""The sidecar loop: notice a new placement, check it, and hand it to the chosen policy -- never an older one.

Each tick (``Watcher.step``):

1. observe the ConfigMap -- from the mounted volume (one kubelet snapshot, hash from
   ``placement-meta.json``) or through the API (hash and generation from the annotations);
2. order it against what this pod applied (``state.decide``): only a strictly newer generation goes on;
   the same generation with other bytes, an older one, or one with no generation is reported, never applied;
3. fit it to the engine's settings (the init container's own checks, ``emit.prepare``): a placement for
   another EP size is reported and skipped -- restarting into it would only crash-loop the init container;
4. apply the policy; record the generation in the state file only after the policy succeeded, so a
   failed HTTP call or a refused patch is retried on the next tick.

A half-written placement cannot get through: the volume is read from one version directory, the API
returns one object, and both are checked against the writer's hash before anything else looks at them.
Reports are de-duplicated per placement, so a stuck bad placement leaves one Event, not one per tick.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from vibe import contract
from vibe.engines import EngineSettings
from vibe.serving import emit, snapshot, stamp, state
from vibe.serving.errors import ServingError
from vibe.serving.stamp import Stamp
from vibe.serving.update_policies import Policy, Reporter, Update

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Observation:
    """One consistent read of the placement ConfigMap."""

    data: dict[str, str]
    stamp: Stamp
    version: str


def observe_volume(mount: str) -> Callable[[], Observation]:
    """An observer of a mounted ConfigMap volume."""

    def read() -> Observation:
        snap = snapshot.read_snapshot(mount)
        return Observation(snap.data, stamp.stamp_from_data(snap.data), snap.version)

    return read


def observe_api(api: object, namespace: str, name: str) -> Callable[[], Observation]:
    """An observer of a ConfigMap through the API (annotations included)."""
    from vibe.serving import kube

    def read() -> Observation:
        data, annotations, version = kube.read_configmap(api, namespace, name)
        return Observation(data, stamp.stamp_from_object(data, annotations), version)

    return read


class Watcher:
    """Applies newer placements with a policy; see the module docstring for the rules.

    Args:
        observe: returns the current Observation (raises ServingError when it cannot).
        settings: the engine's settings, to fit the placement before applying it.
        documents: which formats to prepare (``vibe.engines`` names: "sglang", "trtllm", ...).
        policy: returns the policy to use now (read each time: the MoEDeployment may change it).
        report: ``(type, reason, message)`` -> log line + Event.
        state_dir: where the applied state lives (shared with the init container).
        engine_gpus: ``(node, gpu index)`` per engine rank, when the init container follows GPUs too.
    """

    def __init__(
        self,
        observe: Callable[[], Observation],
        settings: EngineSettings,
        documents: tuple[str, ...],
        policy: Callable[[], Policy],
        report: Reporter,
        state_dir: str,
        engine_gpus: list[tuple[str, int]] | None = None,
    ) -> None:
        self._observe = observe
        self._settings = settings
        self._documents = documents
        self._policy = policy
        self._report = report
        self._state_dir = state_dir
        self._engine_gpus = engine_gpus
        self.applied = state.load(state_dir)
        self._said: set[tuple[str, str]] = set()

    def _once(self, key: tuple[str, str], type_: str, reason: str, message: str) -> None:
        if key in self._said:
            return
        self._said.add(key)
        self._report(type_, reason, message)

    def step(self) -> str:
        """One look at the ConfigMap; returns what happened (a ``state.Verdict`` value or an error reason)."""
        try:
            obs = self._observe()
        except ServingError as e:
            kind = "Warning" if e.reason == "HashMismatch" else "Normal"
            self._once(("observe", e.message), kind, f"Placement{e.reason}", e.message)
            return e.reason
        data_hash = contract.content_hash(obs.data)
        gen = obs.stamp.generation
        if self.applied is None:
            # No init container recorded anything: the engine runs whatever it started with, which we
            # cannot know better than "the placement that is there now". Take it as the baseline.
            self.applied = state.successor(None, obs.stamp, data_hash, obs.version)
            state.save(self._state_dir, self.applied)
            log.info("no applied state; taking generation %s as the baseline", gen)
            return "baseline"
        verdict = state.decide(self.applied, obs.stamp, data_hash)
        if verdict is state.Verdict.SAME:
            if self.applied.data_hash != data_hash:  # the same placement re-stamped with its UID
                self.applied = state.successor(self.applied, obs.stamp, data_hash, obs.version)
                state.save(self._state_dir, self.applied)
            return verdict.value
        if verdict is not state.Verdict.APPLY:
            messages = {
                state.Verdict.OLDER: f"placement generation {gen} is older than the applied"
                f" {self.applied.generation}"
                + (
                    " (it belongs to a deleted incarnation of the MoEDeployment)"
                    if obs.stamp.uid in self.applied.retired
                    else ""
                )
                + "; not applying it",
                state.Verdict.CONFLICT: f"placement generation {gen} changed its bytes after it was applied;"
                " not applying a second version of the same generation",
                state.Verdict.UNORDERED: "placement changed but carries no generation (no placement-meta.json"
                " and no annotation); not applying what cannot be ordered",
            }
            self._once((data_hash, verdict.value), "Warning", "PlacementNotApplied", messages[verdict])
            return verdict.value
        assert gen is not None
        try:
            documents = emit.prepare(obs.data, self._settings, self._documents, engine_gpus=self._engine_gpus)
        except ServingError as e:
            self._once((data_hash, "fit"), "Warning", "PlacementMismatch", f"generation {gen}: {e.message}")
            return e.reason
        update = Update(gen, obs.stamp.content_hash or data_hash, documents, obs.stamp.uid)
        try:
            policy = self._policy()
            outcome = policy.apply(update)
        except ServingError as e:
            self._once(
                (data_hash, e.message), "Warning", "PlacementApplyFailed", f"generation {gen}: {e.message}"
            )
            return e.reason
        self.applied = state.successor(self.applied, obs.stamp, data_hash, obs.version)
        state.save(self._state_dir, self.applied)
        self._report("Normal", "PlacementApplied", f"generation {gen} via {policy.name}: {outcome}")
        return verdict.value

    def run(self, interval: float, stop: threading.Event | None = None) -> None:
        """Step every ``interval`` seconds until ``stop`` is set."""
        stop = stop or threading.Event()
        while not stop.is_set():
            try:
                self.step()
            except Exception:  # a bug must not end the sidecar silently: log and keep watching
                log.exception("unexpected error while checking the placement")
            stop.wait(interval)
