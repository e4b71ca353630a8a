"""Does the agent publish what a serving loop sees when its GPU is shared with a co-tenant?

The reference: a serving-like loop, 8 expert calls replayed as one CUDA graph (as engines run decode
steps; fused fp8 runs the 8 experts as one grouped call) then a sync, repeated, timed by the host's
clock over ``--ref-s`` seconds per point: its mean iteration time under a co-tenant over its mean
iteration time on the idle GPU is the slowdown serving sees. The same loop launched call by call from
Python (``eager x``) is kept beside it: on a slow host the CPU paces it (H100 VM: ~900 µs to launch
8 bf16 calls of ~45 µs each), so it measures the host as much as the GPU. The agent:
``vibe.agent.bench.measure_point`` as a profile runs it (re-heat, median of 25 calls, then its serving
loop, ``window_mode="loop"``); its published time under a co-tenant over its published time idle is
the slowdown it reports. The earlier agent (``window_mode="chunks"``: a 20 ms window of back-to-back
calls in chunks of 96 behind a hold, flagged at +10 %) runs on the same bank in the same process, as
the baseline ("old"). Every co-tenant is a second process on the same GPU (``neighbour``): square
bf16 GEMMs or device-to-device copies, each followed by a sync, for ``duty`` of every ``period``.
Results: benchmarks/results/agent-cotenant-h100-2026-12-07/.

    PYTHONPATH=. python3 benchmarks/agent_cotenant.py run --out OUT.json        # GPU machine
    python3 benchmarks/agent_cotenant.py table OUT.json [--tail 0.4 --overhead 25e-6 --threshold 0.15]

``table`` re-derives the agent's published times from the raw loop iterations in OUT.json with other
estimator settings (for choosing the defaults; what ``run`` prints uses ``BenchConfig``'s). Never
changes clocks or power limits; NVLink multicast off.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SHAPES = {
    "deepseek-v3": (7168, 2048),
    "qwen3-235b": (4096, 1536),
    "mixtral-8x7b": (4096, 14336),
    "tiny": (64, 32),  # a CPU smoke run
}
#: NAME=KIND:SIZE:DUTY:PERIOD (gemm: SIZE^3 bf16 GEMMs; copy: SIZE MiB copied device to device).
COTENANTS = (
    "gemm90=gemm:8192:0.9:0.05",  # benchmarks/agent_shared_gpu.sh's strong neighbour
    "gemm50=gemm:4096:0.5:0.05",  # ... and its weak one
    "copy=copy:512:1.0:0.05",  # memory-bandwidth bound, flat out
    "bursty=gemm:4096:0.3:0.004",  # short kernels in short bursts
)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1", NVSHMEM_DISABLE_NVLS="1")
    return env


# -- the co-tenant ----------------------------------------------------------------------------------------


def cmd_neighbour(a: argparse.Namespace) -> None:
    """Kernels for ``duty`` of every ``period`` (a sync after each), idle the rest, until SIGTERM."""
    import torch

    dev = torch.device(a.device)
    gen = torch.Generator(device=dev).manual_seed(7)
    if a.kind == "gemm":
        dt = torch.bfloat16 if dev.type == "cuda" else torch.float32
        x = torch.randn(a.size, a.size, generator=gen, device=dev, dtype=torch.float32).to(dt)
        y = torch.randn(a.size, a.size, generator=gen, device=dev, dtype=torch.float32).to(dt)
        out = torch.empty_like(x)

        def kernel() -> None:
            torch.matmul(x, y, out=out)

    else:
        n = a.size * 2**20 // 4
        src = torch.randn(n, generator=gen, device=dev)
        dst = torch.empty_like(src)

        def kernel() -> None:
            dst.copy_(src)

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda *_: None)
    kernel()
    sync(dev)
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    print("neighbour ready", flush=True)
    busy = idle = 0.0
    kernels = 0
    while not stop:
        t0 = time.monotonic()
        while time.monotonic() - t0 < a.duty * a.period:
            kernel()
            sync(dev)
            kernels += 1
        t1 = time.monotonic()
        busy += t1 - t0
        if a.duty < 1:  # idle in proportion to the busy time it really took: the duty cycle holds
            time.sleep((t1 - t0) * (1 - a.duty) / a.duty)
        idle += time.monotonic() - t1
    print(json.dumps({"kernels": kernels, "busyS": busy, "idleS": idle}), flush=True)


def start_neighbour(spec: str, device: str) -> subprocess.Popen[str]:
    kind, size, duty, period = spec.split(":")
    cmd = [sys.executable, __file__, "neighbour", "--device", device, "--kind", kind, "--size", size]
    cmd += ["--duty", duty, "--period", period]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=_env())
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "ready" not in line:
        proc.kill()
        raise SystemExit(f"error: the neighbour {spec} did not start ({line.strip() or 'no output'})")
    return proc


def stop_neighbour(proc: subprocess.Popen[str]) -> dict[str, Any]:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


# -- the reference loop and the previous agent -------------------------------------------------------------


def reference_loop(
    timer: Any, bank: Any, x: Any, per_sync: int, seconds: float, graph: bool = True
) -> dict[str, float]:
    """``per_sync`` expert calls then a sync, repeated for ``seconds``: mean and median iteration time.

    ``graph``: the calls replayed as one CUDA graph, as engines run decode steps (else launched one by
    one from Python, which a slow host paces)."""
    from vibe.agent.bench import layer_graph

    experts = len(bank)
    layer = layer_graph(timer, bank, x, per_sync) if graph else None
    timer.sync()
    walls: list[float] = []
    k = 0
    t_end = time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        if layer is not None:
            layer()
        else:
            for _ in range(per_sync):
                bank(k % experts, x)
                k += 1
        timer.sync()
        t1 = time.perf_counter()
        walls.append(t1 - t0)
        if t1 >= t_end and len(walls) >= 5:
            break
    return {"meanS": statistics.fmean(walls), "medianS": statistics.median(walls), "iters": len(walls)}


# -- run ----------------------------------------------------------------------------------------------------


def cmd_run(a: argparse.Namespace) -> None:
    import torch

    from vibe.agent.bench import BenchConfig, ExpertBank, Heater, Timer, experts_for, measure_point, preheat
    from vibe.agent.shapes import ExpertShape
    from vibe.agent.telemetry import NvmlTelemetry

    dev = torch.device(a.device)
    timer = Timer(torch, dev)
    telemetry = NvmlTelemetry.open()
    idx = (dev.index or 0) if dev.type == "cuda" and telemetry.available else None
    cfg = BenchConfig(window_mode="loop")
    chunks = BenchConfig(window_mode="chunks")  # the earlier agent: a 20 ms window of calls in chunks
    tokens = [int(t) for t in a.tokens.split(",")]
    heater = Heater(torch, dev, cfg.heater_size if dev.type == "cuda" else 128)
    pre = preheat(heater, timer, cfg, telemetry, idx)
    banks = []
    for spec in a.shapes.split(","):
        name, dtype = spec.split(":")
        h, i = SHAPES[name]
        shape = ExpertShape(h, i, dtype, name)
        banks.append(
            (
                f"{name}/{dtype}",
                ExpertBank(torch, shape, dev, experts_for(torch, dev, shape, cfg), max(tokens), 0),
            )
        )
    cotenants = ["idle=", *a.cotenant, "idle-again="]
    report: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "config": {k: v for k, v in vars(cfg).items() if k != "tokens"},
        "legacy": {k: v for k, v in vars(chunks).items() if k != "tokens"},
        "preheat": {k: v for k, v in pre.items() if k != "trace"},
        "refSeconds": a.ref_s,
        "runs": {},
    }
    t_start = time.perf_counter()
    for entry in cotenants:
        cname, spec = entry.split("=", 1)
        proc = start_neighbour(spec, a.device) if spec else None
        if proc is not None:
            time.sleep(a.settle)
        run: dict[str, Any] = {"spec": spec, "curves": {}}
        for label, bank in banks:
            per_sync = max(1, cfg.loop_layer_experts // bank.per_call)
            pts = []
            for n in tokens:
                x = bank.inputs(n)
                log: list[dict[str, Any]] = []
                p = measure_point(bank, timer, n, cfg, telemetry, idx, heater, loop_log=log)
                legacy = measure_point(bank, timer, n, chunks, telemetry, idx, heater).seconds
                ref = reference_loop(timer, bank, x, per_sync, a.ref_s)
                eager = reference_loop(timer, bank, x, per_sync, a.eager_ref_s, graph=False)
                pts.append(
                    {
                        "tokens": n,
                        "published": p.seconds,
                        "median": p.median_s,
                        "shared": p.shared,
                        "factors": p.window_factors,
                        "legacyPublished": legacy,
                        "ref": ref,
                        "refEager": eager,
                        "loop": log[0] if log else None,
                    }
                )
                print(
                    f"{cname:>10} {label:>18} {n:>5}: median {p.median_s * 1e6:8.1f} published "
                    f"{p.seconds * 1e6:8.1f} shared {p.shared!s:>5} factors {p.window_factors} legacy "
                    f"{legacy * 1e6:8.1f} ref {ref['meanS'] * 1e6:9.1f} us/iter",
                    flush=True,
                )
            run["curves"][label] = pts
        if proc is not None:
            run["neighbour"] = stop_neighbour(proc)
        report["runs"][cname] = run
        Path(a.out).write_text(json.dumps(report))  # kept so far, should the run be cut off
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    Path(a.out).write_text(json.dumps(report))
    table(report, None)


# -- the ratio table -----------------------------------------------------------------------------------------


def republish(point: dict[str, Any], est: dict[str, float] | None) -> tuple[float, bool]:
    """The agent's published time for a point, re-derived from its raw loop with other settings."""
    if est is None or not point.get("loop"):
        return point["published"], point["shared"]
    from vibe.agent.bench import BenchConfig, contention

    loop = point["loop"]
    cfg = BenchConfig(
        window_mode="loop",
        loop_tail=est["tail"],
        # a graph-replayed loop has its own overhead (BenchConfig.loop_graph_overhead_s)
        loop_overhead_s=loop.get("overheadS", est["overhead"]) if loop.get("graph") else est["overhead"],
        loop_threshold=est["threshold"],
        loop_min_parts=int(est["min_parts"]),
    )
    parts = [[(it[0], it[1], it[2]) for it in part] for part in loop["parts"]]
    factor, _each, shared = contention(parts, loop["callS"], loop["perSync"], cfg)
    median = point["median"]
    return (median * factor if shared else median), shared


def legacy_published(point: dict[str, Any]) -> float:
    return float(point["legacyPublished"])


def table(report: dict[str, Any], est: dict[str, float] | None) -> dict[str, Any]:
    """Print, per co-tenant and curve, each point's slowdowns against the idle run; return the summary."""
    runs = report["runs"]
    idle = runs["idle"]["curves"]
    summary: dict[str, Any] = {}
    print(f"\n{report['gpu']}; agent x = published / published idle; loop x = serving loop / idle loop")
    for cname, run in runs.items():
        if cname == "idle":
            continue
        for label, pts in run["curves"].items():
            base = {p["tokens"]: p for p in idle[label]}
            rows = []
            for p in pts:
                b = base[p["tokens"]]
                pub, shared = republish(p, est)
                pub0, _ = republish(b, est)
                loop_x = p["ref"]["meanS"] / b["ref"]["meanS"]
                agent_x = pub / pub0
                old_x = legacy_published(p) / legacy_published(b)
                eager_x = p["refEager"]["meanS"] / b["refEager"]["meanS"] if "refEager" in p else math.nan
                rows.append(
                    (p["tokens"], loop_x, agent_x, agent_x / loop_x, shared, old_x, old_x / loop_x, eager_x)
                )
            ratios = [r[3] for r in rows]
            old = [r[6] for r in rows]
            flagged = sum(r[4] for r in rows)
            summary[f"{cname} {label}"] = {
                "ratio": [round(min(ratios), 3), round(max(ratios), 3)],
                "legacyRatio": [round(min(old), 3), round(max(old), 3)],
                "flagged": flagged,
                "points": len(rows),
                "rows": [[round(v, 3) if isinstance(v, float) else v for v in r] for r in rows],
            }
            print(
                f"\n{cname} / {label}: agent/loop {min(ratios):.2f}-{max(ratios):.2f} "
                f"(before: {min(old):.2f}-{max(old):.2f}), flagged {flagged}/{len(rows)}"
            )
            head = ("tokens", "loop x", "agent x", "ratio", "shared", "old x", "old ratio", "eager x")
            print(" ".join(f"{h:>{w}}" for h, w in zip(head, (7, 7, 8, 6, 6, 6, 9, 8), strict=True)))
            for r in rows:
                print(
                    f"{r[0]:>7} {r[1]:>7.2f} {r[2]:>8.2f} {r[3]:>6.2f} {r[4]!s:>6} {r[5]:>6.2f} {r[6]:>9.2f}"
                    f" {r[7]:>8.2f}"
                )
    return summary


def cmd_table(a: argparse.Namespace) -> None:
    report = json.loads(Path(a.report).read_text())
    est = None
    if a.tail is not None or a.overhead is not None or a.threshold is not None or a.min_parts is not None:
        c = report["config"]
        est = {
            "tail": c["loop_tail"] if a.tail is None else a.tail,
            "overhead": c["loop_overhead_s"] if a.overhead is None else a.overhead,
            "threshold": c["loop_threshold"] if a.threshold is None else a.threshold,
            "min_parts": c["loop_min_parts"] if a.min_parts is None else a.min_parts,
        }
    s = table(report, est)
    if a.json:
        Path(a.json).write_text(json.dumps({"estimator": est or report["config"], "summary": s}, indent=1))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("neighbour", help="a co-tenant: kernels at a duty cycle on one device")
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--kind", choices=("gemm", "copy"), default="gemm")
    p.add_argument("--size", type=int, default=4096, help="GEMM size, or MiB copied")
    p.add_argument("--duty", type=float, default=0.5)
    p.add_argument("--period", type=float, default=0.05)
    p.set_defaults(fn=cmd_neighbour)
    p = sub.add_parser("run", help="the agent and the serving loop, idle and beside each co-tenant")
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--shapes", default="deepseek-v3:bf16,deepseek-v3:fp8,qwen3-235b:bf16")
    p.add_argument("--tokens", default="1,4,16,64,256,1024,2048,4096,8192")
    p.add_argument("--cotenant", action="append", default=None, help="NAME=KIND:SIZE:DUTY:PERIOD")
    p.add_argument("--ref-s", type=float, default=0.4, help="seconds of serving loop per point")
    p.add_argument("--eager-ref-s", type=float, default=0.2, help="... of the eager (CPU-paced) loop")
    p.add_argument("--settle", type=float, default=2.0)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("table", help="the ratio table from a run's JSON (optionally re-estimated)")
    p.add_argument("report")
    p.add_argument("--tail", type=float)
    p.add_argument("--overhead", type=float)
    p.add_argument("--threshold", type=float)
    p.add_argument("--min-parts", type=int)
    p.add_argument("--json")
    p.set_defaults(fn=cmd_table)
    a = ap.parse_args(argv)
    if a.cmd == "run" and a.cotenant is None:
        a.cotenant = list(COTENANTS)
    a.fn(a)


if __name__ == "__main__":
    main()
