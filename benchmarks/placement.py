"""Placement benchmark: how fast and how good ``vibe`` is against the token-balanced (EPLB-style) baseline.

Run from the repository root (about 2-3 minutes on one core; ``--quick`` runs a subset):

    .venv/bin/python benchmarks/placement.py --out benchmarks/results/placement.md

Everything runs pinned to one CPU core and prints ratios measured in this one run.

Instances (model shape, expert-parallel GPUs x slots per GPU; R = redundant slots):
  DeepSeek-V3  58 layers x 256 experts: 32 GPUs x 8 (R 0), 32 x 9 (R 32), 64 x 4 (R 0), 64 x 5 (R 64)
               (32 redundant slots do not split evenly over 64 GPUs, so that case has one per GPU)
  Qwen3-235B   94 x 128: 8 x 16 (R 0), 8 x 17 (R 8), 16 x 8 (R 0), 16 x 9 (R 16)
  Mixtral-8x7B 32 x 8:   8 x 2 (R 8)
Loads (``vibe.placement.synthetic.skewed_loads``): per layer a max/mean expert skew drawn uniformly in
2-4x, log-normal expert popularity solved to that skew, scaled to a mean of 100 tokens per expert per
step ("decode", below the H100 curve's knee) or 2048 ("prefill", the linear part); seed 1.
Fleets (``synthetic.h100_fleet``): the measured H100 curve of the model's expert shape (steady state, at
the power cap) per GPU, slowed by ``1 + spread * |z|``: "same" (no spread), "4%" spread, and "8%+1.5x"
(8 % spread and one GPU 1.5x slower), the SC'22 fleet figures; seed 2.

Measured: predicted step time (the one evaluator), the provable lower bound and gap of each policy,
solve wall time; ``exact`` (CP-SAT, 8 s deterministic budget) on Mixtral; the solve time of the headline
instance (DeepSeek-V3, 58 x 288 slots on 32 GPUs) against a straightforward pure-Python token-balanced
baseline; and the incremental re-placement trade-off (slots moved vs share of a full re-solve's gain).

``--expected`` (about 10 minutes on one core) runs only the expected objective against the mean-load planner
(``expected()``): step mixes of decode batches and prefill chunks on DeepSeek-V3 and Qwen3 fleets, each
placement priced on held-out sampled routings (another seed, 64 per kind of step), with 95 % intervals of
the paired differences, solve times, and the sample-count sweep that sets ``routing.DEFAULT_SAMPLES``:

    .venv/bin/python benchmarks/placement.py --expected --out benchmarks/results/placement-expected.md

``--expected-incremental`` (a few minutes) runs only incremental re-placement under the expected objective
(``expected_incremental()``): DeepSeek-V3 at EP 8 and EP 32 placed for a decode mix, then one GPU slowed
1.5x and 30 % of the load profile shifted; the placement in service, incremental re-placement searching
the mix's mean loads (what the operator did before), incremental re-placement choosing on the sampled steps
(``replace_incremental(..., routing=...)``) and a full expected re-plan, all priced on held-out routings,
over several drift seeds; it rewrites its own section of the ``--out`` file:

    .venv/bin/python benchmarks/placement.py --expected-incremental \
        --out benchmarks/results/placement-expected.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import common
import numpy as np

from vibe.placement import Fleet, GPUCurve, evaluate, replace_incremental, solve
from vibe.placement.cost import sampled_gpu_times
from vibe.placement.incremental import KNEE, MIN_GAIN
from vibe.placement.routing import Routing, StepMix, sample_routing
from vibe.placement.synthetic import h100_fleet, skewed_loads
from vibe.simulate.report import t975

MODELS = {
    **common.MODELS,
    "Mixtral-8x7B": dict(layers=32, experts=8, shape=(4096, 14336)),
}
CONFIGS = [
    ("DeepSeek-V3", 32, 8),
    ("DeepSeek-V3", 32, 9),
    ("DeepSeek-V3", 64, 4),
    ("DeepSeek-V3", 64, 5),
    ("Qwen3-235B", 8, 16),
    ("Qwen3-235B", 8, 17),
    ("Qwen3-235B", 16, 8),
    ("Qwen3-235B", 16, 9),
    ("Mixtral-8x7B", 8, 2),
]
REGIMES = {"decode": 100.0, "prefill": 2048.0}
FLEETS = {"same": (0.0, 0), "4%": (0.04, 0), "8%+1.5x": (0.08, 1)}


def fleet_for(model: str, gpus: int, fleet: str) -> Fleet:
    spread, outliers = FLEETS[fleet]
    h, i = MODELS[model]["shape"]
    return h100_fleet(gpus, spread=spread, outliers=outliers, hidden_size=h, intermediate_size=i, seed=2)


def loads_for(model: str, regime: str) -> np.ndarray:
    m = MODELS[model]
    return skewed_loads(m["layers"], m["experts"], mean_tokens=REGIMES[regime], seed=1)


def token_balanced_python(loads: np.ndarray, num_gpus: int, slots: int) -> list[list[int]]:
    """The EPLB-style baseline written straightforwardly (lists and loops), for the timing comparison."""
    out = []
    for w in loads.tolist():
        e = len(w)
        cnt = [1] * e
        for _ in range(num_gpus * slots - e):
            best = max(range(e), key=lambda i: w[i] / cnt[i])
            cnt[best] += 1
        items = [(w[i] / cnt[i], i) for i in range(e) for _ in range(cnt[i])]
        items.sort(key=lambda t: -t[0])
        load = [0.0] * num_gpus
        used = [0] * num_gpus
        gpus: list[list[int]] = [[] for _ in range(num_gpus)]
        for tokens, i in items:
            g = min((k for k in range(num_gpus) if used[k] < slots), key=lambda k: load[k])
            gpus[g].append(i)
            load[g] += tokens
            used[g] += 1
        out.append([i for g in gpus for i in g])
    return out


def timed(fn, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best


def quality(quick: bool) -> list[dict]:
    rows = []
    configs = CONFIGS if not quick else [CONFIGS[1], CONFIGS[6], CONFIGS[8]]
    for model, gpus, slots in configs:
        for regime in REGIMES:
            loads = loads_for(model, regime)
            for fleet_name in FLEETS:
                fleet = fleet_for(model, gpus, fleet_name)
                res = {p: solve(loads, fleet, slots, p) for p in ("round-robin", "token-balanced", "vibe")}
                row = {
                    "model": model,
                    "gpus": gpus,
                    "slots": slots,
                    "redundant": gpus * slots - MODELS[model]["experts"],
                    "regime": regime,
                    "fleet": fleet_name,
                    "bound_ms": res["vibe"].lower_bound_s * 1e3,
                    **{f"{p}_ms": r.step_time_s * 1e3 for p, r in res.items()},
                    **{f"{p}_gap": r.gap for p, r in res.items()},
                    **{f"{p}_s": r.solve_seconds for p, r in res.items()},
                    "vibe_converged": res["vibe"].converged,
                    "speedup": res["token-balanced"].step_time_s / res["vibe"].step_time_s,
                    "per_layer_never_worse": bool(
                        (res["vibe"].layer_times_s <= res["token-balanced"].layer_times_s * (1 + 1e-12)).all()
                    ),
                }
                if model == "Mixtral-8x7B":
                    x = solve(loads, fleet, slots, "exact", time_budget_s=8.0)
                    row.update(
                        exact_ms=x.step_time_s * 1e3, exact_gap=x.gap, exact_s=x.solve_seconds, **x.info
                    )
                rows.append(row)
                print(
                    f"{model:13s} {gpus:3d}x{slots:<3d} {regime:8s} {fleet_name:8s} "
                    f"tb {row['token-balanced_ms']:9.3f} vibe {row['vibe_ms']:9.3f} ms  "
                    f"x{row['speedup']:.3f}  "
                    f"gap {row['vibe_gap'] * 100:5.2f}%  {row['vibe_s']:.2f}s",
                    flush=True,
                )
    return rows


def headline(repeat: int) -> dict:
    """DeepSeek-V3, 58 x 288 slots on 32 GPUs: solve times."""
    out = {}
    for regime in REGIMES:
        loads = loads_for("DeepSeek-V3", regime)
        fleet = fleet_for("DeepSeek-V3", 32, "8%+1.5x")
        _, t_vibe = timed(lambda: solve(loads, fleet, 9, "vibe"), repeat)  # noqa: B023
        _, t_tb = timed(lambda: solve(loads, fleet, 9, "token-balanced"), repeat)  # noqa: B023
        _, t_py = timed(lambda: token_balanced_python(loads, 32, 9), repeat)  # noqa: B023
        cpu0 = time.process_time()
        solve(loads, fleet, 9, "vibe")
        out[regime] = {
            "vibe_s": t_vibe,
            "vibe_cpu_s": time.process_time() - cpu0,
            "token_balanced_numpy_s": t_tb,
            "token_balanced_python_s": t_py,
        }
        print(
            f"headline {regime}: vibe {t_vibe:.3f}s, token-balanced numpy {t_tb:.3f}s, python {t_py:.3f}s",
            flush=True,
        )
    return out


def incremental(quick: bool) -> list[dict]:
    """One GPU slows 1.5x, or 30 % of the load profile changes: slots moved vs gain recovered."""
    rows = []
    gpus, slots = 32, 9
    layers = MODELS["DeepSeek-V3"]["layers"]
    budgets = [1, 2, 5, 10, 20, 30] if not quick else [5, 20]
    for regime in REGIMES:
        loads = loads_for("DeepSeek-V3", regime)
        fleet = fleet_for("DeepSeek-V3", gpus, "4%")
        current = solve(loads, fleet, slots).placement
        g = fleet.gpus[5]
        slowed = Fleet(
            tuple(GPUCurve(x.id, x.node, x.tokens, x.seconds * (1.5 if x is g else 1.0)) for x in fleet.gpus)
        )
        m = MODELS["DeepSeek-V3"]
        drift = np.round(
            0.7 * loads + 0.3 * skewed_loads(layers, m["experts"], mean_tokens=REGIMES[regime], seed=7)
        )
        for scenario, (ld, fl) in {
            "gpu 1.5x slower": (loads, slowed),
            "load drift 30%": (drift, fleet),
        }.items():
            before = evaluate(current, ld, fl).step_time_s
            full = solve(ld, fl, slots, current=current)
            gain = before - full.step_time_s
            row = {
                "regime": regime,
                "scenario": scenario,
                "before_ms": before * 1e3,
                "full_ms": full.step_time_s * 1e3,
                "full_moves": full.moves,
                "points": [],
            }
            for per_layer in [*budgets, None]:
                mm = None if per_layer is None else per_layer * layers
                r, t = timed(lambda: replace_incremental(current, ld, fl, max_moves=mm, time_budget_s=1.0))  # noqa: B023
                row["points"].append(
                    {
                        "max_moves_per_layer": per_layer,
                        "moves": r.moves,
                        "recovered": (before - r.step_time_s) / gain if gain > 0 else 1.0,
                        "seconds": t,
                    }
                )
            rows.append(row)
            pts = ", ".join(
                f"{p['moves'] / layers:.1f}/layer -> {p['recovered'] * 100:.0f}%" for p in row["points"]
            )
            print(f"incremental {regime} {scenario}: full {full.moves / layers:.0f}/layer; {pts}", flush=True)
    return rows


#: Expected-objective instances: (model, GPUs, slots, top-k) and step mixes as (tokens per GPU, weight):
#: decode batches of 8 or 64 running requests per GPU, and decode mixed with 512-token prefill chunks.
EXPECTED_CONFIGS = [("DeepSeek-V3", 32, 9, 8), ("DeepSeek-V3", 64, 5, 8), ("Qwen3-235B", 16, 9, 8)]
EXPECTED_MIXES = {
    "decode 8/GPU": ((8, 1.0),),
    "decode 64/GPU": ((64, 1.0),),
    "decode 64 + prefill 512": ((64, 0.8), (512, 0.2)),
}
HELD_OUT = 64


def _held_out_times(phy: np.ndarray, held: Routing, fleet: Fleet, slots: int) -> np.ndarray:
    """[N] step time of each held-out sampled step."""
    return sampled_gpu_times(phy, held, fleet.table, slots).max(axis=2).sum(axis=1)


def _paired(a: np.ndarray, b: np.ndarray, held: Routing) -> tuple[float, float, float]:
    """Weighted mean step times of a and b over the held-out steps, and a 95 % half-width of the mean of
    (a - b) / mean(a) (kinds are independent strata: var = sum_k w_k^2 var_k / R)."""
    ma, mb = float(held.weights @ a), float(held.weights @ b)
    d = (a - b) / ma
    var = 0.0
    for k, w in enumerate(held.mix.weights):
        dk = d[held.kind == k]
        var += w**2 * float(dk.var(ddof=1)) / dk.size
    return ma, mb, 1.96 * var**0.5


def expected(quick: bool) -> dict:
    """The expected objective (``solve(..., routing=...)``) against the mean-load planner.

    Per instance and step mix: token-balanced, ``vibe`` planned on mean loads of the mix's mean tokens per
    step (what ``tokensPerStep`` did), and ``vibe`` planned for the expected objective (16 sampled routings
    per kind, seed 0), all priced on held-out routings (64 per kind, seed 1, round-robin dispatch).
    """
    rows = []
    configs = EXPECTED_CONFIGS if not quick else EXPECTED_CONFIGS[:1]
    fleets = ("same", "8%+1.5x") if not quick else ("8%+1.5x",)
    for model, gpus, slots, top_k in configs:
        for mix_name, kinds in EXPECTED_MIXES.items():
            mix = StepMix(tuple(t * gpus for t, _ in kinds), tuple(w for _, w in kinds))
            loads = loads_for(model, "decode")
            mean_tokens = float(np.dot(mix.tokens, mix.weights))
            mean_loads = loads / loads.sum(axis=1, keepdims=True) * mean_tokens * top_k
            routing = sample_routing(loads, mix, top_k, seed=0)
            held = sample_routing(loads, mix, top_k, samples=HELD_OUT, seed=1)
            for fleet_name in fleets:
                fleet = fleet_for(model, gpus, fleet_name)
                tb, t_tb = timed(lambda: solve(mean_loads, fleet, slots, "token-balanced"))  # noqa: B023
                mv, t_mv = timed(lambda: solve(mean_loads, fleet, slots, "vibe"))  # noqa: B023
                ev, t_ev = timed(lambda: solve(loads, fleet, slots, "vibe", routing=routing))  # noqa: B023
                times = {n: _held_out_times(r.placement.phy2log, held, fleet, slots) for n, r in
                         (("tb", tb), ("mean", mv), ("exp", ev))}  # fmt: skip
                m_mv, m_ev, hw = _paired(times["mean"], times["exp"], held)
                m_tb, _, hw_tb = _paired(times["tb"], times["exp"], held)
                row = {
                    "model": model,
                    "gpus": gpus,
                    "slots": slots,
                    "mix": mix_name,
                    "stepMix": mix.as_json(),
                    "fleet": fleet_name,
                    "token_balanced_ms": m_tb * 1e3,
                    "mean_load_vibe_ms": m_mv * 1e3,
                    "expected_vibe_ms": m_ev * 1e3,
                    "gain_vs_mean_load": 1 - m_ev / m_mv,
                    "gain_vs_mean_load_hw": hw,
                    "gain_vs_token_balanced": 1 - m_ev / m_tb,
                    "gain_vs_token_balanced_hw": hw_tb,
                    "in_sample_ms": ev.step_time_s * 1e3,
                    "bound_ms": ev.lower_bound_s * 1e3,
                    "gap": ev.gap,
                    "mean_load_of_expected_ms": ev.info["meanLoadStepTimeSeconds"] * 1e3,
                    "mean_load_of_mean_vibe_ms": float(evaluate(mv.placement, mean_loads, fleet).step_time_s)
                    * 1e3,
                    "layers_from": ev.info.get("layersFrom", {}),
                    "solve_s": {"token-balanced": t_tb, "mean-load vibe": t_mv, "expected vibe": t_ev},
                }
                rows.append(row)
                print(
                    f"expected {model} {gpus}x{slots} {mix_name:24s} {fleet_name:8s} tb {m_tb * 1e3:8.3f} "
                    f"mean-vibe {m_mv * 1e3:8.3f} exp-vibe {m_ev * 1e3:8.3f} ms  vs mean-load "
                    f"{row['gain_vs_mean_load'] * 100:+.1f}% +-{hw * 100:.1f}  "
                    f"solve {t_ev:.1f}s vs {t_mv:.1f}s",
                    flush=True,
                )
    sweep = []
    model, gpus, slots, top_k = EXPECTED_CONFIGS[0]
    kinds = EXPECTED_MIXES["decode 64 + prefill 512"]
    mix = StepMix(tuple(t * gpus for t, _ in kinds), tuple(w for _, w in kinds))
    loads = loads_for(model, "decode")
    fleet = fleet_for(model, gpus, "8%+1.5x")
    held = sample_routing(loads, mix, top_k, samples=HELD_OUT, seed=1)
    for samples in (4, 8, 16, 32) if not quick else (4, 16):
        routing = sample_routing(loads, mix, top_k, samples=samples, seed=0)
        ev, t = timed(lambda: solve(loads, fleet, slots, "vibe", routing=routing))  # noqa: B023
        held_ms = float(held.weights @ _held_out_times(ev.placement.phy2log, held, fleet, slots)) * 1e3
        sweep.append(
            {"samples": samples, "solve_s": t, "in_sample_ms": ev.step_time_s * 1e3, "held_out_ms": held_ms}
        )
        print(
            f"samples {samples}: solve {t:.1f}s in-sample {ev.step_time_s * 1e3:.3f} held-out {held_ms:.3f}"
        )
    return {"rows": rows, "sweep": sweep}


#: Incremental re-placement under the expected objective: (model, GPUs, slots, top-k), decode mixes
#: (tokens per GPU, weight), and the drift seeds.
INCREMENTAL_CONFIGS = [("DeepSeek-V3", 8, 33, 8), ("DeepSeek-V3", 32, 9, 8)]
INCREMENTAL_MIXES = {"decode 8/GPU": ((8, 1.0),), "decode 64/GPU": ((64, 1.0),)}
INCREMENTAL_SEEDS = (0, 1, 2, 3, 4)
INCREMENTAL_BEGIN = "<!-- expected-incremental: begin -->"
INCREMENTAL_END = "<!-- expected-incremental: end -->"


def _t_interval(xs: list[float]) -> tuple[float, float]:
    """Mean and 95 % half-width (Student t over the seeds)."""
    a = np.asarray(xs, dtype=np.float64)
    if a.size < 2:
        return float(a.mean()), float("nan")
    hw = float(t975(a.size - 1) * a.std(ddof=1) / a.size**0.5)
    return float(a.mean()), hw


def expected_incremental(quick: bool) -> list[dict]:
    """After a drift (one GPU 1.5x slower, 30 % of the loads shifted): the placement in service, incremental
    re-placement by mean loads and by the expected objective, and a full expected re-plan.

    Per seed: the drifted loads (``skewed_loads`` seed 7 + seed), the slowed GPU (drawn), the planner's
    routing samples (16 per kind, seed = the seed) and held-out routings (64 per kind, seed 100 + seed).
    The placement in service is ``solve(..., routing=...)`` of the undrifted inputs on the "4%" fleet.
    """
    rows = []
    seeds = INCREMENTAL_SEEDS if not quick else INCREMENTAL_SEEDS[:2]
    for model, gpus, slots, top_k in INCREMENTAL_CONFIGS:
        m = MODELS[model]
        layers = m["layers"]
        loads = loads_for(model, "decode")
        fleet = fleet_for(model, gpus, "4%")
        for mix_name, kinds in INCREMENTAL_MIXES.items():
            mix = StepMix(tuple(t * gpus for t, _ in kinds), tuple(w for _, w in kinds))
            current = solve(loads, fleet, slots, routing=sample_routing(loads, mix, top_k, seed=0)).placement
            for seed in seeds:
                rng = np.random.default_rng(seed)
                slow = int(rng.integers(gpus))
                drifted = Fleet(
                    tuple(
                        GPUCurve(x.id, x.node, x.tokens, x.seconds * (1.5 if k == slow else 1.0))
                        for k, x in enumerate(fleet.gpus)
                    )
                )
                shifted = skewed_loads(layers, m["experts"], mean_tokens=REGIMES["decode"], seed=7 + seed)
                ld = np.round(0.7 * loads + 0.3 * shifted) + 1.0
                routing = sample_routing(ld, mix, top_k, seed=seed)
                held = sample_routing(ld, mix, top_k, samples=HELD_OUT, seed=100 + seed)
                inc_mean, t_mean = timed(
                    lambda: replace_incremental(current, routing.mean_loads_of_mix(), drifted)  # noqa: B023
                )
                inc_exp, t_exp = timed(
                    lambda: replace_incremental(current, ld, drifted, routing=routing)  # noqa: B023
                )
                full, t_full = timed(
                    lambda: solve(ld, drifted, slots, routing=routing, current=current)  # noqa: B023
                )
                held_ms = {
                    name: float(held.weights @ _held_out_times(phy, held, drifted, slots)) * 1e3
                    for name, phy in (
                        ("before", current.phy2log),
                        ("incremental-mean", inc_mean.placement.phy2log),
                        ("incremental-expected", inc_exp.placement.phy2log),
                        ("full", full.placement.phy2log),
                    )
                }
                row = {
                    "model": model,
                    "gpus": gpus,
                    "slots": slots,
                    "mix": mix_name,
                    "stepMix": mix.as_json(),
                    "seed": seed,
                    "slowed_gpu": slow,
                    "held_out_ms": held_ms,
                    "moves": {
                        "incremental-mean": inc_mean.moves,
                        "incremental-expected": inc_exp.moves,
                        "full": full.moves,
                    },
                    "seconds": {"incremental-mean": t_mean, "incremental-expected": t_exp, "full": t_full},
                    "in_sample_ms": inc_exp.step_time_s * 1e3,
                    "bound_ms": inc_exp.lower_bound_s * 1e3,
                    "gap": inc_exp.gap,
                    "converged": inc_exp.converged,
                    "converged_mean": inc_mean.converged,
                }
                rows.append(row)
                print(
                    f"incremental-expected {model} {gpus}x{slots} {mix_name} seed {seed}: before "
                    f"{held_ms['before']:.3f} inc-mean {held_ms['incremental-mean']:.3f} "
                    f"({inc_mean.moves / layers:.1f}/layer, {t_mean:.2f}s) inc-exp "
                    f"{held_ms['incremental-expected']:.3f} ({inc_exp.moves / layers:.1f}/layer, "
                    f"{t_exp:.2f}s) "
                    f"full {held_ms['full']:.3f} ({full.moves / layers:.0f}/layer, {t_full:.1f}s)",
                    flush=True,
                )
    return rows


def expected_incremental_report(rows: list[dict], env: dict) -> str:
    """The ``--expected-incremental`` section (between its markers)."""
    lines = [
        INCREMENTAL_BEGIN,
        "## Incremental re-placement under the expected objective",
        "",
        "Produced by:",
        "",
        "```",
        env["command"],
        "```",
        "",
        f"Environment: {env['cpu']}; {env['pinning']}; Python {env['python']}, numpy {env['numpy']}; load "
        f"average {env['load']:.1f} at the start (a shared machine: times are single, noisy runs).",
        "",
        'DeepSeek-V3 (58 layers x 256 experts, top-8) on the "4%" H100 fleet, placed by `solve(..., '
        "routing=...)` for the decode mix. Then a drift: one GPU (drawn per seed) 1.5x slower and 30 % of "
        "the load profile shifted (`skewed_loads` seed 7 + seed). *incremental-mean* is "
        "`replace_incremental` on the mix's mean loads (what the operator ran before); "
        "*incremental-expected* is "
        "`replace_incremental(..., routing=...)` (16 samples per kind, seed = the drift seed; "
        "no move cap, the knee decides); *full* is `solve(..., routing=...)` from scratch (aligned to the "
        "placement in service). All are priced on held-out routings (64 per kind, seed 100 + seed, "
        "round-robin dispatch). Figures are the mean over the seeds with the 95 % Student-t half-width.",
        "",
        "| GPUs x slots | mix | seeds | in service ms | incr.-mean ms | incr.-expected ms | full ms | "
        "expected vs mean incr. | recovered (mean / expected) | moves/layer (mean / expected / full) | "
        "s (mean / expected / full) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["gpus"], r["slots"], r["mix"]), []).append(r)
    summary = []
    for (model, gpus, slots, mix), rs in groups.items():
        layers = MODELS[model]["layers"]

        def ms(name: str, rs: list[dict] = rs) -> str:
            m, hw = _t_interval([r["held_out_ms"][name] for r in rs])
            return f"{m:.3f} ± {hw:.3f}"

        g_m, g_hw = _t_interval(
            [1 - r["held_out_ms"]["incremental-expected"] / r["held_out_ms"]["incremental-mean"] for r in rs]
        )

        def rec(name: str, rs: list[dict] = rs) -> tuple[float, float]:
            return _t_interval(
                [
                    (r["held_out_ms"]["before"] - r["held_out_ms"][name])
                    / (r["held_out_ms"]["before"] - r["held_out_ms"]["full"])
                    for r in rs
                ]
            )

        (rm, rm_hw), (re, re_hw) = rec("incremental-mean"), rec("incremental-expected")
        mv = [
            statistics.mean(r["moves"][k] for r in rs) / layers
            for k in ("incremental-mean", "incremental-expected", "full")
        ]
        sec = [
            statistics.mean(r["seconds"][k] for r in rs)
            for k in ("incremental-mean", "incremental-expected", "full")
        ]
        lines.append(
            f"| {gpus} x {slots} | {mix} | {len(rs)} | {ms('before')} | {ms('incremental-mean')} | "
            f"{ms('incremental-expected')} | {ms('full')} | {g_m * 100:+.2f} % ± {g_hw * 100:.2f} | "
            f"{rm * 100:.0f} % ± {rm_hw * 100:.0f} / {re * 100:.0f} % ± {re_hw * 100:.0f} | "
            f"{mv[0]:.1f} / {mv[1]:.1f} / {mv[2]:.0f} | {sec[0]:.2f} / {sec[1]:.2f} / {sec[2]:.1f} |"
        )
        wins = sum(
            r["held_out_ms"]["incremental-expected"] < r["held_out_ms"]["incremental-mean"] for r in rs
        )
        f_m, f_hw = _t_interval(
            [1 - r["held_out_ms"]["full"] / r["held_out_ms"]["incremental-expected"] for r in rs]
        )
        verdict = (
            "significant" if g_m - g_hw > 0 else "within the seeds' noise" if g_m + g_hw > 0 else "worse"
        )
        summary.append(
            f"- EP {gpus} x {slots}, {mix}: incremental-expected vs incremental-mean {g_m * 100:+.2f} % ± "
            f"{g_hw * 100:.2f} ({verdict}; faster on {wins} of {len(rs)} seeds), with "
            f"{mv[1]:.1f} vs {mv[0]:.1f} moves per layer; a full expected re-plan (moving {mv[2]:.0f} of "
            f"{gpus * slots} slots per layer) gains {f_m * 100:+.2f} % ± {f_hw * 100:.2f} over "
            "incremental-expected."
        )
    lines += ["", "Summary (gains are 1 - time / other's time, on held-out steps; + is faster):", ""]
    lines += summary
    lines += ["", "Per seed (held-out ms; in-sample expected ms, bound and gap of incremental-expected):", ""]
    lines += [
        "| GPUs x slots | mix | seed | slowed GPU | in service | incr.-mean | incr.-expected | full | "
        "in-sample | bound | gap | converged |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        h = r["held_out_ms"]
        lines.append(
            f"| {r['gpus']} x {r['slots']} | {r['mix']} | {r['seed']} | {r['slowed_gpu']} | "
            f"{h['before']:.3f} | {h['incremental-mean']:.3f} | {h['incremental-expected']:.3f} | "
            f"{h['full']:.3f} | "
            f"{r['in_sample_ms']:.3f} | {r['bound_ms']:.3f} | {r['gap'] * 100:.1f} % | {r['converged']} |"
        )
    lines.append(INCREMENTAL_END)
    return "\n".join(lines) + "\n"


def _section_of(text: str) -> str:
    """The ``--expected-incremental`` section of a report ('' if none)."""
    if INCREMENTAL_BEGIN not in text or INCREMENTAL_END not in text:
        return ""
    return (
        INCREMENTAL_BEGIN
        + text.split(INCREMENTAL_BEGIN, 1)[1].split(INCREMENTAL_END, 1)[0]
        + INCREMENTAL_END
        + "\n"
    )


def _with_section(text: str, section: str) -> str:
    """``text`` with ``section`` in place of its previous copy (between the markers), else appended."""
    old = _section_of(text)
    if old:
        return text.replace(old, section)
    return text.rstrip("\n") + ("\n\n" if text else "") + section


def _emit(out: Path | None, shown: str, text: str, raw: dict) -> None:
    """Print ``shown``; write ``text`` to ``out`` and ``raw`` beside it as .json."""
    print()
    print(shown)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        out.with_suffix(".json").write_text(json.dumps(raw, indent=1, sort_keys=True, default=float) + "\n")


def expected_report(out: dict, env: dict) -> str:
    rows, sweep = out["rows"], out["sweep"]
    lines = ["# The expected objective against the mean-load planner", ""]
    lines += ["Produced by:", "", "```", env["command"], "```", ""]
    lines += [
        f"Environment: {env['cpu']}; {env['pinning']}; Python {env['python']}, numpy {env['numpy']}; load "
        f"average {env['load']:.1f} at the start (a shared machine: solve times are single, noisy runs).",
        "",
        "Each placement is priced on held-out sampled routings (64 per kind of step, seed 1; the expected "
        "planner sampled 16 per kind with seed 0), each token routed top-8 without replacement from the "
        "layer's load profile (`vibe.placement.routing`), round-robin dispatch over replicas, an expert "
        "slot with no tokens costing nothing. *mean-load vibe* is `vibe` planned on mean loads of the mix's "
        "mean tokens per step (what a single `tokensPerStep` did); *expected vibe* is `solve(..., "
        "routing=...)`. Gains are 1 - expected / other on the held-out steps, with the 95 % interval of "
        "the paired per-step difference. Tokens per step are per GPU x the GPUs (decode 64/GPU on 32 GPUs "
        "= 2048 tokens per MoE layer per step). Loads: `skewed_loads` seed 1 (2-4x max/mean); fleets as "
        "in `placement.py`.",
        "",
    ]
    g = [r["gain_vs_mean_load"] for r in rows]
    neg = [r for r in rows if r["gain_vs_mean_load"] + r["gain_vs_mean_load_hw"] < 0]
    slow = [r for r in rows if r["fleet"] != "same"]
    lines += [
        "## Summary",
        "",
        f"- Against the mean-load planner: gain from {min(g) * 100:+.1f} % to {max(g) * 100:+.1f} % "
        f"(median {statistics.median(g) * 100:+.1f} %) over {len(rows)} instance x mix x fleet cases; "
        f"{sum(r['gain_vs_mean_load'] - r['gain_vs_mean_load_hw'] > 0 for r in rows)} significantly "
        f"positive, {len(neg)} significantly negative"
        + (f" (at most {min(r['gain_vs_mean_load'] for r in neg) * 100:+.3f} %)" if neg else "")
        + ". With identical GPUs it changes nothing that matters (|gain| <= "
        f"{max(abs(r['gain_vs_mean_load']) for r in rows if r['fleet'] == 'same') * 100:.2f} %); with a "
        f"slow GPU it gains {min(r['gain_vs_mean_load'] for r in slow) * 100:+.1f} to "
        f"{max(r['gain_vs_mean_load'] for r in slow) * 100:+.1f} %, most where decode and prefill steps mix "
        "(the mean-load plan of the mix's mean tokens fits neither) and at small decode batches.",
        f"- Against token-balanced: from {min(r['gain_vs_token_balanced'] for r in rows) * 100:+.1f} % to "
        f"{max(r['gain_vs_token_balanced'] for r in rows) * 100:+.1f} %.",
        "- Solve time, expected vibe vs mean-load vibe (s): "
        + ", ".join(
            f"{r['model']} {r['gpus']}x{r['slots']} {r['mix']}: {r['solve_s']['expected vibe']:.1f} vs "
            f"{r['solve_s']['mean-load vibe']:.1f}"
            for r in rows
            if r["fleet"] == "8%+1.5x"
        )
        + ".",
        "",
        "## Held-out expected step time",
        "",
    ]
    cols = ["model", "GPUs x slots", "step mix (tokens/GPU: weight)", "fleet", "token-bal. ms",
            "mean-load vibe ms", "expected vibe ms", "gain vs mean-load", "gain vs token-bal.",
            "in-sample ms", "bound ms", "gap", "layers from", "solve s (exp / mean)"]  # fmt: skip
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "|".join("---" for _ in cols) + "|")
    for r in rows:
        frm = ", ".join(f"{k} {v}" for k, v in sorted(r["layers_from"].items()))
        lines.append(
            f"| {r['model']} | {r['gpus']} x {r['slots']} | {r['mix']} | {r['fleet']} | "
            f"{r['token_balanced_ms']:.3f} | {r['mean_load_vibe_ms']:.3f} | {r['expected_vibe_ms']:.3f} | "
            f"{r['gain_vs_mean_load'] * 100:+.2f} % ± {r['gain_vs_mean_load_hw'] * 100:.2f} | "
            f"{r['gain_vs_token_balanced'] * 100:+.2f} % ± {r['gain_vs_token_balanced_hw'] * 100:.2f} | "
            f"{r['in_sample_ms']:.3f} | {r['bound_ms']:.3f} | {r['gap'] * 100:.1f} % | {frm} | "
            f"{r['solve_s']['expected vibe']:.1f} / {r['solve_s']['mean-load vibe']:.1f} |"
        )
    lines += [
        "",
        "The bound (`bounds.expected_lower_bounds`) is, per layer, the larger of the planner's own sampled "
        "steps' bounds averaged and the work bound on expected item costs; the gap is in-sample ms / bound "
        "- 1. It is loose (25-50 % with a slow GPU) because each sampled step is bounded as if it could "
        "have its own placement. *layers from* says which candidate each layer kept "
        "(`engine.vibe_expected`; a sampled candidate replaces the mean-load default only when 2 standard "
        "errors better on the samples).",
        "",
        f"## Routing samples per kind ({EXPECTED_CONFIGS[0][0]} {EXPECTED_CONFIGS[0][1]} x "
        f"{EXPECTED_CONFIGS[0][2]}, decode 64 + prefill 512, 8%+1.5x)",
        "",
        "| samples per kind | solve s | in-sample ms | held-out ms |",
        "|---|---|---|---|",
    ]
    for s in sweep:
        lines.append(
            f"| {s['samples']} | {s['solve_s']:.1f} | {s['in_sample_ms']:.3f} | {s['held_out_ms']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def geomean(xs) -> float:
    return float(np.exp(np.mean(np.log(np.asarray(xs)))))


def report(rows: list[dict], head: dict, inc: list[dict], env: dict) -> str:
    lines = ["# Placement benchmark", ""]
    lines += ["Produced by:", "", "```", env["command"], "```", ""]
    lines += [
        f"Environment: {env['cpu']}; {env['pinning']}; Python {env['python']}, numpy {env['numpy']}. "
        f"{os.cpu_count()} CPUs, load average {env['load']:.1f} at the start: on a shared machine wall times "
        "are noisy; solve times are the best of 3 runs for the headline and single runs in the table. "
        "Instances, loads and fleets are described in `benchmarks/placement.py`.",
        "",
    ]
    n = len(rows)
    never = sum(r["per_layer_never_worse"] for r in rows)
    lines += ["## Summary", ""]
    lines.append(
        f"- `vibe` is never slower than `token-balanced`: {never}/{n} instances, layer by layer; "
        f"smallest speedup x{min(r['speedup'] for r in rows):.3f}, "
        f"largest x{max(r['speedup'] for r in rows):.3f}."
    )
    by_fleet = {f: geomean([r["speedup"] for r in rows if r["fleet"] == f]) for f in FLEETS}
    lines.append(
        "- Speedup over `token-balanced` (geometric mean) by fleet: "
        + ", ".join(f"{f}: x{v:.3f}" for f, v in by_fleet.items())
        + f" (it gains most on the {max(by_fleet, key=by_fleet.__getitem__)} fleet)."
    )
    gaps = [r["vibe_gap"] for r in rows]
    tb_gaps = [r["token-balanced_gap"] for r in rows]
    lines.append(
        f"- `vibe`'s gap to its lower bound: mean {statistics.mean(gaps) * 100:.2f} % over the {n} instances "
        f"(median {statistics.median(gaps) * 100:.2f} %, max {max(gaps) * 100:.2f} %); "
        "`token-balanced`: mean "
        f"{statistics.mean(tb_gaps) * 100:.2f} %."
    )
    mx = [r for r in rows if "exact_ms" in r]
    if mx:
        lines.append(
            "- Mixtral (8 experts on 16 slots) against CP-SAT "
            "(8 s deterministic budget, warm-started from vibe): "
            + ", ".join(
                f"{r['regime']}/{r['fleet']}: vibe/exact {r['vibe_ms'] / r['exact_ms']:.4f}"
                f" (exact proved {r['optimalLayers']}/32 layers)"
                for r in mx
            )
            + "."
        )
    for regime, h in head.items():
        lines.append(
            f"- Headline, DeepSeek-V3 58 x 288 slots on 32 GPUs (8%+1.5x fleet, {regime}): full `vibe` solve "
            f"{h['vibe_s']:.2f} s wall ({h['vibe_cpu_s']:.2f} s CPU) on one core; token-balanced written "
            f"straightforwardly in Python {h['token_balanced_python_s']:.2f} s "
            f"(vibe / that = {h['vibe_s'] / h['token_balanced_python_s']:.2f}); "
            "our vectorised token-balanced "
            f"{h['token_balanced_numpy_s']:.3f} s."
        )
    lines += ["", "## Step time per instance", ""]
    head_cols = [
        "model",
        "GPUs x slots (R)",
        "regime",
        "fleet",
        "round-robin ms",
        "token-bal. ms",
        "vibe ms",
        "speedup",
        "bound ms",
        "vibe gap",
        "token-bal. gap",
        "vibe solve s",
    ]
    lines.append("| " + " | ".join(head_cols) + " |")
    lines.append("|" + "|".join("---" for _ in head_cols) + "|")
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['gpus']} x {r['slots']} ({r['redundant']}) | "
            f"{r['regime']} | {r['fleet']} | "
            f"{r['round-robin_ms']:.3f} | {r['token-balanced_ms']:.3f} | {r['vibe_ms']:.3f} | "
            f"x{r['speedup']:.3f} | {r['bound_ms']:.3f} | {r['vibe_gap'] * 100:.2f} % | "
            f"{r['token-balanced_gap'] * 100:.2f} % | {r['vibe_s']:.2f} |"
        )
    if mx:
        lines += ["", "Mixtral with `exact` (CP-SAT):", ""]
        lines.append(
            "| regime | fleet | vibe ms | exact ms | exact gap | CP-SAT bound ms | layers proved optimal |"
        )
        lines.append("|---|---|---|---|---|---|---|")
        for r in mx:
            lines.append(
                f"| {r['regime']} | {r['fleet']} | {r['vibe_ms']:.3f} | {r['exact_ms']:.3f} | "
                f"{r['exact_gap'] * 100:.2f} % | {r['cpsatBoundSeconds'] * 1e3:.3f} | "
                f"{r['optimalLayers']}/32 |"
            )
    if inc:
        layers = MODELS["DeepSeek-V3"]["layers"]
        lines += ["", "## Incremental re-placement (DeepSeek-V3, 32 GPUs x 9 slots, 4% fleet)", ""]
        lines.append(
            "Slots moved per layer (a slot whose expert changes = one expert copy) and the share of a full "
            "re-solve's gain recovered. `max k` = a cap of k x 58 slots in all, spent on the layers where "
            "they buy the most; `default` = no cap, stop at the knee of the trade-off: each slot changed "
            f"must gain at least {KNEE:g} x the average gain per slot of the greedy walks and at least "
            f"{MIN_GAIN * 100:g} % of the step time. The walks and the full re-solve are deterministic."
        )
        lines.append("")
        caps = [p["max_moves_per_layer"] for p in inc[0]["points"]]
        cols = ["regime", "scenario", "before ms", "full re-solve ms (moves/layer)"] + [
            f"max {c}" if c is not None else "default" for c in caps
        ]
        lines.append("| " + " | ".join(cols) + " |")
        lines.append("|" + "|".join("---" for _ in cols) + "|")
        for r in inc:
            cells = [f"{p['moves'] / layers:.1f} -> {p['recovered'] * 100:.0f} %" for p in r["points"]]
            lines.append(
                f"| {r['regime']} | {r['scenario']} | {r['before_ms']:.3f} | "
                f"{r['full_ms']:.3f} ({r['full_moves'] / layers:.0f}) | " + " | ".join(cells) + " |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a subset of instances (for a smoke run)")
    ap.add_argument("--out", type=Path, help="write the markdown report here (and the raw numbers as .json)")
    ap.add_argument(
        "--expected", action="store_true", help="only the expected objective vs the mean-load one"
    )
    ap.add_argument(
        "--expected-incremental",
        action="store_true",
        help="only incremental re-placement under the expected objective (its own section of --out)",
    )
    args = ap.parse_args()
    pinning = common.pin_one_core()
    env = {
        "command": " ".join([".venv/bin/python", "benchmarks/placement.py", *sys.argv[1:]]),
        "cpu": _cpu_name(),
        "pinning": pinning,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "load": os.getloadavg()[0],
    }
    if args.expected_incremental or args.expected:
        # the two write one file: each keeps the other's part of it
        old_text = args.out.read_text() if args.out and args.out.exists() else ""
        raw_path = args.out.with_suffix(".json") if args.out else None
        raw = json.loads(raw_path.read_text()) if raw_path and raw_path.exists() else {}
        if args.expected_incremental:
            raw["incremental"] = {"env": env, "rows": expected_incremental(args.quick)}
            section = expected_incremental_report(raw["incremental"]["rows"], env)
            text = _with_section(old_text, section)
        else:
            out = expected(args.quick)
            raw = {"env": env, **out, **({"incremental": raw["incremental"]} if "incremental" in raw else {})}
            section = expected_report(out, env)
            text = _with_section(section, _section_of(old_text)) if _section_of(old_text) else section
        _emit(args.out, section, text, raw)
        return
    rows = quality(args.quick)
    head = headline(repeat=3)
    inc = incremental(args.quick)
    text = report(rows, head, inc, env)
    _emit(args.out, text, text, {"env": env, "instances": rows, "headline": head, "incremental": inc})


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
