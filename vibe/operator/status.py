"""A MoEDeployment's status and the Events worth posting, from what one reconcile observed. Pure.

Role: the last step of a reconcile. ``observe`` returns the whole new status (figures from the
placement ConfigMap's summary, so status can always be rebuilt from the cluster after a restart) and
the Events: one per placement written, one per new drift decision, one per condition that turned bad.
``merge_patch`` turns old and new status into the JSON merge patch that changes only what differs
(none at all when nothing changed, so a reconcile that finds nothing to do writes nothing).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vibe.operator import conditions as cond
from vibe.operator.clock import iso
from vibe.operator.conditions import Condition
from vibe.operator.gpus import Resolution
from vibe.operator.output import InService
from vibe.operator.planning import WRITE, Plan, prior_drift_or_none
from vibe.operator.problems import Problem
from vibe.operator.workload import Loads


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Observation:
    """What one reconcile saw and did."""

    generation: int
    placement_key: str  # the spec's, to tell whether the ConfigMap is for the current spec
    config_map: str
    in_service: InService | None  # after this reconcile's write, if any
    resolution: Resolution | None = None
    loads: Loads | None = None
    plan: Plan | None = None
    problem: Problem | None = None
    profile_ttl_s: float = 300.0


def observe(
    old: Mapping[str, Any] | None, obs: Observation, *, now: str
) -> tuple[dict[str, Any], list[Event]]:
    """(new status, Events) for an observation; ``old`` is the status before it."""
    old = dict(old or {})
    # The placement in service: intact, though perhaps unreadable under a changed spec (another slot
    # count or model), in which case it still serves the previous spec and its figures stay shown.
    cm = obs.in_service if obs.in_service is not None and obs.in_service.intact else None
    current = cm is not None and cm.placement is not None and cm.keys.placement == obs.placement_key
    status: dict[str, Any] = {
        k: v for k, v in old.items() if k in ("gpus", "nodes", "curveSource", "loadsSource")
    }
    status["observedGeneration"] = obs.generation
    status["configMap"] = obs.config_map
    if obs.resolution is not None:
        status["gpus"] = len(obs.resolution.gpus)
        status["nodes"] = obs.resolution.nodes
        status["curveSource"] = obs.resolution.curve_source
    if obs.loads is not None:
        status["loadsSource"] = obs.loads.source
    if cm is not None:
        s = cm.summary
        status["placementGeneration"] = cm.generation
        status["contentHash"] = cm.content_hash
        status["predicted"] = {k: s[k] for k in _PREDICTED if k in s}
        status["lastReplacement"] = {
            k: v
            for k, v in {
                "time": iso(cm.placed_at) if cm.placed_at else None,
                "reason": s.get("reason"),
                "message": s.get("message"),
                "moves": s.get("moves"),
                "gain": (s.get("drift") or {}).get("gain"),
            }.items()
            if v is not None
        }
    elif "placementGeneration" in old:  # the ConfigMap is gone: keep the generation counter visible
        status["placementGeneration"] = old["placementGeneration"]

    drift = _drift_of(obs, old)
    if drift is not None:
        status["drift"] = drift

    new_conds = _conditions(obs, cm, current, drift)
    status["conditions"] = cond.merge(old.get("conditions"), new_conds, generation=obs.generation, now=now)
    return status, _events(old, status, obs, drift)


def merge_patch(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """Top-level JSON merge patch from ``old`` to ``new`` status ({} when equal)."""
    old = dict(old or {})
    patch: dict[str, Any] = {k: v for k, v in new.items() if old.get(k) != v}
    patch.update({k: None for k in old if k not in new})
    return patch


# --------------------------------------------------------------------------------------------------

_PREDICTED = (
    "objective",
    "stepMix",
    "dispatch",
    "routingSamples",
    "meanLoadStepTimeSeconds",
    "stepTimeSeconds",
    "layerTimeSeconds",
    "imbalance",
    "lowerBoundSeconds",
    "gapToBound",
    "gainVsBaseline",
    "gainVsBaselinePercent",
    "solveSeconds",
    "baseline",
)


def _drift_of(obs: Observation, old: Mapping[str, Any]) -> dict[str, Any] | None:
    # Not evaluated this time (a problem stopped it): keep what was shown.
    shown = obs.plan.drift if obs.plan is not None else old.get("drift")
    return prior_drift_or_none(shown if isinstance(shown, Mapping) else None)


def _conditions(
    obs: Observation, cm: InService | None, current: bool, drift: Mapping[str, Any] | None
) -> list[Condition]:
    notes = _notes(obs)
    p = obs.problem
    res = obs.resolution
    out: list[Condition] = []
    if cm is not None and current:
        s = cm.summary
        msg = (
            f"placement generation {cm.generation} in ConfigMap {obs.config_map}: {s.get('policy')} on "
            f"{_gpus_of(cm, res)} GPUs, {_ms(s.get('stepTimeSeconds'))} per step predicted "
            f"(bound {_ms(s.get('lowerBoundSeconds'))}, gap {_pct(s.get('gapToBound'))}), "
            f"{_pct(s.get('gainVsBaseline'))} faster than {(s.get('baseline') or {}).get('policy')}"
        )
        out.append(Condition("Ready", True, "Placed", "; ".join([msg, *notes])))
    else:
        reason = p.reason if p is not None else "Pending"
        msg = p.message if p is not None else "no placement yet"
        if cm is not None:
            msg += f"; the placement for the previous spec (generation {cm.generation}) stays in service"
        out.append(Condition("Ready", False, reason, msg))

    keep = f"; keeping placement generation {cm.generation}" if cm is not None else ""
    if p is not None:
        out.append(Condition("Degraded", True, p.reason, p.message + keep))
    elif res is not None and res.stale_nodes:
        n = res.stale_nodes
        msg = (
            f"GPUProfiles of {len(n)} node(s) ({', '.join(n[:3])}{'…' if len(n) > 3 else ''}) "
            "have no heartbeat "
            f"for over {obs.profile_ttl_s:.0f} s (is the vibe agent running?){keep}"
        )
        out.append(Condition("Degraded", True, "StaleGPUProfile", msg))
    else:
        out.append(Condition("Degraded", False, "InputsHealthy", "GPU profiles fresh, loads readable"))

    if drift is not None:
        message = str(drift.get("message") or "") or (
            f"{drift.get('kind')}: the placement in service is predicted {_pct(drift.get('loss'))} slower; "
            f"decision {drift.get('decision')} (gain {_pct(drift.get('gain'))})"
        )
        out.append(Condition("Drifted", True, str(drift.get("kind")), message))
    elif obs.plan is not None:
        replaced = obs.plan.action == WRITE and obs.plan.reason == "Replaced"
        out.append(
            Condition(
                "Drifted",
                False,
                "Replaced" if replaced else "NoDrift",
                obs.plan.message if replaced else "the placement in service matches the current inputs",
            )
        )
    return out


def _events(
    old: Mapping[str, Any], new: Mapping[str, Any], obs: Observation, drift: Mapping[str, Any] | None
) -> list[Event]:
    events: list[Event] = []
    plan = obs.plan
    if plan is not None and plan.action == WRITE and obs.in_service is not None:
        s = obs.in_service.summary
        events.append(
            Event(
                "Normal",
                plan.reason,
                f"placement generation {obs.in_service.generation}: {plan.message}; "
                f"{_ms(s.get('stepTimeSeconds'))} per step predicted, {s.get('moves', 0)} moves, "
                f"{_pct(s.get('gainVsBaseline'))} faster than {(s.get('baseline') or {}).get('policy')}",
            )
        )
    old_drift = old.get("drift") or {}
    if drift is not None and (
        old_drift.get("inputHash") != drift.get("inputHash")
        or old_drift.get("decision") != drift.get("decision")
    ):
        events.append(Event("Normal", str(drift.get("decision")), str(drift.get("message") or "")))
    for c in cond.transitions(old.get("conditions"), new["conditions"]):
        bad = (c["type"] == "Ready" and c["status"] == "False" and c["reason"] != "Pending") or (
            c["type"] == "Degraded" and c["status"] == "True"
        )
        if bad and not any(e.reason == c["reason"] for e in events):
            events.append(Event("Warning", c["reason"], c["message"]))
    return events


def _notes(obs: Observation) -> list[str]:
    notes: list[str] = []
    if obs.resolution is not None:
        notes.extend(obs.resolution.notes)
    if obs.loads is not None and obs.loads.note:
        notes.append(obs.loads.note)
    return notes


def _gpus_of(cm: InService, res: Resolution | None) -> int:
    """GPUs of the placement in service: resolved now, else as the placement itself says."""
    if res is not None:
        return len(res.fleet)
    return cm.placement.num_gpus if cm.placement is not None else 0


def _ms(x: Any) -> str:
    return f"{float(x) * 1e3:.3f} ms" if isinstance(x, (int, float)) else "?"


def _pct(x: Any) -> str:
    return f"{float(x) * 100:.1f}%" if isinstance(x, (int, float)) else "?"
