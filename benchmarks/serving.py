"""Serving-level evidence for vibe's placement: `vibe simulate` in five settings (issue 10).

Prints each item's table and writes ``benchmarks/results/serving.md`` (with the command of each item),
the JSON of every run and the figures under ``benchmarks/results/serving/``. Deterministic (seeded).

1. the ViBE paper's setting: DeepSeek-V3 (fp8) and Qwen3-235B (bf16) on 8 H200s with the SC'22 spread
   (8 % average, one 1.5x GPU), colocated: attainment and P90 TTFT per policy near saturation, goodput;
2. scale: DeepSeek-V3 on EP 8, 32, 64, 256 with the same spread, the same load per GPU;
3. drift: one GPU throttles 1.4x mid-run: TTFT over time for token-balanced, vibe, vibe re-placed;
4. calibration against SGLang's 96-H100 DeepSeek-V3 deployment (PD disaggregation, EP32 prefill,
   EP72 decode, EPLB): simulated / reported throughput per node and EPLB speedups, nothing tuned;
5. the sanity tests (tests/simulate).

    .venv/bin/python benchmarks/serving.py            # all items, ~10 min on 2 cores
    .venv/bin/python benchmarks/serving.py --items 1  # one item
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vibe.placement.curves import Fleet, GPUCurve, reference_curve  # noqa: E402
from vibe.placement.synthetic import skewed_loads  # noqa: E402
from vibe.simulate.costs import h200_expert_curve  # noqa: E402
from vibe.simulate.engine import EngineConfig  # noqa: E402
from vibe.simulate.models import PRESETS, ModelShape  # noqa: E402
from vibe.simulate.report import metrics, sweep, ttft_over_time  # noqa: E402
from vibe.simulate.simulator import DriftEvent, GroupSpec, Settings, Simulator  # noqa: E402
from vibe.simulate.workload import Workload, generate  # noqa: E402

OUT = ROOT / "benchmarks" / "results"
POLICIES = ["round-robin", "token-balanced", "vibe"]
PAPER = {"attainment_gain_pts": 14.0, "p90_ttft_vs_default": -0.45, "p90_ttft_vs_eplb": -0.35}
#: the workload of items 1-3: prompts 1024 and outputs 256 tokens on average (uniform +-50 %)
PROMPT, OUTPUT = 1024, 256
SLO_TTFT_S, SLO_TPOT_S = 3.0, 0.15
#: the engine of items 1-3: SGLang's 8192-token chunked prefill, 32 running requests per GPU (256 on 8
#: GPUs, a decode batch that keeps TPOT near the SLO; SGLang's own cap comes from its KV pool)
ENGINE = EngineConfig(chunk_tokens=8192, max_running=32)


def sc22_fleet(curve: tuple[np.ndarray, np.ndarray], n: int, *, seed: int = 0) -> Fleet:
    """n GPUs slowed by 1 + 0.08 |z| (SC'22: 8 % average variation) and one 1.5x outlier (rank 7)."""
    rng = np.random.default_rng(seed)
    f = 1.0 + 0.08 * np.abs(rng.standard_normal(n))
    f[min(7, n - 1)] *= 1.5
    t, s = curve
    return Fleet(
        tuple(GPUCurve(f"node-{i // 8:02d}/{i % 8}", f"node-{i // 8:02d}", t, s * f[i]) for i in range(n))
    )


def loads_for(m: ModelShape, seed: int = 0) -> np.ndarray:
    """Serving-like skew (2-4x max/mean per layer, vibe.placement.synthetic), one row per MoE layer."""
    return skewed_loads(m.moe_layers, m.experts, mean_tokens=100, seed=seed)


def h100_engine_curve(m: ModelShape) -> tuple[np.ndarray, np.ndarray]:
    """An H100 expert curve as an fp8 engine pays it: the measured H100 bf16 reference curve times the
    fused-fp8 / bf16 ratio measured on the H200 (no H100 was available to measure the fused path)."""
    t, s = reference_curve(m.hidden, m.expert_intermediate, "bf16")
    ht, hb = h200_expert_curve(m, "bf16")
    _, hf = h200_expert_curve(m, "fp8")
    return t, np.maximum.accumulate(s * np.interp(t, ht, hf / hb))  # non-decreasing, as curves must be


def log(msg: str) -> None:
    print(msg, flush=True)


def pct(x: float) -> str:
    return f"{x * 100:.1f}%"


# -- item 1 ------------------------------------------------------------------------------------------


def item1(rates: dict[str, list[float]], requests: int) -> tuple[str, dict[str, Any]]:
    lines = ["## 1. The paper's setting: 8 GPUs, SC'22 spread, colocated", ""]
    data: dict[str, Any] = {}
    for name, slots in (("deepseek-v3", 36), ("qwen3-235b", 18)):
        m = PRESETS[name]
        fleet = sc22_fleet(h200_expert_curve(m), 8)
        s = Simulator(Settings(m, (GroupSpec("colocated", loads_for(m), fleet, slots),), engine=ENGINE))
        t0 = time.perf_counter()
        doc = sweep(
            s,
            POLICIES,
            rates[name],
            Workload(1.0, requests, PROMPT, OUTPUT),
            slo_ttft_s=SLO_TTFT_S,
            slo_tpot_s=SLO_TPOT_S,
        )
        log(f"item 1 {name}: {time.perf_counter() - t0:.0f} s")
        data[name] = doc
        rows = doc["runs"]
        # near saturation: the lowest rate at which token-balanced no longer meets the SLOs for 90 %
        tb = [r for r in rows if r["policy"] == "token-balanced"]
        sat = min((r["rate"] for r in tb if r["slo_attainment"] < 0.9), default=tb[-1]["rate"])
        at = {r["policy"]: r for r in rows if r["rate"] == sat}
        lines += [
            f"**{name}** ({m.dtype}, {slots} slots per GPU, {m.experts} experts x {m.moe_layers} layers), "
            f"at {sat:g} requests/s (near saturation: the lowest rate at which token-balanced no longer "
            "meets the SLOs for 90 % of the requests):",
            "",
            "| policy | SLO attainment | P90 TTFT | P90 TPOT | output tokens/s | goodput (req/s) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for p in POLICIES:
            r = at[p]
            g = doc["goodput"][p]
            lines.append(
                f"| {p} | {pct(r['slo_attainment'])} | {r['ttft_p90_s']:.2f} s | {r['tpot_p90_s'] * 1e3:.0f} ms "  # noqa: E501
                f"| {r['throughput_tokens_s']:.0f} | {g if g is not None else '-'} |"
            )
        v, t, rr = at["vibe"], at["token-balanced"], at["round-robin"]
        lines += [
            "",
            f"vibe vs round-robin (the engines' default): attainment {(v['slo_attainment'] - rr['slo_attainment']) * 100:+.1f} "  # noqa: E501
            f"points, P90 TTFT {v['ttft_p90_s'] / rr['ttft_p90_s'] - 1:+.0%}; vs token-balanced (EPLB): "
            f"attainment {(v['slo_attainment'] - t['slo_attainment']) * 100:+.1f} points, P90 TTFT "
            f"{v['ttft_p90_s'] / t['ttft_p90_s'] - 1:+.0%}. The paper reports +14 points of attainment and "
            "P90 TTFT up to -45 % vs the default placement, about -35 % vs EPLB.",
            "",
            "| rate (req/s) | " + " | ".join(f"{p} attainment / P90 TTFT" for p in POLICIES) + " |",
            "|---:|" + "---:|" * len(POLICIES),
        ]
        for rate in rates[name]:
            cells = []
            for p in POLICIES:
                r = next(x for x in rows if x["rate"] == rate and x["policy"] == p)
                cells.append(f"{pct(r['slo_attainment'])} / {r['ttft_p90_s']:.2f} s")
            lines.append(f"| {rate:g} | " + " | ".join(cells) + " |")
        lines.append("")
        data[name]["saturation_rate"] = sat
    return "\n".join(lines), data


# -- item 2 ------------------------------------------------------------------------------------------


def item2(per_gpu_rate: float, seconds: float) -> tuple[str, dict[str, Any]]:
    m = PRESETS["deepseek-v3"]
    lines = [
        "## 2. Scale: DeepSeek-V3 on EP 8, 32, 64, 256 (same spread, same load per GPU)",
        "",
        f"Each group: SC'22 spread (8 % average) with one 1.5x GPU; {per_gpu_rate:g} requests/s per GPU "
        f"for {seconds:g} s of arrivals; the same workload and SLOs as item 1.",
        "",
        "| EP | slots/GPU | policy | SLO attainment | P90 TTFT | P90 TPOT | output tokens/s | "
        "vibe vs token-balanced | predicted step, full prefill budget |",
        "|---:|---:|---|---:|---:|---:|---:|---|---:|",
    ]
    data: dict[str, Any] = {}
    for ep, slots in ((8, 36), (32, 9), (64, 5), (256, 2)):
        fleet = sc22_fleet(h200_expert_curve(m), ep)
        s = Simulator(Settings(m, (GroupSpec("colocated", loads_for(m), fleet, slots),), engine=ENGINE))
        rate = per_gpu_rate * ep
        req = generate(Workload(rate, int(rate * seconds), PROMPT, OUTPUT))
        t0 = time.perf_counter()
        rows = {}
        for p in ("token-balanced", "vibe"):
            run = s.run(p, req)
            run.rate = rate
            rows[p] = metrics(run, SLO_TTFT_S, SLO_TPOT_S)
        log(f"item 2 EP{ep}: {time.perf_counter() - t0:.0f} s")
        t, v = rows["token-balanced"], rows["vibe"]
        gain = (
            f"throughput {v['throughput_tokens_s'] / t['throughput_tokens_s'] - 1:+.1%}, P90 TPOT "
            f"{v['tpot_p90_s'] / t['tpot_p90_s'] - 1:+.0%}, attainment {(v['slo_attainment'] - t['slo_attainment']) * 100:+.1f} pts"  # noqa: E501
        )
        pred = {p: s.prepare(p).info["colocated"]["predicted_step_s"] for p in rows}
        for p, r in rows.items():
            step = f"{pred[p] * 1e3:.0f} ms"
            if p == "vibe":
                step += f" ({pred['vibe'] / pred['token-balanced'] - 1:+.1%})"
            lines.append(
                f"| {ep} | {slots} | {p} | {pct(r['slo_attainment'])} | {r['ttft_p90_s']:.2f} s | "
                f"{r['tpot_p90_s'] * 1e3:.0f} ms | {r['throughput_tokens_s']:.0f} | "
                f"{gain if p == 'vibe' else ''} | {step} |"
            )
        data[str(ep)] = {"rows": rows, "placements": {p: s.prepare(p).info for p in rows}}
    lines.append("")
    return "\n".join(lines), data


# -- item 3 ------------------------------------------------------------------------------------------


def item3(rate: float, requests: int, at_s: float, after_s: float) -> tuple[str, dict[str, Any]]:
    m = PRESETS["deepseek-v3"]
    fleet = sc22_fleet(h200_expert_curve(m), 8)
    gpu = fleet.ids[2]
    lines = [
        "## 3. Drift: one GPU throttles 1.4x mid-run (DeepSeek-V3, 8 H200s)",
        "",
        f"{gpu} becomes 1.4x slower at {at_s:g} s; {rate:g} requests/s. vibe+replace is vibe re-placed by "
        f"the operator {after_s:g} s after the drift (the agent's detection and the planning), with "
        "replace_incremental (few moves).",
        "",
    ]
    data: dict[str, Any] = {}
    for cost in ("moves", "restart"):
        s = Simulator(
            Settings(
                m,
                (GroupSpec("colocated", loads_for(m), fleet, 36),),
                engine=ENGINE,
                drift=(DriftEvent(at_s, gpu, 1.4),),
                replace_after_s=after_s,
                replace_cost=cost,
            )
        )
        req = generate(Workload(rate, requests, PROMPT, OUTPUT))
        t0 = time.perf_counter()
        res: dict[str, Any] = {}
        pols = ("token-balanced", "vibe", "vibe+replace") if cost == "moves" else ("vibe+replace",)
        for p in pols:
            run = s.run(p, req)
            run.rate = rate
            after = run.requests.arrival >= at_s + after_s
            ttft = run.first - run.requests.arrival
            res[p] = {
                "all": metrics(run, SLO_TTFT_S, SLO_TPOT_S),
                "ttft_p90_after_s": float(np.percentile(ttft[after], 90)),
                "timeline": ttft_over_time(run, 20.0),
            }
        log(f"item 3 ({cost}): {time.perf_counter() - t0:.0f} s")
        info = s.prepare("vibe+replace").info["colocated"]["replace"]
        data[cost] = {"runs": res, "replace": info}
    mv, rs = data["moves"], data["restart"]
    lines += [
        "| policy | P90 TTFT, whole run | P90 TTFT, arrivals after the re-placement | SLO attainment |",
        "|---|---:|---:|---:|",
    ]
    for p, r in mv["runs"].items():
        lines.append(
            f"| {p} (moves) | {r['all']['ttft_p90_s']:.2f} s | {r['ttft_p90_after_s']:.2f} s | {pct(r['all']['slo_attainment'])} |"  # noqa: E501
        )
    r = rs["runs"]["vibe+replace"]
    lines.append(
        f"| vibe+replace (restart) | {r['all']['ttft_p90_s']:.2f} s | {r['ttft_p90_after_s']:.2f} s | {pct(r['all']['slo_attainment'])} |"  # noqa: E501
    )
    i, j = mv["replace"], rs["replace"]
    lines += [
        "",
        f"**Is re-placing worth it?** The re-placement moves {i['moved_experts']} experts and makes the full-budget "  # noqa: E501
        f"step {i['gain'] * 100:.1f} % faster on the drifted GPUs ({i['step_before_s'] * 1e3:.0f} -> "
        f"{i['step_after_s'] * 1e3:.0f} ms). Copying the weights pauses serving {i['pause_s']:.2f} s: it pays "  # noqa: E501
        f"back after **{i['payback_s']:.1f} s** of drift. A restart ({j['pause_s']:.0f} s, assumed) pays back "  # noqa: E501
        f"after **{j['payback_s']:.0f} s**. Fail-slow episodes last seconds to ~10 h (ATC'25): re-placing by "
        "copying experts is worth it for any drift the agent can detect; re-placing by restart only for "
        f"drifts longer than ~{j['payback_s'] / 60:.0f} minutes.",
        "",
        "![TTFT over time](serving/drift.png)",
        "",
    ]
    return "\n".join(lines), data


# -- item 4 ------------------------------------------------------------------------------------------


def item4() -> tuple[str, dict[str, Any]]:
    m = PRESETS["deepseek-v3"]
    curve = h100_engine_curve(m)
    flat = Fleet(
        tuple(GPUCurve(f"node-{i // 8:02d}/{i % 8}", f"node-{i // 8:02d}", *curve) for i in range(72))
    )
    pre_fleet = Fleet(flat.gpus[:32])
    loads_p = skewed_loads(m.moe_layers, m.experts, mean_tokens=2000, seed=1)
    loads_d = skewed_loads(m.moe_layers, m.experts, mean_tokens=100, seed=2)
    out: dict[str, Any] = {}
    # prefill: EP32 (4 nodes), 2000-token prompts offered far beyond capacity; input tokens/s per node
    pre = Simulator(
        Settings(
            m, (GroupSpec("prefill", loads_p, pre_fleet, 9),), engine=EngineConfig(16384, 256), gpu="h100"
        )
    )
    req = generate(Workload(1e6, 2000, 2000, 1, spread=0.0))
    for p in ("token-balanced", "linear"):
        run = pre.run(p, req)
        span = float(np.nanmax(run.finish) - req.arrival.min())
        out[f"prefill/{p}"] = float(req.prompt.sum()) / span / 4
    # decode: EP72 (9 nodes), 256 requests per GPU at 2000-token context, 100 output tokens; output/s per node
    dec = Simulator(
        Settings(m, (GroupSpec("decode", loads_d, flat, 4),), engine=EngineConfig(8192, 256), gpu="h100")
    )
    req = generate(Workload(1e6, 72 * 256, 2000, 100, spread=0.0))
    for p in ("token-balanced", "linear"):
        run = dec.run(p, req)
        # steady decode: tokens in the steps where the batch was full (all requests admitted at once)
        span = float(np.nanmax(run.finish) - np.nanmin(run.first))
        out[f"decode/{p}"] = float((req.output - 1).sum()) / span / 9
    rows = [
        ("prefill input tokens/s per node (EPLB)", out["prefill/token-balanced"], 52300.0),
        ("decode output tokens/s per node (EPLB)", out["decode/token-balanced"], 22300.0),
        ("EPLB speedup, prefill", out["prefill/token-balanced"] / out["prefill/linear"], 1.49),
        ("EPLB speedup, decode", out["decode/token-balanced"] / out["decode/linear"], 2.54),
    ]
    lines = [
        "## 4. Calibration: SGLang's 96-H100 DeepSeek-V3 deployment",
        "",
        "Setting as reported (LMSYS blog, 2025-05-05): PD disaggregation, prefill EP32 on 4 nodes, decode "
        "EP72 on 9 nodes, DeepEP, EPLB, 2000-token inputs. Simulated: H100 expert curves (the measured "
        "H100 bf16 reference x the fused-fp8/bf16 ratio measured on the H200), H100 non-expert times "
        "(the H200 measurements scaled, see constants), prefill at 16384 tokens per GPU per step, decode "
        "at 256 requests per GPU with 100 output tokens; loads synthetic (2-4x max/mean per layer); no "
        "constant tuned. 'No balancing' = SGLang's trivial expert location (slot p holds expert p mod E).",
        "",
        "| figure | simulated | reported | simulated / reported |",
        "|---|---:|---:|---:|",
    ]
    for name, sim_v, rep in rows:
        lines.append(f"| {name} | {sim_v:,.2f} | {rep:,.2f} | {sim_v / rep:.2f} |")
    lines.append("")
    out["rows"] = [{"figure": a, "simulated": b, "reported": c, "ratio": b / c} for a, b, c in rows]
    return "\n".join(lines), out


# -- item 5 ------------------------------------------------------------------------------------------


def item5() -> tuple[str, dict[str, Any]]:
    """The sanity tests of tests/simulate, run now: the list shows what pytest reported as passed."""
    sanity = {
        "test_identical_gpus_and_uniform_loads_give_every_policy_the_same_service": "within 5 %",
        "test_at_a_low_rate_ttft_is_one_prefill": "",
        "test_more_load_never_lowers_ttft": "P50 and P90, rates 1..4096",
        "test_the_same_seed_gives_identical_json": "byte-identical --output; another seed differs",
    }
    cmd = [sys.executable, "-m", "pytest", "tests/simulate", "-v", "-p", "no:cacheprovider"]
    got = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    summary = got.stdout.strip().splitlines()[-1].strip("= ") if got.stdout.strip() else got.stderr[-300:]
    passed = {line.split("::")[-1].split()[0] for line in got.stdout.splitlines() if " PASSED" in line}
    missing = [t for t in sanity if t not in passed]
    if got.returncode != 0 or missing:
        raise SystemExit(f"item 5: the sanity tests did not all pass ({summary}); not passed: {missing}")
    lines = ["## 5. Sanity (tests)", "", "`.venv/bin/python -m pytest tests/simulate -q`: " + summary, ""]
    lines += [f"- {t}" + (f" ({note})" if note else "") + ": passed" for t, note in sanity.items()] + [""]
    return "\n".join(lines), {"summary": summary, "returncode": got.returncode}


def figures(d1: dict[str, Any], d3: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, name in zip(axes[:2], ("deepseek-v3", "qwen3-235b"), strict=True):
        rows = d1[name]["runs"]
        for p in POLICIES:
            rr = sorted((r for r in rows if r["policy"] == p), key=lambda r: r["rate"])
            ax.plot([r["rate"] for r in rr], [r["slo_attainment"] * 100 for r in rr], marker="o", label=p)
        ax.axhline(90, color="grey", lw=0.8, ls="--")
        ax.set_title(f"{name}, 8 H200s, SC'22 spread")
        ax.set_xlabel("requests / s")
        ax.set_ylabel("SLO attainment (%)")
        ax.legend()
    ax = axes[2]
    for p, r in d3["moves"]["runs"].items():
        ax.plot(r["timeline"]["t_s"], r["timeline"]["ttft_p90_s"], label=p)
    r = d3["restart"]["runs"]["vibe+replace"]
    ax.plot(r["timeline"]["t_s"], r["timeline"]["ttft_p90_s"], label="vibe+replace (restart)", ls=":")
    ax.set_title("drift: one GPU 1.4x slower (red line)")
    ax.axvline(d3["at_s"], color="red", lw=0.8, ls="--")
    ax.set_xlabel("arrival time (s)")
    ax.set_ylabel("P90 TTFT (s), 20 s windows")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    for p, r in d3["moves"]["runs"].items():
        ax.plot(r["timeline"]["t_s"], r["timeline"]["ttft_p90_s"], label=p)
    r = d3["restart"]["runs"]["vibe+replace"]
    ax.plot(r["timeline"]["t_s"], r["timeline"]["ttft_p90_s"], label="vibe+replace (restart)", ls=":")
    ax.axvline(d3["at_s"], color="red", lw=0.8, ls="--")
    ax.set_xlabel("arrival time (s)")
    ax.set_ylabel("P90 TTFT (s)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path.parent / "drift.png", dpi=100)
    plt.close(fig)


NOTES = """## Reading these results

- **Where the gain shows.** SGLang's default scheduler prefills first, so a new request's TTFT stays near
  one prefill until the running cap is full; a slow GPU shows first in TPOT (every decode step waits for
  it), and attainment falls when TPOT crosses its SLO. So vibe's gain here is in SLO attainment and TPOT
  (items 1-3), while P90 TTFT differs by a few percent until the queue builds (5 req/s and beyond for
  DeepSeek-V3). The paper's -35 to -45 % P90 TTFT is not reproduced in this setting; its +14 points of
  attainment is exceeded at the knee (+31 to +57 points vs EPLB), and goodput (on a 0.5-2 req/s grid)
  moves by one grid step for DeepSeek-V3 (2 -> 2.5 req/s) and not for Qwen3-235B.
- **Scale (item 2).** At the same load per GPU the serving gain shrinks as EP grows in this setting, the
  opposite of the paper's trend: with 256 experts the slots per GPU fall from 36 (EP 8) to 2 (EP 256),
  decode runs below the curves' knee where every occupied slot costs its floor time, and every GPU holds
  exactly its slots, so no placement can spare the 1.5x GPU (one per group, diluted as the group grows).
  The prefill-side gain (predicted step at the full chunked-prefill budget, the linear part of the
  curves) stays at -30 to -35 % at every scale. EP 32/64 at 0.375 req/s per GPU are below saturation
  (100 % for both); EP 256 is past it for both, bound by RDMA dispatch/combine.
- **Drift (item 3).** Copying the moved experts' weights (44 MB each in fp8) costs a pause of tens of
  milliseconds, repaid within a second; a restart is repaid only by drifts of ~40 minutes or longer.
- **Calibration (item 4).** All four ratios fall within 0.5-2, with nothing tuned. Prefill is low (0.64):
  the simulator serialises dispatch/combine (no two-batch overlap, which SGLang reports worth 27-35 % in
  prefill) and prices experts with torch's grouped kernels, not DeepGEMM. Decode at 1.00 is partly luck:
  the same omissions pull it down while pricing MLA decode at the GQA flash kernel's bandwidth pulls it up.
  The decode EPLB speedup is low (0.58): these loads are synthetic (2-4x max/mean per layer); the
  reported 2.54x comes from real DeepSeek-V3 traffic at EP 72, whose hottest experts are hotter.
- **H100.** No H100 was available for this work: the H100 expert curves are the 2026-11-23
  measurements (bf16) times the fused-fp8/bf16 ratio measured on the H200.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    ap.add_argument("--items", default="1,2,3,4,5")
    ap.add_argument("--requests", type=int, default=600)
    ap.add_argument("--out", type=Path, default=OUT / "serving.md")
    args = ap.parse_args()
    items = {int(x) for x in args.items.split(",")}
    t0 = time.perf_counter()
    sections: list[str] = []
    data: dict[str, Any] = {}
    cmd = "`.venv/bin/python benchmarks/serving.py --items {}`"
    rates = {"deepseek-v3": [1, 2, 2.5, 3, 3.5, 4, 5], "qwen3-235b": [2, 4, 6, 8, 10, 12, 14]}
    if 1 in items:
        text, data["1"] = item1(rates, args.requests)
        sections.append(text + "\n" + cmd.format(1) + "\n")
    if 2 in items:
        text, data["2"] = item2(0.375, 120.0)
        sections.append(text + "\n" + cmd.format(2) + "\n")
    if 3 in items:
        text, data["3"] = item3(3.0, 1200, 100.0, 30.0)
        data["3"]["at_s"] = 100.0
        sections.append(text + "\n" + cmd.format(3) + "\n")
    if 4 in items:
        text, data["4"] = item4()
        sections.append(text + "\n" + cmd.format(4) + "\n")
    if 5 in items:
        text, data["5"] = item5()
        sections.append(text + "\n" + cmd.format(5) + "\n")
    took = time.perf_counter() - t0
    out_dir = args.out.parent / "serving"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"items-{'-'.join(map(str, sorted(items)))}.json").write_text(
        json.dumps(data, indent=1, default=float)
    )
    if {1, 3} <= items:
        figures(data["1"], data["3"], out_dir / "serving.png")
    head = [
        "# Serving-level evidence: `vibe simulate`",
        "",
        f"Made by `.venv/bin/python benchmarks/serving.py` ({took / 60:.1f} min on this project's 2-core build "  # noqa: E501
        "machine); each item names its own command. Simulated, not measured: every modelling constant and "
        "its source is in the JSON (`serving/items-*.json`, key `constants` of each item-1 document) and in "
        "docs/serving.md. Workload of items 1-3: Poisson arrivals, prompts 1024 and outputs 256 tokens on "
        f"average (uniform +-50 %); SLOs TTFT {SLO_TTFT_S:g} s and TPOT {SLO_TPOT_S * 1e3:g} ms; goodput = "
        "the highest simulated rate with >= 90 % of requests within both.",
        "",
    ]
    for line in sections:
        print(line)
    if items == {1, 2, 3, 4, 5}:
        args.out.write_text("\n".join(head + sections) + "\n" + NOTES)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
