"""Serving metrics from first-token and finish times: TTFT, TPOT, throughput, SLO attainment, goodput.

* TTFT: first token time - arrival. TPOT: (finish - first token) / (output tokens - 1), for requests
  with more than one output token (a one-token request meets any TPOT SLO).
* throughput: output tokens / (last finish - first arrival), tokens per second over the whole run.
* SLO attainment: the share of requests meeting both the TTFT and the TPOT SLO.
* goodput (``goodput_search``): per policy and seed, the highest rate whose attainment is at least
  ``GOODPUT_ATTAINMENT``, found by bisection between a passing and a failing rate until they are within
  ``resolution`` (relative) of each other; over the seeds (each its own requests and routing draws),
  the mean and a 95 % Student-t confidence interval, with the attainment at the goodput beside it.
  Attainment need not fall monotonically with the rate; bisection then returns a crossing point (one
  passing rate with a failing one within the resolution above it), never a rate read off a coarse grid.
  ``goodput`` (the grid's highest passing rate) stays for the rates the sweep simulated.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from vibe.simulate.constants import as_json
from vibe.simulate.simulator import PolicyRun, Simulator
from vibe.simulate.workload import Workload, generate

GOODPUT_ATTAINMENT = 0.9
#: bisection stops when the failing rate is within this fraction above the passing one
GOODPUT_RESOLUTION = 0.02
#: seeds (requests and routing draws) per goodput
GOODPUT_SEEDS = 3
#: two-sided 97.5 % Student-t quantiles by degrees of freedom (a 95 % interval of a mean)
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def t975(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` degrees of freedom (1.96 from 30 on)."""
    if df in _T975:
        return _T975[df]
    return 2.228 if df < 15 else 2.131 if df < 20 else 2.086 if df < 30 else 1.96


def interval(values: list[float]) -> dict[str, float]:
    """Mean and 95 % Student-t interval of ``values`` (the interval is the point with one value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return {"mean": mean, "low": mean, "high": mean}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t975(n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half}


#: attainment(policy, rate, seed) -> share of requests within both SLOs
Attain = Callable[[str, float, int], float]


def bisect_goodput(
    attain: Callable[[float], float],
    lo: float,
    hi: float,
    *,
    resolution: float = GOODPUT_RESOLUTION,
    target: float = GOODPUT_ATTAINMENT,
    max_expand: int = 12,
) -> dict[str, Any]:
    """Highest rate with ``attain(rate) >= target``, to ``resolution`` (relative), from a guess [lo, hi].

    The guess is checked and widened geometrically (x1.5) until lo passes and hi fails; then bisection
    (geometric midpoints) until hi <= lo * (1 + resolution). Returns {"rate": passing rate or None (even
    the lowest tried fails), "attainment": at that rate, "fail_rate", "fail_attainment": the failing
    rate above it, "runs": rates tried}.
    """
    if not (0 < lo < hi) or not resolution > 0:
        raise ValueError("goodput search needs 0 < lo < hi and a positive resolution")
    seen: dict[float, float] = {}

    def a(rate: float) -> float:
        if rate not in seen:
            seen[rate] = attain(rate)
        return seen[rate]

    for _ in range(max_expand):
        if a(lo) >= target:
            break
        hi, lo = lo, lo / 1.5
    else:
        return {
            "rate": None,
            "attainment": None,
            "fail_rate": lo,
            "fail_attainment": a(lo),
            "runs": len(seen),
        }
    for _ in range(max_expand):
        if a(hi) < target:
            break
        lo, hi = hi, hi * 1.5
    else:  # never failed: the search's upper edge is a lower bound
        return {
            "rate": hi,
            "attainment": a(hi),
            "fail_rate": None,
            "fail_attainment": None,
            "runs": len(seen),
        }
    while hi > lo * (1 + resolution):
        mid = math.sqrt(lo * hi)
        if a(mid) >= target:
            lo = mid
        else:
            hi = mid
    return {"rate": lo, "attainment": a(lo), "fail_rate": hi, "fail_attainment": a(hi), "runs": len(seen)}


def _one(attain: Attain, policy: str, seed: int, rate: float) -> float:
    return attain(policy, rate, seed)


def goodput_search(
    attain: Attain,
    policies: list[str],
    guess: dict[str, tuple[float, float]],
    *,
    seeds: int = GOODPUT_SEEDS,
    resolution: float = GOODPUT_RESOLUTION,
) -> dict[str, dict[str, Any]]:
    """Per policy: goodput per seed by ``bisect_goodput`` from ``guess[policy]``, and over the seeds the
    mean with its 95 % interval and the mean attainment at the goodput (module doc). A seed whose
    lowest tried rate fails counts as goodput 0."""
    out: dict[str, dict[str, Any]] = {}
    for p in policies:
        per_seed = []
        lo, hi = guess[p]
        for seed in range(seeds):
            r = bisect_goodput(functools.partial(_one, attain, p, seed), lo, hi, resolution=resolution)
            per_seed.append(r)
            if r["rate"] is not None and r["fail_rate"] is not None:  # the next seed starts close by
                lo, hi = r["rate"] / (1 + 4 * resolution), r["fail_rate"] * (1 + 4 * resolution)
        rates = [float(r["rate"] or 0.0) for r in per_seed]
        att = [float(r["attainment"]) for r in per_seed if r["attainment"] is not None]
        out[p] = {
            **interval(rates),
            "seeds": per_seed,
            "attainment_at_goodput": sum(att) / len(att) if att else None,
            "resolution": resolution,
            "target_attainment": GOODPUT_ATTAINMENT,
            "lower_bound_only": any(r["fail_rate"] is None for r in per_seed),
        }
    return out


def metrics(run: PolicyRun, slo_ttft_s: float, slo_tpot_s: float) -> dict[str, Any]:
    """The per-run keys of ``--output`` (module doc)."""
    req = run.requests
    ttft = run.first - req.arrival
    many = req.output > 1
    tpot = np.zeros_like(ttft)
    tpot[many] = (run.finish[many] - run.first[many]) / (req.output[many] - 1)
    ok = (ttft <= slo_ttft_s) & (tpot <= slo_tpot_s)
    span = float(np.nanmax(run.finish) - req.arrival.min())
    out_tokens = float(req.output.sum())

    def pct(a: np.ndarray, q: float) -> float:
        return float(np.percentile(a, q)) if a.size else 0.0

    return {
        "policy": run.policy,
        "rate": run.rate,
        "ttft_p50_s": pct(ttft, 50),
        "ttft_p90_s": pct(ttft, 90),
        "ttft_p99_s": pct(ttft, 99),
        "tpot_p50_s": pct(tpot[many], 50),
        "tpot_p90_s": pct(tpot[many], 90),
        "throughput_tokens_s": out_tokens / span if span > 0 else 0.0,
        "input_throughput_tokens_s": float(req.prompt.sum()) / span if span > 0 else 0.0,
        "slo_attainment": float(ok.mean()),
        "requests": len(req),
        "steps": run.steps,
        "makespan_s": span,
    }


def goodput(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """{policy: highest rate with attainment >= GOODPUT_ATTAINMENT, or None}."""
    out: dict[str, float | None] = {}
    for r in rows:
        best = out.get(r["policy"])
        if r["slo_attainment"] >= GOODPUT_ATTAINMENT and (best is None or r["rate"] > best):
            out[r["policy"]] = r["rate"]
        else:
            out.setdefault(r["policy"], best)
    return out


def ttft_over_time(run: PolicyRun, bin_s: float) -> dict[str, list[float]]:
    """P90 TTFT of the requests arriving in each ``bin_s`` window: {"t_s": [...], "ttft_p90_s": [...]}."""
    ttft = run.first - run.requests.arrival
    bins = np.floor(run.requests.arrival / bin_s).astype(np.int64)
    ts, p90 = [], []
    for b in np.unique(bins):
        sel = ttft[bins == b]
        ts.append(float((b + 0.5) * bin_s))
        p90.append(float(np.percentile(sel, 90)))
    return {"t_s": ts, "ttft_p90_s": p90}


def sweep(
    sim: Simulator,
    policies: list[str],
    rates: list[float],
    base: Workload,
    *,
    slo_ttft_s: float,
    slo_tpot_s: float,
    timeline_bin_s: float | None = None,
    progress: Callable[[str, float, int, int, float], None] | None = None,
    goodput_seeds: int = GOODPUT_SEEDS,
    goodput_resolution: float = GOODPUT_RESOLUTION,
    goodput_seconds: float | None = None,
) -> dict[str, Any]:
    """Every policy at every rate on the same seeded requests, then each policy's goodput by bisection
    over ``goodput_seeds`` seeds (0: none): the ``--output`` document (no wall times).

    A bisection run at rate r sends ``max(base.requests, r * goodput_seconds)`` requests (fixed
    ``base.requests`` when ``goodput_seconds`` is None)."""
    rows: list[dict[str, Any]] = []
    timelines: dict[str, dict[str, Any]] = {}
    for rate in rates:
        requests = generate(replace(base, rate=rate))
        for policy in policies:
            cb = None
            if progress is not None:

                def cb(done: int, total: int, t: float, policy: str = policy, rate: float = rate) -> None:
                    progress(policy, rate, done, total, t)

            run = sim.run(policy, requests, cb)
            run.rate = rate
            rows.append(metrics(run, slo_ttft_s, slo_tpot_s))
            if timeline_bin_s:
                timelines.setdefault(policy, {})[f"{rate:g}"] = ttft_over_time(run, timeline_bin_s)
    grid = goodput(rows)
    doc: dict[str, Any] = {
        "runs": rows,
        "goodput": grid,
        "placements": {p: sim.prepare(p).info for p in policies},
        "constants": as_json(),
        "slo": {"ttft_s": slo_ttft_s, "tpot_s": slo_tpot_s, "goodput_attainment": GOODPUT_ATTAINMENT},
    }
    if timelines:
        doc["ttft_over_time"] = timelines
    if goodput_seeds > 0:
        doc["goodput_search"] = goodput_search(
            lambda p, rate, seed: attainment_at(
                sim, p, rate, seed, base, slo_ttft_s, slo_tpot_s, goodput_seconds
            ),
            policies,
            {p: _bracket(rows, p) for p in policies},
            seeds=goodput_seeds,
            resolution=goodput_resolution,
        )
    return doc


def attainment_at(
    sim: Simulator,
    policy: str,
    rate: float,
    seed: int,
    base: Workload,
    slo_ttft_s: float,
    slo_tpot_s: float,
    seconds: float | None = None,
) -> float:
    """SLO attainment of one run: the base workload at ``rate`` with requests and routing draws of
    ``seed`` (seed 0 is the base workload's own seed)."""
    n = base.requests if seconds is None else max(base.requests, round(rate * seconds))
    requests = generate(replace(base, rate=rate, requests=n, seed=base.seed + seed))
    run = sim.run(policy, requests, seed=sim.s.seed + seed)
    run.rate = rate
    return float(metrics(run, slo_ttft_s, slo_tpot_s)["slo_attainment"])


def _bracket(rows: list[dict[str, Any]], policy: str) -> tuple[float, float]:
    """A first (passing, failing) guess from the sweep: the grid's highest passing rate and the next."""
    mine = sorted((r["rate"], r["slo_attainment"]) for r in rows if r["policy"] == policy)
    rates = [r for r, _ in mine]
    ok = [r for r, a in mine if a >= GOODPUT_ATTAINMENT]
    if not ok:
        return rates[0] / 1.5, rates[0]
    lo = max(ok)
    above = [r for r in rates if r > lo]
    return lo, (above[0] if above else lo * 1.5)
