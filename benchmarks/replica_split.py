"""Weighted vs even replica split: what per-slot replica weights buy on heterogeneous fleets.

Run from the repository root (about 4 minutes on one core; ``--quick``: 2 seeds, no expected section):

    .venv/bin/python benchmarks/replica_split.py --out benchmarks/results/replica-split.md

Every number is a ratio of predicted step times (the one evaluator, ``vibe.placement.evaluate``) measured
in this one run, even split over weighted split of the SAME policy (``solve(..., replica_split=...)``), so
> 1 means the weights help. Two policies: token-balanced (DeepSeek EPLB's placement, blind to GPU speed:
what an engine's own EPLB runs) and vibe (speed-aware placement). Per instance and fleet, ``SEEDS`` seeds
(each draws other loads and other GPU slowdowns); shown: the mean ratio and its 95 % t-interval over seeds.

Instances (GPUs x slots per GPU, R = redundant slots, as the engines run them: SGLang's and vLLM's EPLB
take ``--ep-num-redundant-experts`` / ``--num-redundant-experts`` 32 at EP 32):
  DeepSeek-V3  58 x 256: EP 8 x 36 (R 32), 32 x 9 (R 32), 64 x 5 (R 64)
  Qwen3-235B   94 x 128: EP 8 x 17 (R 8), 32 x 5 (R 32), 64 x 3 (R 64)
Loads: ``skewed_loads`` (per-layer skew 2-4x), mean 100 tokens per expert per step ("decode", below the
H100 curve's knee) or 2048 ("prefill", its linear part).
Fleets (``synthetic.h100_fleet``, the model's measured H100 expert curve): "same" (identical GPUs: weights
cannot help a balanced placement), "spread+1.5x" (the SC'22 8 % spread and one GPU 1.5x slower) with the
measured slowness model (floor unscaled, ``FLOOR_SHARE["measured"]``) and with the uniform one (whole
curve scaled).

``expected`` section: the expected objective (sampled routing, ``--step-mix``), decode batches of 256
tokens and prefill chunks of 8192 (70/30 of steps), round-robin dispatch, 16 samples per kind to plan;
each placement priced on 64 held-out sampled routings per kind (another seed).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from common import MODELS, pin_one_core

from vibe.placement import evaluate, solve
from vibe.placement.routing import StepMix, sample_routing
from vibe.placement.synthetic import FLOOR_SHARE, h100_fleet, skewed_loads
from vibe.simulate.report import t975

INSTANCES = [
    ("DeepSeek-V3", 8, 36),
    ("DeepSeek-V3", 32, 9),
    ("DeepSeek-V3", 64, 5),
    ("Qwen3-235B", 8, 17),
    ("Qwen3-235B", 32, 5),
    ("Qwen3-235B", 64, 3),
]
REGIMES = {"decode": 100.0, "prefill": 2048.0}
#: name -> (spread, outliers, floor share)
FLEETS = {
    "same": (0.0, 0, FLOOR_SHARE["measured"]),
    "spread+1.5x measured": (0.08, 1, FLOOR_SHARE["measured"]),
    "spread+1.5x uniform": (0.08, 1, FLOOR_SHARE["uniform"]),
}
SEEDS = 5
BUDGET_S = 0.5
MIX = "256:0.7,8192:0.3"


def interval(xs: list[float]) -> str:
    """mean [95 % t-interval] of ratios over seeds."""
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return f"{m:.3f}"
    h = t975(len(xs) - 1) * statistics.stdev(xs) / len(xs) ** 0.5
    return f"{m:.3f} [{m - h:.3f}, {m + h:.3f}]"


def instance(model: str, gpus: int, fleet: str, regime: str, seed: int):
    m = MODELS[model]
    spread, outliers, floor = FLEETS[fleet]
    h, i = m["shape"]
    fl = h100_fleet(
        gpus, spread=spread, outliers=outliers, floor_share=floor, hidden_size=h, intermediate_size=i,
        seed=100 + seed,
    )  # fmt: skip
    loads = skewed_loads(m["layers"], m["experts"], mean_tokens=REGIMES[regime], seed=seed)
    return loads, fl


def mean_load(seeds: int, lines: list[str]) -> None:
    lines += [
        "## Mean-load objective (ratio = even step time / weighted step time of the same policy)",
        "",
        "| model | EP x slots (R) | fleet | regime | token-balanced: even/weighted | vibe: even/weighted "
        "| token-balanced even / vibe weighted | token-balanced weighted / vibe even | weights: solve s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model, gpus, slots in INSTANCES:
        r = gpus * slots - MODELS[model]["experts"]
        for fleet in FLEETS:
            for regime in REGIMES:
                tb, vb, cross, cross2, extra = [], [], [], [], []
                for seed in range(seeds):
                    loads, fl = instance(model, gpus, fleet, regime, seed)
                    t = {}
                    for policy in ("token-balanced", "vibe"):
                        for split in ("even", "weighted"):
                            started = time.perf_counter()
                            res = solve(loads, fl, slots, policy, time_budget_s=BUDGET_S, replica_split=split)
                            t[policy, split] = (res.step_time_s, time.perf_counter() - started)
                    tb.append(t["token-balanced", "even"][0] / t["token-balanced", "weighted"][0])
                    vb.append(t["vibe", "even"][0] / t["vibe", "weighted"][0])
                    cross.append(t["token-balanced", "even"][0] / t["vibe", "weighted"][0])
                    cross2.append(t["token-balanced", "weighted"][0] / t["vibe", "even"][0])
                    extra.append(t["vibe", "weighted"][1] - t["vibe", "even"][1])
                row = (
                    f"| {model} | {gpus} x {slots} (R {r}) | {fleet} | {regime} | {interval(tb)} | "
                    f"{interval(vb)} | {interval(cross)} | {interval(cross2)} | "
                    f"{statistics.fmean(extra):+.2f} |"
                )
                print(row, flush=True)
                lines.append(row)
    lines.append("")


def expected(seeds: int, lines: list[str]) -> None:
    lines += [
        f"## Expected objective (step mix {MIX}, round-robin dispatch; priced on held-out routings)",
        "",
        "| model | EP x slots (R) | fleet | token-balanced: even/weighted | vibe: even/weighted "
        "| token-balanced even / vibe weighted |",
        "|---|---|---|---|---|---|",
    ]
    mix = StepMix.parse(MIX)
    for model, gpus, slots in INSTANCES:
        if gpus != 32:
            continue
        r = gpus * slots - MODELS[model]["experts"]
        for fleet in ("same", "spread+1.5x measured"):
            tb, vb, cross = [], [], []
            for seed in range(seeds):
                loads, fl = instance(model, gpus, fleet, "decode", seed)
                plan = sample_routing(loads, mix, 8, samples=16, seed=seed)
                held = sample_routing(loads, mix, 8, samples=64, seed=1000 + seed)
                t = {}
                for policy in ("token-balanced", "vibe"):
                    for split in ("even", "weighted"):
                        res = solve(
                            loads,
                            fl,
                            slots,
                            policy,
                            time_budget_s=BUDGET_S,
                            routing=plan,
                            replica_split=split,
                        )
                        t[policy, split] = evaluate(res.placement, loads, fl, routing=held).step_time_s
                tb.append(t["token-balanced", "even"] / t["token-balanced", "weighted"])
                vb.append(t["vibe", "even"] / t["vibe", "weighted"])
                cross.append(t["token-balanced", "even"] / t["vibe", "weighted"])
            row = (
                f"| {model} | {gpus} x {slots} (R {r}) | {fleet} | {interval(tb)} | {interval(vb)} | "
                f"{interval(cross)} |"
            )
            print(row, flush=True)
            lines.append(row)
    lines.append("")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="also write the report here (markdown)")
    ap.add_argument("--quick", action="store_true", help="2 seeds, no expected-objective section")
    args = ap.parse_args()
    pinned = pin_one_core()
    seeds = 2 if args.quick else SEEDS
    started = time.perf_counter()
    lines = [
        "# Weighted vs even replica split",
        "",
        f"Command: `{' '.join(['.venv/bin/python', *sys.argv])}`",
        "",
        f"{platform.python_version()}, numpy {np.__version__}, {pinned}; {seeds} seeds per row "
        "(loads and GPU slowdowns both redrawn); mean ratio [95 % t-interval over seeds]. "
        "> 1: the weighted split is faster.",
        "",
    ]
    mean_load(seeds, lines)
    if not args.quick:
        expected(3, lines)
    lines.append(f"Total run time {time.perf_counter() - started:.0f} s.")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
