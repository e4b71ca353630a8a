"""One line of simulated serving impact for a placement problem (the demo prints it).

Runs ``vibe simulate``'s engine for token-balanced and vibe on the same inputs (1024-token prompts,
256-token outputs, 32 running requests per GPU, as benchmarks/results/serving.md) at 0.5, 1, 2 and 4
requests/s per GPU, and reports the rate near saturation (the highest at which token-balanced still meets
the SLOs for half the requests): what vibe's placement does to TPOT, TTFT and SLO attainment there.
"""

from __future__ import annotations

import numpy as np

from vibe.placement.curves import Fleet
from vibe.simulate.engine import EngineConfig
from vibe.simulate.models import resolve
from vibe.simulate.report import metrics
from vibe.simulate.simulator import GroupSpec, Settings, Simulator
from vibe.simulate.workload import Workload, generate

SLO_TTFT_S, SLO_TPOT_S = 3.0, 0.15


def impact_line(
    loads: np.ndarray,
    fleet: Fleet,
    slots_per_gpu: int,
    *,
    model: str = "deepseek-v3",
    gpu: str = "h100",
    rates_per_gpu: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0),
    seconds: float = 30.0,
) -> str:
    """'simulated serving: ...' comparing vibe with token-balanced (module doc)."""
    m = resolve(model)
    spec = GroupSpec("colocated", loads, fleet, slots_per_gpu)
    sim = Simulator(Settings(m, (spec,), engine=EngineConfig(8192, 32), gpu=gpu, samples=8))
    chosen: dict[str, dict[str, float]] = {}
    for per_gpu in rates_per_gpu:
        rate = per_gpu * len(fleet)
        req = generate(Workload(rate, max(50, int(rate * seconds)), 1024, 256))
        rows = {}
        for p in ("token-balanced", "vibe"):
            run = sim.run(p, req)
            run.rate = rate
            rows[p] = metrics(run, SLO_TTFT_S, SLO_TPOT_S)
        if not chosen or rows["token-balanced"]["slo_attainment"] >= 0.5:
            chosen = rows
        if rows["token-balanced"]["slo_attainment"] < 0.5:
            break
    t, v = chosen["token-balanced"], chosen["vibe"]
    rate = t["rate"]
    return (
        f"simulated serving (vibe simulate, {rate:g} req/s): P90 TPOT {v['tpot_p90_s'] * 1e3:.0f} ms with "
        f"vibe vs {t['tpot_p90_s'] * 1e3:.0f} ms token-balanced, P90 TTFT {v['ttft_p90_s']:.2f} vs "
        f"{t['ttft_p90_s']:.2f} s, SLO attainment {v['slo_attainment'] * 100:.0f}% vs "
        f"{t['slo_attainment'] * 100:.0f}% (TTFT {SLO_TTFT_S:g} s, TPOT {SLO_TPOT_S * 1e3:g} ms)"
    )
