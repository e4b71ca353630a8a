"""One line of simulated serving impact for a placement problem (the demo prints it).

Runs ``vibe simulate``'s engine for token-balanced and vibe on the same inputs (1024-token prompts,
256-token outputs, 32 running requests per GPU, as benchmarks/results/serving.md) and reports each
policy's goodput, the highest request rate with >= 90 % of requests within the SLOs, found by bisection
over three seeds: the mean with its 95 % interval and the attainment at it. Short runs (20 s of arrivals,
5 % resolution) keep the demo fast; the benchmark uses 60 s and 2 %.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vibe.placement import Fleet
from vibe.simulate.engine import EngineConfig
from vibe.simulate.models import resolve
from vibe.simulate.report import attainment_at, goodput_search
from vibe.simulate.simulator import GroupSpec, Settings, Simulator
from vibe.simulate.workload import Workload

SLO_TTFT_S, SLO_TPOT_S = 3.0, 0.15
POLICIES = ["token-balanced", "vibe"]


def impact(
    loads: np.ndarray,
    fleet: Fleet,
    slots_per_gpu: int,
    *,
    model: str = "deepseek-v3",
    gpu: str = "h100",
    guess_per_gpu: tuple[float, float] = (0.2, 0.4),
    seconds: float = 20.0,
    seeds: int = 3,
    resolution: float = 0.05,
) -> dict[str, dict[str, Any]]:
    """{policy: goodput_search's result} on these inputs (module doc)."""
    m = resolve(model)
    spec = GroupSpec("colocated", loads, fleet, slots_per_gpu)
    sim = Simulator(Settings(m, (spec,), engine=EngineConfig(8192, 32), gpu=gpu, samples=8))
    base = Workload(1.0, 100, 1024, 256)

    def attain(p: str, rate: float, seed: int) -> float:
        return attainment_at(sim, p, rate, seed, base, SLO_TTFT_S, SLO_TPOT_S, seconds)

    g = len(fleet)
    guess = (guess_per_gpu[0] * g, guess_per_gpu[1] * g)
    return goodput_search(attain, POLICIES, {p: guess for p in POLICIES}, seeds=seeds, resolution=resolution)


def impact_line(loads: np.ndarray, fleet: Fleet, slots_per_gpu: int, **kw: Any) -> str:
    """'simulated serving: goodput ...' for token-balanced and vibe (module doc)."""
    res = impact(loads, fleet, slots_per_gpu, **kw)

    def one(p: str) -> str:
        r = res[p]
        att = r["attainment_at_goodput"]
        return f"{p} {r['mean']:.1f} [{r['low']:.1f}, {r['high']:.1f}] req/s" + (
            f" (attainment {att * 100:.0f}%)" if att is not None else ""
        )

    v, t = res["vibe"], res["token-balanced"]
    apart = v["low"] > t["high"] or v["high"] < t["low"]
    verdict = "intervals apart" if apart else "intervals overlap: no difference shown"
    return (
        f"simulated serving (vibe simulate): goodput, the highest rate with >= 90% of requests within TTFT "
        f"{SLO_TTFT_S:g} s and TPOT {SLO_TPOT_S * 1e3:g} ms (mean [95% interval], 3 seeds): "
        f"{one('vibe')} vs {one('token-balanced')}: {v['mean'] / t['mean'] - 1:+.1%}, {verdict}"
    )
