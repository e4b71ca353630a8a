"""A serving simulation: policies x request rates on one or two expert-parallel groups.

Role: what ``vibe simulate`` and ``benchmarks/serving.py`` call. For each policy it places the experts
with ``vibe.placement.solve`` (the same solver the operator runs), builds each group's step cost
(``costs``), and runs the scheduler (``engine``) over the same seeded requests at every rate; then
``report`` turns first-token and finish times into TTFT, TPOT, throughput, SLO attainment and goodput.

Placement scale: the loads are read as each layer's routing distribution; a policy plans on them rescaled
to ``plan_tokens`` tokens per step (default: a colocated or prefill group's full chunked-prefill budget,
a decode group's full running batch), which matters only for ``vibe`` (the curves are flat then linear).
With ``plan_step_mix`` (``vibe simulate --step-mix``, as ``vibe plan --step-mix``) the policies are
priced, and ``vibe`` plans, by the expected step time over that mix under sampled routing instead
(``vibe.placement.routing``).

Drift (``DriftEvent``): from ``at_s`` one GPU's curve is ``factor`` times slower. Policy ``vibe+replace``
is ``vibe`` whose placement the operator re-plans ``replace_after_s`` later (detection + planning) on the
drifted curves with ``replace_incremental`` (few moves; by the expected objective where the group plans for a
step mix, as the operator does), paying either a restart (the group is down for ``restart_s``) or the weight
copies (down for the busiest GPU's new experts' bytes / copy bandwidth).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from vibe.placement import (
    DEFAULT_SAMPLES,
    Fleet,
    GPUCurve,
    Placement,
    Routing,
    check_shapes,
    replace_incremental,
    routing_from_flags,
    solve,
)
from vibe.simulate.constants import value
from vibe.simulate.costs import CommModel, ExpertTable, NonExpertCost, slowness_of
from vibe.simulate.engine import EngineConfig, Group, SimulationError, run
from vibe.simulate.models import ModelShape
from vibe.simulate.workload import Requests

POLICIES = ("round-robin", "token-balanced", "vibe")
REPLACE = "vibe+replace"


@dataclass(frozen=True)
class DriftEvent:
    at_s: float
    gpu: str
    factor: float


@dataclass(frozen=True)
class GroupSpec:
    """One expert-parallel group's inputs: [L, E] loads (any scale), its fleet and slots per GPU."""

    name: str  # colocated | prefill | decode
    loads: np.ndarray
    fleet: Fleet
    slots_per_gpu: int
    plan_tokens: float | None = None
    plan_step_mix: str | None = None  # "TOKENS[:WEIGHT],...": plan for the expected objective


@dataclass(frozen=True)
class Settings:
    model: ModelShape
    groups: tuple[GroupSpec, ...]  # (colocated,) or (prefill, decode)
    engine: EngineConfig = field(default_factory=EngineConfig)
    gpu: str = "h200"  # non-expert curves and memory: h200 (measured) or h100 (scaled)
    gpu_memory_bytes: float | None = None
    drift: tuple[DriftEvent, ...] = ()
    replace_after_s: float = 60.0
    replace_cost: str = "moves"  # restart | moves
    restart_s: float | None = None
    samples: int = int(value("routing_samples"))
    seed: int = 0
    solve_budget_s: float = 0.5
    overlap: str = "auto"  # two micro-batches: auto (spanning nodes, where faster), on, off
    per_node: str = "auto"  # dispatch once per destination node: auto (prefill steps), always, never
    floor_share: float | None = None  # re-shape the fleets' curves (``reshaped``); None: as given
    plan_samples: int = DEFAULT_SAMPLES  # with plan_step_mix: routings per kind (vibe plan --samples)
    plan_dispatch: str = "round-robin"  # with plan_step_mix: replica split (vibe plan --dispatch)
    replica_split: str = "even"  # even | weighted: per-slot shares the planner chooses (--replica-split)

    def __post_init__(self) -> None:
        if self.overlap not in ("auto", "on", "off"):
            raise SimulationError(f"overlap is auto, on or off, not {self.overlap!r}")
        if self.per_node not in ("auto", "always", "never"):
            raise SimulationError(f"per-node dispatch is auto, always or never, not {self.per_node!r}")
        if self.floor_share is not None and not 0 <= self.floor_share <= 1:
            raise SimulationError("the floor share of a GPU's slowdown lies in [0, 1]")

    @property
    def disaggregated(self) -> bool:
        return len(self.groups) == 2


@dataclass
class PolicyRun:
    """One policy at one rate: per request arrival, first token and finish times."""

    policy: str
    rate: float
    requests: Requests
    first: np.ndarray
    finish: np.ndarray
    steps: int


@dataclass
class Prepared:
    """A policy's groups, ready to run at any rate, and what was predicted for them."""

    groups: list[Group]
    info: dict[str, Any] = field(default_factory=dict)


def shares_of(loads: np.ndarray) -> np.ndarray:
    """[L, E] each layer's load shares (rows sum to 1)."""
    sums = loads.sum(axis=1, keepdims=True)
    if (sums <= 0).any():
        raise SimulationError(f"layer {int(np.flatnonzero(sums[:, 0] <= 0)[0])} of the loads has no load")
    out: np.ndarray = loads / sums
    return out


def slowed(fleet: Fleet, gpu: str, factor: float) -> Fleet:
    if gpu not in fleet.ids:
        raise SimulationError(f"drift names GPU {gpu!r}, which is not in the fleet")
    return Fleet(
        tuple(
            GPUCurve(g.id, g.node, g.tokens, g.seconds * factor, g.uuid) if g.id == gpu else g
            for g in fleet.gpus
        )
    )


def reshaped(fleet: Fleet, floor_share: float) -> Fleet:
    """The fleet with each GPU's slowdown against the median GPU re-split: its compute slowdown as read
    off its curve (``slowness_of``), its floor slowed by ``floor_share`` of that
    (``vibe.placement.synthetic.slowed_curve``), on the median GPU's curve."""
    from vibe.placement import slowed_curve

    _floor, compute = slowness_of([g.tokens for g in fleet.gpus], [g.seconds for g in fleet.gpus])
    med = int(np.argsort(compute)[len(compute) // 2])
    ref = fleet.gpus[med]
    return Fleet(
        tuple(
            GPUCurve(
                g.id,
                g.node,
                ref.tokens,
                slowed_curve(ref.seconds, float(c / compute[med]), floor_share),
                g.uuid,
            )
            for g, c in zip(fleet.gpus, compute, strict=True)
        )
    )


def kv_tokens(settings: Settings, spec: GroupSpec) -> int:
    """KV cache tokens the group holds: per GPU, memory x fraction - weights, over KV bytes per token."""
    m = settings.model
    mem = settings.gpu_memory_bytes or value(f"gpu_memory_{settings.gpu}_bytes")
    weights = spec.slots_per_gpu * m.moe_layers * m.expert_bytes() + m.non_expert_weight_bytes()
    free = mem * value("mem_fraction_static") - weights
    if free <= 0:
        raise SimulationError(
            f"{m.name} does not fit: {spec.slots_per_gpu} expert slots x {m.moe_layers} layers and the "
            f"other weights take {weights / 2**30:.0f} GiB of a {mem / 2**30:.0f} GiB GPU"
        )
    return int(free // m.kv_bytes_per_token()) * len(spec.fleet)


def _comm(settings: Settings, g: int) -> CommModel:
    m = settings.model
    return CommModel(
        hidden=m.hidden,
        top_k=m.top_k,
        dispatch_bytes=value("dispatch_bytes_fp8") if m.dtype == "fp8" else 2.0,
        combine_bytes=value("combine_bytes"),
        num_gpus=g,
        gpus_per_node=int(value("gpus_per_node")),
        nvlink=value("nvlink_bytes_per_s"),
        rdma=value("rdma_bytes_per_s"),
        latency=value("comm_latency_s"),
        per_node=settings.per_node,
        overlap=settings.overlap,
    )


def _plan_tokens(settings: Settings, spec: GroupSpec) -> float:
    if spec.plan_tokens:
        return float(spec.plan_tokens)
    g = len(spec.fleet)
    cfg = settings.engine
    return float(g * (cfg.max_running if spec.name == "decode" else cfg.chunk_tokens))


def _max_tokens(settings: Settings, spec: GroupSpec) -> int:
    g, cfg = len(spec.fleet), settings.engine
    return g * (cfg.max_running + (0 if spec.name == "decode" else cfg.chunk_tokens))


class Simulator:
    """Placements and step-cost tables per policy (cached), then runs at any rate."""

    def __init__(self, settings: Settings) -> None:
        if settings.floor_share is not None:
            settings = replace(
                settings,
                groups=tuple(
                    replace(g, fleet=reshaped(g.fleet, settings.floor_share)) for g in settings.groups
                ),
            )
        self.s = settings
        m = settings.model
        for spec in settings.groups:
            loads = check_shapes(spec.loads, spec.fleet, spec.slots_per_gpu)
            if loads.shape[1] != m.experts:
                raise SimulationError(
                    f"the {spec.name} loads have {loads.shape[1]} experts, {m.name} has {m.experts}"
                )
        for ev in settings.drift:
            if not any(ev.gpu in spec.fleet.ids for spec in settings.groups):
                raise SimulationError(f"drift names GPU {ev.gpu!r}, which is not in the fleet")
        if settings.replace_cost not in ("restart", "moves"):
            raise SimulationError(f"replace cost is restart or moves, not {settings.replace_cost!r}")
        self.nonexpert = NonExpertCost(m, settings.gpu)
        self._prepared: dict[str, Prepared] = {}

    def table(self, spec: GroupSpec, placement: Placement, fleet: Fleet, salt: int) -> ExpertTable:
        return ExpertTable(
            placement.phy2log,
            spec.slots_per_gpu,
            fleet.table,
            shares_of(spec.loads),
            _comm(self.s, len(fleet)),
            max_tokens=_max_tokens(self.s, spec),
            samples=self.s.samples,
            seed=self.s.seed * 1000 + salt,
            weights=placement.weights,
        )

    def prepare(self, policy: str) -> Prepared:
        if policy in self._prepared:
            return self._prepared[policy]
        s = self.s
        base = "vibe" if policy == REPLACE else policy
        groups: list[Group] = []
        info: dict[str, Any] = {}
        for gi, spec in enumerate(s.groups):
            plan = shares_of(spec.loads) * _plan_tokens(s, spec) * s.model.top_k
            routing = routing_from_flags(
                spec.loads,
                spec.plan_step_mix,
                s.model.top_k,
                samples=s.plan_samples,
                dispatch=s.plan_dispatch,
                seed=s.seed,
            )
            res = solve(
                plan if routing is None else spec.loads,
                spec.fleet,
                spec.slots_per_gpu,
                base,
                time_budget_s=s.solve_budget_s,
                routing=routing,
                replica_split=s.replica_split,
            )
            # the same routing draws for every policy (common random numbers): salt by group only
            tables = [(0.0, self.table(spec, res.placement, spec.fleet, gi))]
            g_info: dict[str, Any] = {
                "predicted_step_s": res.step_time_s,
                "imbalance": res.imbalance,
                "plan_tokens_per_step": _plan_tokens(s, spec),
            }
            down: list[tuple[float, float]] = []
            fleet = spec.fleet
            for ev in s.drift:
                if ev.gpu not in fleet.ids:
                    continue
                fleet = slowed(fleet, ev.gpu, ev.factor)
                drifted = self.table(spec, res.placement, fleet, gi)
                tables.append((ev.at_s, drifted))
                if policy == REPLACE:
                    down, new, r_info = self._replace(
                        spec, res.placement, plan, fleet, drifted, ev, gi, routing=routing
                    )
                    tables.append((down[-1][1], new))
                    g_info["replace"] = r_info
            slow = slowness_of([g.tokens for g in spec.fleet.gpus], [g.seconds for g in spec.fleet.gpus])
            groups.append(
                Group(
                    spec.name,
                    len(spec.fleet),
                    self.nonexpert,
                    sorted(tables, key=lambda x: x[0]),
                    kv_tokens(s, spec),
                    s.engine,
                    layer_scale=s.model.moe_layers / spec.loads.shape[0],
                    down=down,
                    overhead_s=value("step_overhead_s"),
                    floor_factor=slow[0],
                    compute_factor=slow[1],
                )
            )
            info[spec.name] = g_info
        prepared = Prepared(groups, info)
        self._prepared[policy] = prepared
        return prepared

    def _replace(
        self,
        spec: GroupSpec,
        current: Placement,
        plan: np.ndarray,
        drifted: Fleet,
        old_t: ExpertTable,
        ev: DriftEvent,
        gi: int,
        *,
        routing: Routing | None = None,
    ) -> tuple[list[tuple[float, float]], ExpertTable, dict[str, Any]]:
        """Re-place ``current`` for the drifted fleet, by the objective it was placed for (``routing``: the
        group's plan step mix); ``old_t``: current's table on that fleet."""
        s = self.s
        new = replace_incremental(
            current,
            plan if routing is None else spec.loads,
            drifted,
            time_budget_s=s.solve_budget_s,
            routing=routing,
            replica_split=s.replica_split,  # the re-placement gets its own weights for the drifted fleet
        )
        at = ev.at_s + s.replace_after_s
        m = s.model
        if s.replace_cost == "restart":
            pause = s.restart_s if s.restart_s is not None else value("restart_s")
        else:
            old_g = current.by_gpu()
            new_g = new.placement.by_gpu()
            copies = np.zeros(new_g.shape[1])  # experts new on each GPU, over all layers
            for layer, g in zip(*np.nonzero((old_g != new_g).any(axis=2)), strict=True):
                copies[g] += len(set(new_g[layer, g].tolist()) - set(old_g[layer, g].tolist()))
            busiest = float(copies.max()) * m.expert_bytes() * m.moe_layers / new_g.shape[0]
            pause = busiest / value("weight_copy_bytes_per_s")
        # worth it? the mean step at the plan scale before and after, on the drifted curves
        tokens = _plan_tokens(s, spec)
        ne = self.nonexpert.step(tokens / len(drifted), 0, 0, 0, 0)  # a typical GPU's share
        new_t = self.table(spec, new.placement, drifted, gi)
        scale = m.moe_layers / spec.loads.shape[0]
        before = ne + sum(old_t.mean(tokens)) * scale
        after = ne + sum(new_t.mean(tokens)) * scale
        gain = 1.0 - after / before
        info = {
            "at_s": at,
            "pause_s": pause,
            "cost": s.replace_cost,
            "moved_experts": int(new.moved_experts),
            "step_before_s": before,
            "step_after_s": after,
            "gain": gain,
            "payback_s": (pause / gain) if gain > 0 else None,
        }
        return [(at, at + pause)], new_t, info

    def run(
        self,
        policy: str,
        requests: Requests,
        progress: Callable[[int, int, float], None] | None = None,
        *,
        seed: int | None = None,
    ) -> PolicyRun:
        """One policy serving ``requests``; ``seed`` (default the settings') picks the routing draws."""
        prep = self.prepare(policy)
        s = replace(self.s, seed=self.s.seed if seed is None else seed)
        if not s.disaggregated:  # one group: colocated, or a prefill or decode group measured alone
            name = s.groups[0].name
            r = run(
                requests.arrival,
                requests.prompt,
                requests.output,
                prep.groups[0],
                name if name in ("prefill", "decode") else "colocated",
                seed=s.seed,
                progress=progress,
            )
            return PolicyRun(policy, 0.0, requests, r.first, r.finish, r.steps)
        pre = run(
            requests.arrival,
            requests.prompt,
            np.ones_like(requests.output),
            prep.groups[0],
            "prefill",
            seed=s.seed,
            progress=progress,
        )
        kv_bytes = requests.prompt * s.model.kv_bytes_per_token()
        ready = pre.finish + kv_bytes / value("kv_transfer_bytes_per_s")
        dec = run(
            ready,
            requests.prompt,
            requests.output,
            prep.groups[1],
            "decode",
            seed=s.seed + 1,
            progress=progress,
        )
        return PolicyRun(policy, 0.0, requests, dec.first, dec.finish, pre.steps + dec.steps)
