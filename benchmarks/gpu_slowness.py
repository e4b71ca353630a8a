"""How a slow GPU is slow: where the expert FFN's memory-bound floor sits against the power cap.

``sweep`` (GPU): for each shape and dtype, each token count runs the agent's expert FFN
(``vibe.agent.bench.ExpertBank``: bf16 one expert per call, fp8 the fused grouped GEMM, 8 experts per
call) back to back for ``--point-s`` seconds (replayed from a CUDA graph so the CPU never leaves the GPU
idle), while a thread samples NVML every 20 ms (read-only): SM and memory clock, power, power limit,
temperature, clock-event reasons. A point is the median time per expert over the last 60 % of its run
and the means of the samples there: where the floor runs at the top clock below the cap, at which token
count the cap pulls the clock down and by how much.

Then a clock probe: how much does the floor's time depend on the SM clock? Settings are never changed,
so the probe uses the power controller's own lag (it moves the clock every ~0.1 s): each point is timed
for a few ms right after a heavy bf16 GEMM has held the GPU at its cap (clock pulled down) and right
after the point has run alone for a while (its own clock, the top clock on the floor). The elasticity
``ln(t_low / t_high) / ln(f_high / f_low)`` is ~0 for a memory-bound kernel and ~1 for a compute-bound
one: the fraction of a clock loss that the point's time pays.

``spread`` (CPU): the agent's curves across every H100/H200 profile under ``benchmarks/results/``:
the floor (median of 1-64 tokens) and the compute region (4096 and 8192 tokens) per shape, per GPU,
and their spread across GPUs of one product.

    PYTHONPATH=. python3 benchmarks/gpu_slowness.py sweep --out OUT.json        # GPU machine
    PYTHONPATH=. python3 benchmarks/gpu_slowness.py spread [--json OUT.json]     # anywhere

Never changes clocks or power limits.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

SHAPES = {"deepseek-v3": (7168, 2048), "qwen3-235b": (4096, 1536), "mixtral-8x7b": (4096, 14336)}
TOKENS = tuple(2**k for k in range(15))  # 1 .. 16384
PROBE_TOKENS = (1, 16, 64, 256, 1024, 4096)


class Sampler(threading.Thread):
    """NVML (read-only) every ``period`` s into ``rows``: (time, SM MHz, mem MHz, W, limit W, °C, reasons)."""

    def __init__(self, index: int, period: float = 0.02) -> None:
        super().__init__(daemon=True)
        import pynvml  # nvidia-ml-py

        pynvml.nvmlInit()
        self.nv = pynvml
        self.h = pynvml.nvmlDeviceGetHandleByIndex(index)
        self.period = period
        self.rows: list[tuple[float, float, float, float, float, float, int]] = []
        self.stop = threading.Event()

    def read(self) -> tuple[float, float, float, float, float, float, int]:
        nv, h = self.nv, self.h
        reasons = (
            getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None)
            or nv.nvmlDeviceGetCurrentClocksThrottleReasons
        )
        return (
            time.perf_counter(),
            float(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)),
            float(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM)),
            nv.nvmlDeviceGetPowerUsage(h) / 1000.0,
            nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0,
            float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),
            int(reasons(h)),
        )

    def max_clocks(self) -> tuple[float, float]:
        nv, h = self.nv, self.h
        return float(nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_SM)), float(
            nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_MEM)
        )

    def run(self) -> None:
        while not self.stop.is_set():
            self.rows.append(self.read())
            time.sleep(self.period)

    def between(self, t0: float, t1: float) -> dict[str, Any]:
        rows = [r for r in self.rows if t0 <= r[0] <= t1]
        if not rows:
            return {}
        mean = lambda k: round(statistics.fmean(r[k] for r in rows), 1)  # noqa: E731
        return {
            "sm_mhz": mean(1),
            "sm_mhz_min": min(r[1] for r in rows),
            "mem_mhz": mean(2),
            "power_w": mean(3),
            "limit_w": mean(4),
            "temp_c": mean(5),
            "reasons": sorted({f"0x{r[6]:x}" for r in rows}),
            "samples": len(rows),
        }

    def last(self) -> float:
        return self.rows[-1][1] if self.rows else 0.0


def _graph(timer: Any, bank: Any, x: Any, calls: int) -> tuple[Any, str]:
    """A CUDA graph of ``calls`` expert calls cycling the bank (the agent's ``layer_graph``), or, where
    capture fails, an eager loop."""
    from vibe.agent.bench import layer_graph

    replay = layer_graph(timer, bank, x, calls)
    if replay is not None:
        return replay, "graph"
    experts = len(bank)

    def eager() -> None:
        for k in range(calls):
            bank(k % experts, x)

    return eager, "eager"


def _time_runs(torch: Any, run: Any, seconds: float) -> list[tuple[float, float]]:
    """(perf_counter at the end, seconds) of each ``run()`` repeated for ``seconds``, timed by events."""
    out: list[tuple[float, float]] = []
    t_end = time.perf_counter() + seconds
    pending: list[tuple[Any, Any]] = []
    while time.perf_counter() < t_end:
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        run()
        b.record()
        pending.append((a, b))
        if len(pending) >= 4:  # keep a few runs queued, no more (bounded queue, fresh timestamps)
            a0, b0 = pending.pop(0)
            b0.synchronize()
            out.append((time.perf_counter(), a0.elapsed_time(b0) / 1e3))
    for a0, b0 in pending:
        b0.synchronize()
        out.append((time.perf_counter(), a0.elapsed_time(b0) / 1e3))
    return out


def cmd_sweep(a: argparse.Namespace) -> None:
    import torch

    from vibe.agent.bench import BenchConfig, ExpertBank, Heater, Timer, experts_for, fused_fp8_supported
    from vibe.agent.shapes import ExpertShape

    dev = torch.device(a.device)
    sampler = Sampler(dev.index or 0)
    max_sm, max_mem = sampler.max_clocks()
    sampler.start()
    time.sleep(0.2)
    timer = Timer(torch, dev)
    heater = Heater(torch, dev, 8192)
    heater.run(3)
    heater.calibrate(timer)
    tokens = tuple(int(t) for t in a.tokens.split(","))
    result: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "gpu": torch.cuda.get_device_name(dev),
        "torch": torch.__version__,
        "maxSmMHz": max_sm,
        "maxMemMHz": max_mem,
        "idle": sampler.between(0, time.perf_counter()),
        "pointSeconds": a.point_s,
        "fp8Kernel": "fused grouped" if not fused_fp8_supported(torch, dev) else "unfused",
        "points": {},
        "probe": {},
    }
    cfg = BenchConfig()
    for name in a.shapes.split(","):
        h, i = SHAPES[name]
        for dtype in a.dtypes.split(","):
            shape = ExpertShape(h, i, dtype, name)
            bank = ExpertBank(torch, shape, dev, experts_for(torch, dev, shape, cfg), max(tokens), 0)
            for n in tokens:
                x = bank.inputs(n)
                bank(0, x)
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                bank(0, x)
                torch.cuda.synchronize()
                est = max(time.perf_counter() - t0, 5e-6)
                calls = max(1, min(32, round(2e-3 / est)))
                run, how = _graph(timer, bank, x, calls)
                start = time.perf_counter()
                runs = _time_runs(torch, run, a.point_s)
                t_from = start + 0.4 * (runs[-1][0] - start)
                kept = [s for t, s in runs if t >= t_from] or [s for _t, s in runs]
                per_expert = statistics.median(kept) / (calls * bank.per_call)
                point = {"us_per_expert": round(per_expert * 1e6, 2), "calls_per_run": calls, "how": how}
                point.update(sampler.between(t_from, runs[-1][0]))
                key = f"{name}/{dtype}/{n}"
                result["points"][key] = point
                print(
                    f"{key:>28} {point['us_per_expert']:>10.1f} us {point.get('sm_mhz', 0):>7.0f} MHz "
                    f"{point.get('power_w', 0):>6.0f} W {point.get('temp_c', 0):>5.1f} C "
                    f"{','.join(point.get('reasons', []))} {how}",
                    flush=True,
                )
                if n in PROBE_TOKENS and a.probe_reps > 0:
                    result["probe"][key] = probe(torch, run, heater, sampler, calls * bank.per_call, a)
                del run
            del bank
            torch.cuda.empty_cache()
            Path(a.out).write_text(json.dumps(result, indent=1))  # what is done so far survives a crash
    sampler.stop.set()
    sampler.join()
    result["summary"] = summarise(result)
    Path(a.out).write_text(json.dumps(result, indent=1))
    print_summary(result)


def probe(torch: Any, run: Any, heater: Any, sampler: Sampler, experts: int, a: argparse.Namespace) -> dict:
    """Time a few runs right after the heater (clock pulled down by the cap) and after the point's own
    steady state; see the module docstring."""
    rows: dict[str, list[tuple[float, float]]] = {"low": [], "high": []}
    iters = heater.iters_for(a.probe_heat_s)
    for _ in range(a.probe_reps):
        for state in ("low", "high"):
            if state == "low":
                heater.run(iters)
            else:
                _time_runs(torch, run, a.probe_heat_s)
            torch.cuda.synchronize()
            f0 = sampler.last()
            t = _time_runs(torch, run, 0.003)
            time.sleep(0.025)  # one more NVML sample
            f1 = sampler.last()
            rows[state].append((statistics.median(s for _t, s in t) / experts, (f0 + f1) / 2))
    low_t = statistics.median(r[0] for r in rows["low"])
    high_t = statistics.median(r[0] for r in rows["high"])
    low_f = statistics.median(r[1] for r in rows["low"])
    high_f = statistics.median(r[1] for r in rows["high"])
    el = None
    if low_f > 0 and high_f > low_f * 1.05:
        el = round(math.log(low_t / high_t) / math.log(high_f / low_f), 3)
    print(
        f"{'probe':>28} low {low_t * 1e6:.1f} us @ {low_f:.0f} MHz, high {high_t * 1e6:.1f} us @ {high_f:.0f}"
        f" MHz: elasticity {el}",
        flush=True,
    )
    return {
        "low_us": round(low_t * 1e6, 2),
        "low_mhz": low_f,
        "high_us": round(high_t * 1e6, 2),
        "high_mhz": high_f,
        "elasticity": el,
    }


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """Per curve: the floor's clock and power, the first token count where the cap pulls the clock below
    97 % of the top clock, the clock at the largest count, and the floor's elasticity to the clock."""
    top = result.get("maxSmMHz") or 1980.0
    curves: dict[str, dict[str, Any]] = {}
    for key, p in result["points"].items():
        name, dtype, n = key.rsplit("/", 2)
        curves.setdefault(f"{name}/{dtype}", {})[int(n)] = p
    out = {}
    for c, pts in curves.items():
        ns = sorted(pts)
        floor = [pts[n] for n in ns if n <= 64]
        capped = [n for n in ns if pts[n].get("sm_mhz", top) < 0.97 * top]
        out[c] = {
            "floor_us": round(statistics.median(p["us_per_expert"] for p in floor), 2) if floor else None,
            "floor_sm_mhz": [min(p.get("sm_mhz", 0) for p in floor), max(p.get("sm_mhz", 0) for p in floor)],
            "floor_power_w": [
                min(p.get("power_w", 0) for p in floor),
                max(p.get("power_w", 0) for p in floor),
            ],
            "cap_from_tokens": capped[0] if capped else None,
            "sm_mhz_at_max_tokens": pts[ns[-1]].get("sm_mhz"),
            "elasticity": {
                n: result["probe"][f"{c}/{n}"]["elasticity"] for n in ns if f"{c}/{n}" in result["probe"]
            },
        }
    return out


def print_summary(result: dict[str, Any]) -> None:
    print(f"\n{result['gpu']}: top SM clock {result['maxSmMHz']} MHz")
    print(
        f"{'curve':>24} {'floor us':>9} {'floor MHz':>12} {'floor W':>10} {'cap from':>9} {'MHz@max':>8}"
        "  elasticity"
    )
    for c, s in result["summary"].items():
        el = " ".join(f"{n}:{e}" for n, e in s["elasticity"].items())
        print(
            f"{c:>24} {s['floor_us']:>9} {s['floor_sm_mhz'][0]:>5.0f}-{s['floor_sm_mhz'][1]:<6.0f}"
            f" {s['floor_power_w'][0]:>4.0f}-{s['floor_power_w'][1]:<5.0f} {s['cap_from_tokens']!s:>9}"
            f" {s['sm_mhz_at_max_tokens']:>8}  {el}"
        )


# -- spread across the GPUs measured so far (CPU) ----------------------------------------------------------


def _profiles(root: Path) -> list[tuple[str, dict[str, Any]]]:
    """(file label, profile) for every agent profile under ``root`` (bench JSON and agent_gpu.json)."""
    out = []
    for f in sorted(root.rglob("*.json")):
        try:
            d = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(d, dict):
            continue
        rel = str(f.relative_to(root))
        if isinstance(d.get("devices"), dict):
            for dev in d["devices"].values():
                for k, p in enumerate(dev.get("profiles", []) if isinstance(dev, dict) else []):
                    out.append((f"{rel}#{k}", p))
        if isinstance(d.get("profiles"), list):  # benchmarks/agent_gpu.py
            for k, p in enumerate(d["profiles"]):
                if isinstance(p, dict) and "curves" in p:
                    out.append((f"{rel}#{k}", p))
        if isinstance(d.get("profileNoReheat"), dict):
            out.append((f"{rel}#no-reheat", d["profileNoReheat"]))
    return out


def spread(root: Path) -> dict[str, Any]:
    """Floor (median of 1-64 tokens) and compute (4096, 8192 tokens) per shape per profile, idle only
    (a profile run beside a neighbour or by an earlier method is left out), and their spread per product."""
    rows = []
    for label, p in _profiles(root):
        if any(w in label for w in ("neighbour", "first-attempt", "no-reheat")):
            continue  # beside a co-tenant, or an earlier method (the median is used: shared points count)
        product = str(p.get("device_name", "?"))
        for c in p.get("curves", []):
            pts = {pt["tokens"]: pt.get("median_s") or pt["seconds"] for pt in c.get("points", [])}
            if not pts or not c.get("shape"):
                continue
            sh = c["shape"]
            key = f"{sh['hiddenSize']}x{sh['intermediateSize']}/{sh['dtype']}"
            floor = [s for n, s in pts.items() if n <= 64]
            rows.append(
                {
                    "profile": label,
                    "session": label.split("/", 1)[0],
                    "product": product,
                    "shape": key,
                    "kernel": c.get("kernel") or ("matmul" if sh["dtype"] != "fp8" else "fp8 (unrecorded)"),
                    "floor_us": statistics.median(floor) * 1e6 if floor else None,
                    "t4096_us": pts.get(4096, 0) * 1e6 or None,
                    "t8192_us": pts.get(8192, 0) * 1e6 or None,
                    "sm_mhz": (p.get("sm_clock_hz") or 0) / 1e6 or None,
                }
            )
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["product"], r["shape"], r["kernel"]), []).append(r)
    summary = []
    for (product, shape, kernel), rs in sorted(groups.items()):
        # One value per session (a results folder: one machine), the median of its profiles, then the
        # spread across sessions: profiles of one session repeat one GPU.
        sessions = sorted({r["session"] for r in rs})
        entry: dict[str, Any] = {
            "product": product,
            "shape": shape,
            "kernel": kernel,
            "profiles": len(rs),
            "sessions": sessions,
        }
        for k in ("floor_us", "t4096_us", "t8192_us"):
            per = [statistics.median(r[k] for r in rs if r["session"] == s and r[k]) for s in sessions]
            allv = [r[k] for r in rs if r[k]]
            if allv:
                entry[k] = [round(v, 1) for v in per]
                entry[k.replace("_us", "_within")] = round(max(allv) / min(allv) - 1, 3)
                entry[k.replace("_us", "_across")] = round(max(per) / min(per) - 1, 3)
        summary.append(entry)
    return {"rows": rows, "summary": summary}


def cmd_spread(a: argparse.Namespace) -> None:
    s = spread(Path(a.root))
    print("per product and shape: floor (1-64 tokens) and 8192-token time per session (µs), spread across")
    print("sessions (one machine each) and across all profiles (max/min - 1)")
    for e in s["summary"]:
        f, c = e.get("floor_us") or [], e.get("t8192_us") or []
        print(
            f"{e['product'][:22]:>22} {e['shape']:>16} {e['kernel'][:14]:>14}"
            f" p{e['profiles']} s{len(e['sessions'])}"
            f" floor {'/'.join(map(str, f))} across {e.get('floor_across')} all {e.get('floor_within')};"
            f" 8192 {'/'.join(map(str, c))} across {e.get('t8192_across')} all {e.get('t8192_within')}"
        )
    if a.json:
        Path(a.json).write_text(json.dumps(s, indent=1))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("sweep", help="floor vs power per shape, dtype and token count (GPU)")
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--dtypes", default="bf16,fp8")
    p.add_argument("--tokens", default=",".join(map(str, TOKENS)))
    p.add_argument("--point-s", type=float, default=1.2)
    p.add_argument("--probe-reps", type=int, default=2)
    p.add_argument("--probe-heat-s", type=float, default=0.25)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_sweep)
    p = sub.add_parser("spread", help="the agent's curves across the GPUs measured so far (CPU)")
    p.add_argument("--root", default=str(Path(__file__).parent / "results"))
    p.add_argument("--json")
    p.set_defaults(fn=cmd_spread)
    a = ap.parse_args(argv)
    a.fn(a)


if __name__ == "__main__":
    main()
