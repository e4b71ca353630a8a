"""What to do about one MoEDeployment, given its inputs now and the placement in service. Pure.

Role: the decision at the heart of a reconcile, kept free of Kubernetes so it can be tested directly.
The reconciler gathers ``Inputs`` (spec, resolved GPUs, loads) and the ``InService`` ConfigMap and gets a
``Plan``: write this data (and why), or write nothing (and what to report). In order:

1. No placement in service, or the spec's placement fields changed (``placement-key``), or the one in
   service cannot be read back: solve from scratch with the spec's policy (aligned to the old placement
   when shapes allow, so unchanged experts stay in their slots). Reason ``Placed``.
2. Same inputs as the placement in service: nothing (this is what makes the operator idempotent).
3. Some GPU profile is stale: nothing; the last placement stays (the reconciler sets ``Degraded``).
4. The GPUs themselves changed (a pod moved, a node was replaced): the data in service names the wrong
   GPUs, so re-place incrementally from it right away (no gain threshold, no cooldown). ``GPUsChanged``.
5. The loads or the curves changed (workload or performance drift): price the placement in service
   under the new inputs, compute the best incremental re-placement (``maxMoves``), and re-place only if
   ``gain = 1 - new / current >= minGain``, the re-placement pays for itself (``gain x holdingSeconds``,
   the serving time it saves while it holds, exceeds ``replacementCostSeconds``, the serving time a
   restart or an expert move costs; its default follows ``serving.onUpdate``) and the cooldown since
   ``placed-at`` has passed; else report ``Drifted`` with the measured loss and why. An evaluation
   already made for the same inputs is not repeated (unless it was waiting on the cooldown and the
   cooldown is over).

Every result is priced against the token-balanced (EPLB-style) baseline on the same inputs, and every
price is the **expected** step time over the spec's step mix under sampled routing (``step_mix_of``,
``routing_of``; ``vibe.placement.routing``). Incremental re-placement (4, 5) chooses its moves by the same
objective (``replace_incremental(..., routing=...)``: its walks' points priced on the same sampled steps,
a gain within their noise is no gain), so the gain it reports, and the one the drift decision weighs, is the
one the deployment's first placement optimised.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias, cast

import numpy as np

from vibe.api import DriftDecision, DriftKind
from vibe.engines import ENGINES
from vibe.operator.clock import iso, parse_time
from vibe.operator.gpus import Resolution
from vibe.operator.output import InputKeys, InService
from vibe.operator.problems import Problem
from vibe.operator.workload import Loads
from vibe.placement import PlacementError
from vibe.spec import DEFAULT_TOKENS_PER_STEP, DeploymentSpec

if TYPE_CHECKING:
    from vibe.placement import Placement, Result, Routing, StepMix

#: Sampled slots (routing samples x layers x physical slots) one expected-objective solve may hold: the
#: operator uses fewer routing samples than spec.workload.routingSamples asks on instances where more
#: would exceed it (each array of that size is 8 bytes per entry; the solve holds a handful).
MAX_SAMPLED_SLOTS = 4_000_000
#: ... and at most this many (routing samples x layers x experts x (redundant slots + 1)): the expected
#: objective's work bound prices every replica count of every expert in every sample (about 1 s per 1e7
#: on one core). Measured peak RSS of an expected solve: DeepSeek-V3 on 32 x 9 and 64 x 5, 2 kinds x 16
#: samples, 0.18 and 0.25 GB; the largest admissible instance (61 x 384 on 384 x 2, 5 per kind under this
#: cap) 1.39 GB where the mean-load solve takes 0.87 GB.
MAX_SAMPLED_WORK = 100_000_000

BASELINE_POLICY = "token-balanced"

#: Plan actions.
PlanAction = Literal["write", "nothing"]
WRITE: Final = "write"
NOTHING: Final = "nothing"

#: Drift decisions (``vibe.api.DriftDecision``: ``status.drift.decision``, also Event reasons).
REPLACED: Final = "Replaced"
BELOW_THRESHOLD: Final = "DriftBelowThreshold"
NOT_WORTH: Final = "ReplacementNotWorthIt"
COOLDOWN: Final = "CooldownActive"

#: Why a plan writes (``Placed``, ``GPUsChanged``, ``Replaced``: the Event's reason and the writes
#: metric's label) or does nothing (``UpToDate``, ``StaleInputs``, or a drift decision that keeps it).
PlanReason: TypeAlias = Literal["Placed", "GPUsChanged", "UpToDate", "StaleInputs"] | DriftDecision


@dataclass(frozen=True, eq=False)
class Inputs:
    spec: DeploymentSpec
    gpus: Resolution
    loads: Loads

    @property
    def keys(self) -> InputKeys:
        return InputKeys(self.spec.placement_key, self.gpus.gpus_key, self.gpus.curves_key, self.loads.key)


@dataclass
class Plan:
    """The decision. ``result``/``baseline`` are set when ``action == WRITE``."""

    action: PlanAction
    reason: PlanReason
    message: str
    result: Result | None = None
    baseline: Result | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    drift: dict[str, Any] | None = None  # the drift evaluation to show in status (None: not drifted)
    retry_at: dt.datetime | None = None  # when to look again (cooldown end)
    evaluated_drift: bool = False  # this plan priced a drift (not a repeat of an earlier evaluation)


def plan(
    inputs: Inputs,
    current: InService | None,
    *,
    prior_drift: Mapping[str, Any] | None,
    now: dt.datetime,
    time_budget_s: float = 1.0,
) -> Plan:
    """Decide (see the module docstring). Raises ``Problem`` for inputs the engine refuses."""
    try:
        return _plan(inputs, current, prior_drift=prior_drift, now=now, budget=time_budget_s)
    except PlacementError as e:
        raise Problem.from_placement(e) from None


def _plan(
    inputs: Inputs,
    current: InService | None,
    *,
    prior_drift: Mapping[str, Any] | None,
    now: dt.datetime,
    budget: float,
) -> Plan:
    from vibe.placement import solve

    spec, res, loads = inputs.spec, inputs.gpus, inputs.loads
    keys = inputs.keys
    fleet, s = res.fleet, spec.gpus.slots_per_gpu
    _check_replica_split(spec)
    have = current.placement if current is not None else None
    if have is not None and have.phy2log.shape != (spec.model.layers, len(fleet) * s):
        have = None  # another EP size or slot count: nothing to align to

    # 1. Nothing usable in service (none, unreadable, or of another shape than the GPUs now give), or the
    #    spec changed: solve from scratch.
    if current is None or have is None or current.keys.placement != keys.placement:
        routing = routing_of(spec, loads.tokens, len(fleet))
        result = solve(
            loads.tokens,
            fleet,
            s,
            spec.policy,
            time_budget_s=budget,
            current=have,
            routing=routing,
            replica_split=spec.workload.replica_split,
        )
        baseline = _baseline(result, loads, fleet, s, routing)
        why = "first placement" if current is None else _why_resolve(current, keys)
        return _write(inputs, "Placed", why, result, baseline, drift=None)

    # 2. Same inputs: nothing to do.
    if current.keys.all == keys.all:
        return Plan(NOTHING, "UpToDate", "inputs unchanged", summary=current.summary, drift=None)

    # 3. Stale profiles: keep the last placement.
    if res.stale_nodes:
        return Plan(
            NOTHING,
            "StaleInputs",
            "GPU profiles are stale",
            summary=current.summary,
            drift=prior_drift_or_none(prior_drift),
        )

    # A cooldown in progress holds whatever changes meanwhile (loads every second, a GPU back): the
    # decision is taken again, on the inputs of that moment, when it ends. Re-evaluating each change
    # wrote status and posted a CooldownActive Event for every one (60 a minute).
    gpus_changed = current.keys.gpus != keys.gpus
    gone = _gone(current, res) if gpus_changed else set()  # read off placement.json once
    cooling = _cooling(prior_drift, now)
    if cooling is not None and not gone:
        return Plan(NOTHING, COOLDOWN, "cooldown", summary=current.summary, drift=cooling,
                    retry_at=parse_time(cooling.get("retryAfter")))  # fmt: skip

    # 4. Other GPUs: re-place onto them now when a GPU in service is gone; when every one is still there
    #    (a GPU back, a pod moved), the change waits for the cooldown like any drift.
    if gpus_changed:
        ready_at = (current.placed_at or now) + dt.timedelta(seconds=spec.drift.cooldown_seconds)
        if not gone and now < ready_at:
            msg = (
                "the deployment's GPUs changed and every GPU in service is still there: re-placed "
                f"when the cooldown ends, {iso(ready_at)}"
            )
            held: dict[str, Any] = {"kind": "GPUsChanged", "inputHash": keys.all, "time": iso(now)}
            held.update(decision=COOLDOWN, retryAfter=iso(ready_at), message=msg)
            return Plan(NOTHING, COOLDOWN, msg, summary=current.summary, drift=held, retry_at=ready_at)
        routing = routing_of(spec, loads.tokens, len(fleet))
        result = _incremental(have, loads, fleet, spec, budget, routing)
        baseline = _baseline(result, loads, fleet, s, routing)
        why = "the deployment's GPUs changed" + (f" ({_few_ids(gone)} gone)" if gone else "")
        return _write(inputs, "GPUsChanged", why, result, baseline, drift=None)

    # 5. Drift.
    return _drift(inputs, current, have, prior_drift=prior_drift, now=now, budget=budget)


def _drift(
    inputs: Inputs,
    current: InService,
    have: Placement,
    *,
    prior_drift: Mapping[str, Any] | None,
    now: dt.datetime,
    budget: float,
) -> Plan:
    """Step 5 of ``_plan``: the same GPUs and spec, other loads or curves. Price the placement in service
    and the best re-placement close to it, then re-place only for a gain above ``minGain`` that is worth
    its cost and after the cooldown; otherwise keep it, saying why (the drift decision)."""
    from vibe.placement import evaluate

    spec, loads, keys = inputs.spec, inputs.loads, inputs.keys
    fleet, s = inputs.gpus.fleet, spec.gpus.slots_per_gpu
    kind: DriftKind = "WorkloadDrift" if current.keys.loads != keys.loads else "PerformanceDrift"
    repeated = _already_evaluated(current, keys.all, prior_drift, now)
    if repeated is not None:
        return repeated
    routing = routing_of(spec, loads.tokens, len(fleet))
    cur = evaluate(have, loads.tokens, fleet, routing=routing)
    placed = float(current.summary.get("stepTimeSeconds") or 0.0)
    if current.summary.get("objective", "mean-load") != "expected":
        placed = 0.0  # priced by another objective when placed (an older operator): no loss to state
    loss = cur.step_time_s / placed - 1.0 if placed > 0 else 0.0
    new = _incremental(have, loads, fleet, spec, budget, routing)
    gain = 1.0 - new.step_time_s / cur.step_time_s if cur.step_time_s > 0 else 0.0
    what = _what_drifted(kind, current, keys)
    figures = (
        f"{what}: the placement in service is predicted at {_ms(cur.step_time_s)} per step "
        f"({_pct(loss, signed=True)} vs {_ms(placed)} when placed); the best re-placement with "
        f"{new.moves} moves would take {_ms(new.step_time_s)} (gain {_pct(gain)}, minGain "
        f"{_pct(spec.drift.min_gain)})"
    )
    cost, hold = spec.replacement_cost_s, float(spec.drift.holding_seconds)
    saved = max(0.0, gain) * hold
    drift = {
        "kind": kind,
        "inputHash": keys.all,
        "time": iso(now),
        "loss": _r(loss),
        "gain": _r(gain),
        "moves": int(new.moves),
        "costSeconds": _r(cost),
        "savedSeconds": _r(saved),
    }
    if gain <= 0 or gain < spec.drift.min_gain:
        return _kept(current, drift, BELOW_THRESHOLD, figures)
    weighed = _weighed(spec, hold, saved, cost)
    if cost > 0 and saved <= cost:
        return _kept(current, drift, NOT_WORTH, f"{figures}; not worth it: {weighed}")
    if cost > 0:
        figures = f"{figures}; worth it: {weighed}"
    ready_at = (current.placed_at or now) + dt.timedelta(seconds=spec.drift.cooldown_seconds)
    if now < ready_at:
        return _kept(current, drift, COOLDOWN, f"{figures}; cooldown until {iso(ready_at)}", ready_at)
    baseline = _baseline(new, loads, fleet, s, routing)
    plan = _write(
        inputs,
        REPLACED,
        f"{figures}: re-placed",
        new,
        baseline,
        drift={**drift, "decision": REPLACED, "message": figures},
        kind=kind,
        gain=gain,
    )
    plan.evaluated_drift = True
    return plan


def _already_evaluated(
    current: InService, input_hash: str, prior: Mapping[str, Any] | None, now: dt.datetime
) -> Plan | None:
    """The drift decision taken on these very inputs, repeated as it is (None: price them again).

    A cooldown that has ended is priced again; any other decision stands until the inputs change.
    """
    if not prior or prior.get("inputHash") != input_hash:
        return None
    retry = parse_time(prior.get("retryAfter"))
    if prior.get("decision") == COOLDOWN and not (retry is not None and now < retry):
        return None
    return Plan(
        NOTHING,
        # this object's own status.drift, written by an earlier plan: repeated as it is
        cast(DriftDecision, str(prior.get("decision"))),
        "already evaluated",
        summary=current.summary,
        drift=dict(prior),
        retry_at=retry,
    )


def _kept(
    current: InService,
    drift: dict[str, Any],
    decision: DriftDecision,
    msg: str,
    retry_at: dt.datetime | None = None,
) -> Plan:
    """The placement in service stays: the drift was priced and ``decision`` says why."""
    retry = {"retryAfter": iso(retry_at)} if retry_at is not None else {}
    return Plan(
        NOTHING,
        decision,
        msg,
        summary=current.summary,
        retry_at=retry_at,
        evaluated_drift=True,
        drift={**drift, "decision": decision, **retry, "message": msg},
    )


def _weighed(spec: DeploymentSpec, hold: float, saved: float, cost: float) -> str:
    """The serving time a re-placement saves over the holding time against what it costs, in words."""
    source = (
        "" if spec.drift.replacement_cost_seconds is not None else f", default for onUpdate {spec.on_update}"
    )
    return (
        f"over the expected holding time of {hold:.0f} s it saves {saved:.0f} s of serving "
        f"against the {cost:.0f} s a re-placement costs (spec.drift.replacementCostSeconds{source})"
    )


def _cooling(prior: Mapping[str, Any] | None, now: dt.datetime) -> dict[str, Any] | None:
    """The prior decision when it is a cooldown that has not ended yet, else None."""
    if not prior or prior.get("decision") != COOLDOWN:
        return None
    retry = parse_time(prior.get("retryAfter"))
    return dict(prior) if retry is not None and now < retry else None


def _gone(current: InService, res: Resolution) -> set[str]:
    """The GPUs of the placement in service ("node/index/uuid") that no trusted, settled GPUProfile
    lists any more. Unknown (the ConfigMap has no placement.json to name them): all of them, so the
    change is acted on at once, as before."""
    try:
        doc = json.loads(current.data.get(ENGINES["vibe"].key) or "null")
        ids = {f"{g['id']}/{g.get('uuid', '')}" for g in doc["gpus"]}
    except (ValueError, RecursionError, TypeError, KeyError, IndexError, AttributeError):
        return {"(unknown)"}
    return ids - res.available


def _few_ids(ids: set[str], n: int = 3) -> str:
    items = sorted(i.rsplit("/", 1)[0] for i in ids)
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def step_mix_of(spec: DeploymentSpec, loads: np.ndarray) -> StepMix:
    """The kinds of steps to plan for: ``stepMix``; else ``tokensPerStep`` as the one-entry mix; else one
    kind of the load profile's own tokens per step (its mean total per layer / topK; uniform loads are
    ``DEFAULT_TOKENS_PER_STEP`` tokens, ``workload.uniform``)."""
    from vibe.placement import StepMix

    w = spec.workload
    if w.step_mix:
        return StepMix(tuple(t for t, _ in w.step_mix), tuple(x for _, x in w.step_mix))
    if w.tokens_per_step:
        return StepMix.one(w.tokens_per_step)
    own = float(np.mean(loads.sum(axis=1))) / spec.model.top_k if loads.size else DEFAULT_TOKENS_PER_STEP
    return StepMix.one(max(1, round(own)))


def routing_of(spec: DeploymentSpec, loads: np.ndarray, num_gpus: int) -> Routing:
    """The sampled routing of the spec's step mix over these loads (seed 0: deterministic), with at most
    ``MAX_SAMPLED_SLOTS`` sampled slots (fewer samples per kind than asked on large instances)."""
    from vibe.placement import sample_routing

    mix = step_mix_of(spec, loads)
    w = spec.workload
    kinds, (layers, experts) = len(mix.tokens), loads.shape
    slots = num_gpus * spec.gpus.slots_per_gpu
    samples = max(
        1,
        min(
            w.routing_samples,
            MAX_SAMPLED_SLOTS // max(kinds * layers * slots, 1),
            MAX_SAMPLED_WORK // max(kinds * layers * experts * (slots - experts + 1), 1),
        ),
    )
    return sample_routing(loads, mix, spec.model.top_k, samples=samples, dispatch=w.dispatch)


def _incremental(
    have: Any, loads: Loads, fleet: Any, spec: DeploymentSpec, budget: float, routing: Routing
) -> Result:
    """A re-placement near ``have``, chosen and priced by the expected objective of the spec's step mix
    (with the spec's replica split)."""
    from vibe.placement import replace_incremental

    return replace_incremental(
        have,
        loads.tokens,
        fleet,
        max_moves=spec.drift.max_moves,
        time_budget_s=budget,
        routing=routing,
        replica_split=spec.workload.replica_split,
    )


def _check_replica_split(spec: DeploymentSpec) -> None:
    """The spec's replica split reaches every output format's engine, or ``UnsupportedReplicaSplit``
    (a weighted placement written for an engine that splits evenly would run other than planned)."""
    from vibe.engines import EngineError, check_replica_split

    try:
        check_replica_split(spec.workload.replica_split, spec.formats)
    except EngineError as e:
        raise Problem("UnsupportedReplicaSplit", f"spec.workload.replicaSplit: {e.message}") from None


def prior_drift_or_none(prior: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A drift evaluation worth showing in status (one that left the placement as it was), else None."""
    return dict(prior) if prior and prior.get("decision") in (BELOW_THRESHOLD, NOT_WORTH, COOLDOWN) else None


def summary_of(
    result: Result, baseline: Result, *, reason: str, message: str, inputs: Inputs
) -> dict[str, Any]:
    """The predicted figures of a written placement (stored in the ConfigMap, shown in status)."""
    gain = 1.0 - result.step_time_s / baseline.step_time_s if baseline.step_time_s > 0 else 0.0
    layers = len(result.layer_times_s) or 1
    return {
        "policy": result.policy,
        "stepTimeSeconds": _r(result.step_time_s),
        "layerTimeSeconds": _r(result.step_time_s / layers),
        "imbalance": _r(result.imbalance),
        "lowerBoundSeconds": _r(result.lower_bound_s),
        "gapToBound": _r(result.gap),
        "gainVsBaseline": _r(gain),
        "gainVsBaselinePercent": round(100.0 * gain, 2),
        "solveSeconds": round(float(result.solve_seconds), 4),
        "baseline": {
            "policy": baseline.policy,
            "stepTimeSeconds": _r(baseline.step_time_s),
            "imbalance": _r(baseline.imbalance),
        },
        "moves": int(result.moves),
        "reason": reason,
        "message": message,
        "curveSource": inputs.gpus.curve_source,
        "loadsSource": inputs.loads.source,
        **_objective_of(result),
    }


def _objective_of(result: Result) -> dict[str, Any]:
    """What the figures are in terms of (status.predicted.objective and its parameters)."""
    i = result.info
    if i.get("objective") != "expected":
        return {"objective": "mean-load"}
    return {
        "objective": "expected",
        "stepMix": i["stepMix"],
        "dispatch": i["dispatch"],
        "routingSamples": i["samplesPerKind"],
        "meanLoadStepTimeSeconds": _r(i["meanLoadStepTimeSeconds"]),
    }


def _write(
    inputs: Inputs,
    reason: PlanReason,
    why: str,
    result: Result,
    baseline: Result,
    *,
    drift: dict[str, Any] | None,
    kind: DriftKind | None = None,
    gain: float = 0.0,
) -> Plan:
    summary = summary_of(result, baseline, reason=reason, message=why, inputs=inputs)
    if kind:
        summary["drift"] = {"kind": kind, "gain": _r(gain)}
    return Plan(WRITE, reason, why, result=result, baseline=baseline, summary=summary, drift=drift)


def _baseline(result: Any, loads: Loads, fleet: Any, s: int, routing: Routing | None = None) -> Any:
    """The token-balanced (EPLB-style) placement of the same inputs, priced like ``result``.

    Token-balanced ignores the curves, so its placement depends on the loads alone and is cached by
    their fingerprint: after performance drift only its pricing is new. Its lower bound is ``result``'s
    (the bound depends on the inputs, not on the placement), so no bound is computed twice.
    """
    from vibe.placement import Placement, make_result, with_replica_split

    if result.policy == BASELINE_POLICY:
        return result
    e = loads.tokens.shape[1]
    placement = Placement(_token_balanced(loads.key, loads.tokens, len(fleet), s), s, e)
    if result.placement.weights is not None:  # the baseline with the same (weighted) split
        placement = with_replica_split(placement, loads.tokens, fleet, "weighted", routing=routing)
    return make_result(
        BASELINE_POLICY,
        placement,
        loads.tokens,
        fleet,
        time.perf_counter(),
        bounds=result.layer_bounds_s,
        routing=routing,
    )


def _token_balanced(key: str, tokens: np.ndarray, num_gpus: int, slots: int) -> np.ndarray:
    from vibe.placement import token_balanced

    cache_key = (key, num_gpus, slots)
    hit = _TB_CACHE.get(cache_key)
    if hit is None:
        hit = token_balanced(tokens, num_gpus, slots)
        if len(_TB_CACHE) >= 64:
            _TB_CACHE.pop(next(iter(_TB_CACHE)))
        _TB_CACHE[cache_key] = hit
    return hit


#: (loads fingerprint, GPUs, slots) -> [L, P] token-balanced placement; per process, oldest evicted first.
_TB_CACHE: dict[tuple[str, int, int], np.ndarray] = {}


def _why_resolve(current: InService, keys: InputKeys) -> str:
    if current.placement is None:
        return f"re-placed: the ConfigMap in service is unusable ({current.unreadable or 'no placement key'})"
    if current.keys.placement == keys.placement:
        return "re-placed: the placement in service does not fit the deployment's GPUs and slots"
    return "re-placed after a spec change"


def _what_drifted(kind: str, current: InService, keys: InputKeys) -> str:
    parts = []
    if current.keys.loads != keys.loads:
        parts.append("the loads changed")
    if current.keys.curves != keys.curves:
        parts.append("GPU profiles changed")
    return " and ".join(parts) or kind


def _r(x: float) -> float:
    """6 significant digits: enough for any report, stable across platforms' last-bit noise."""
    return float(f"{float(x):.6g}")


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


def _pct(x: float, signed: bool = False) -> str:
    return f"{x * 100:+.1f}%" if signed else f"{x * 100:.1f}%"
