"""Serving metrics from first-token and finish times: TTFT, TPOT, throughput, SLO attainment, goodput.

* TTFT: first token time - arrival. TPOT: (finish - first token) / (output tokens - 1), for requests
  with more than one output token (a one-token request meets any TPOT SLO).
* throughput: output tokens / (last finish - first arrival), tokens per second over the whole run.
* SLO attainment: the share of requests meeting both the TTFT and the TPOT SLO.
* goodput: per policy, the highest simulated rate whose attainment is at least ``GOODPUT_ATTAINMENT``
  (None when no rate reaches it; the answer is only as fine as the rates simulated).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from vibe.simulate.constants import as_json
from vibe.simulate.simulator import PolicyRun, Simulator
from vibe.simulate.workload import Workload, generate

GOODPUT_ATTAINMENT = 0.9


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
) -> dict[str, Any]:
    """Every policy at every rate on the same seeded requests: the ``--output`` document (no wall times)."""
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
    doc: dict[str, Any] = {
        "runs": rows,
        "goodput": goodput(rows),
        "placements": {p: sim.prepare(p).info for p in policies},
        "constants": as_json(),
        "slo": {"ttft_s": slo_ttft_s, "tpot_s": slo_tpot_s, "goodput_attainment": GOODPUT_ATTAINMENT},
    }
    if timelines:
        doc["ttft_over_time"] = timelines
    return doc
