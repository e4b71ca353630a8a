"""The agent's benchmark on a real GPU: profile duration, run-to-run spread, canary cost, NVML cost.

Runs the same code as ``vibe agent bench`` / ``vibe agent run`` (``vibe.agent.bench``, ``.profiler``,
``.node``) on every visible GPU ... well, on one (``--device``, default cuda:0), and writes one JSON
file with everything, plus the GPUProfile the agent would publish and its /metrics text:

1. identity and NVML telemetry, and the cost of one full telemetry sample (all fields) and of the five
   reads the drift detector needs;
2. ``--profiles`` full profiles (default shapes: DeepSeek-V3, Qwen3-235B, Mixtral; bf16 and fp8; 1..8192
   tokens) back to back: the duration of each and the run-to-run spread of every point;
3. the agent's own path: a ``NodeAgent`` with the torch profiler and NVML, whose first ``step`` must
   benchmark the GPU (no other process holds it: the agent's own CUDA context must not count), then
   ``--poll`` seconds of 1 Hz telemetry through the drift detector;
4. the canary: ``--canaries`` back-to-back canaries on the warm GPU (wall and device time), then
   canaries while a separate "serving" process runs DeepSeek-V3 experts flat out, to see what a canary
   costs the serving process's iterations.

    PYTHONPATH=. python3 benchmarks/agent_gpu.py --out "$OUT"            # on the GPU machine
    PYTHONPATH=. python3 benchmarks/agent_gpu.py --out /tmp/x --device cpu --tiny   # the code path on CPU

It never changes clocks, power limits or any GPU setting.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any


def nvml_cost(tel: Any, index: int, n: int = 1000) -> dict[str, float]:
    """Microseconds per full ``sample()`` and per the five reads drift detection needs."""
    import pynvml as nv

    t0 = time.perf_counter()
    for _ in range(n):
        tel.sample(index)
    full = (time.perf_counter() - t0) / n * 1e6
    h = nv.nvmlDeviceGetHandleByIndex(index)
    reasons = (
        getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None)
        or nv.nvmlDeviceGetCurrentClocksThrottleReasons
    )
    t0 = time.perf_counter()
    for _ in range(n):
        nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)
        nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM)
        nv.nvmlDeviceGetEnforcedPowerLimit(h)
        reasons(h)
        nv.nvmlDeviceGetUtilizationRates(h)
    five = (time.perf_counter() - t0) / n * 1e6
    return {"fullSampleUs": round(full, 2), "fiveReadsUs": round(five, 2)}


def spread(profiles: list[dict]) -> dict[str, Any]:
    """Per shape and point: median over profiles, and (max - min) / median across the profiles."""
    out: dict[str, Any] = {}
    for c in profiles[0]["curves"]:
        key = f"{c['shape']['name']}/{c['shape']['dtype']}"
        rows = []
        for k, p in enumerate(c["points"]):
            vals = [
                pr["curves"][j]["points"][k]["seconds"]
                for pr in profiles
                for j, cc in enumerate(pr["curves"])
                if cc["shape"] == c["shape"] and len(cc["points"]) > k
            ]
            med = statistics.median(vals)
            rows.append(
                {
                    "tokens": p["tokens"],
                    "medianS": med,
                    "spread": (max(vals) - min(vals)) / med,
                    "n": len(vals),
                }
            )
        if rows:
            out[key] = {"points": rows, "maxSpread": max(r["spread"] for r in rows)}
    return out


def serving_load(device: str, seconds: float, ready: Any, path: str) -> None:
    """A stand-in serving process: DeepSeek-V3 bf16 experts over 256 tokens, flat out; logs iterations."""
    import torch

    from vibe.agent.bench import ExpertBank
    from vibe.agent.shapes import ExpertShape

    dev = torch.device(device)
    bank = ExpertBank(torch, ExpertShape(7168, 2048, "bf16"), dev, experts=8, max_tokens=256, seed=1)
    x = bank.inputs(256)
    log = []
    for _ in range(20):
        bank(0, x)
    torch.cuda.synchronize(dev)
    ready.set()
    t_end = time.time() + seconds
    k = 0
    while time.time() < t_end:
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(16):
            bank(k % 8, x)
            k += 1
        e.record()
        e.synchronize()
        log.append((time.time(), s.elapsed_time(e) / 16 / 1e3))
    Path(path).write_text(json.dumps(log))


def canary_under_load(device: str, shape: Any, out_dir: Path, seconds: float = 14.0) -> dict[str, Any]:
    from vibe.agent.bench import canary

    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    log_path = str(out_dir / "serving_log.json")
    p = ctx.Process(target=serving_load, args=(device, seconds, ready, log_path))
    p.start()
    if not ready.wait(120):
        p.terminate()
        return {"error": "serving process did not start"}
    time.sleep(3.0)
    windows = []
    t_stop = time.time() + seconds - 5.0
    while time.time() < t_stop:
        t0 = time.time()
        c = canary(shape, device=device)
        windows.append((t0, time.time(), c.gpu_s, c.seconds))
        time.sleep(1.5)
    p.join(timeout=seconds + 60)
    log = json.loads(Path(log_path).read_text())
    Path(log_path).unlink()
    inside = [ms for t, ms in log if any(a <= t <= b + 0.05 for a, b, _, _ in windows)]
    outside = [ms for t, ms in log if not any(a - 0.5 <= t <= b + 0.5 for a, b, _, _ in windows)]
    t_first, t_last = log[0][0], log[-1][0]
    busy_canary = sum(b - a for a, b, _, _ in windows)
    return {
        "servingShape": "deepseek-v3/7168x2048/bf16 x 256 tokens",
        "canaries": len(windows),
        "canaryWallS": [round(b - a, 4) for a, b, _, _ in windows],
        "canaryDeviceS": [round(g, 6) for _, _, g, _ in windows],
        "canarySeconds": [s for _, _, _, s in windows],
        "servingCallS": {
            "outsideMedian": statistics.median(outside) if outside else None,
            "insideMedian": statistics.median(inside) if inside else None,
            "insideMax": max(inside) if inside else None,
            "samplesOutside": len(outside),
            "samplesInside": len(inside),
        },
        "servingSeconds": round(t_last - t_first, 2),
        "canaryWallFraction": round(busy_canary / (t_last - t_first), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--profiles", type=int, default=3)
    ap.add_argument("--canaries", type=int, default=10)
    ap.add_argument("--poll", type=int, default=10)
    ap.add_argument(
        "--tiny", action="store_true", help="tiny shape and few tokens (CPU check of the code path)"
    )
    ap.add_argument("--skip-load", action="store_true", help="skip the canary-under-load experiment")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    import torch

    from vibe.agent.bench import BenchConfig
    from vibe.agent.shapes import ExpertShape, default_shapes
    from vibe.agent.telemetry import NvmlTelemetry

    t_all = time.perf_counter()
    res: dict[str, Any] = {
        "started": time.time(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
    }
    tel = NvmlTelemetry.open()
    cuda = args.device.startswith("cuda")
    if args.tiny:
        shapes = [ExpertShape(256, 128, "bf16", "tiny"), ExpertShape(256, 128, "fp8", "tiny")]
        cfg = BenchConfig(tokens=(1, 4, 16, 64, 256), repeats=20, preheat_min_s=0.1)
    else:
        shapes = default_shapes()
        cfg = BenchConfig()
    res["config"] = {k: v for k, v in cfg.__dict__.items()}
    res["shapes"] = [s.label for s in shapes]
    if tel.available:
        import pynvml

        res["driver"] = pynvml.nvmlSystemGetDriverVersion()
        res["gpus"] = [g.__dict__ for g in tel.gpus()]
        res["telemetryIdle"] = tel.sample(0).as_dict()
        res["nvmlCost"] = nvml_cost(tel, 0)
    else:
        res["telemetryError"] = tel.error
    if cuda:
        res["deviceName"] = torch.cuda.get_device_name(torch.device(args.device))
    print(f"[agent_gpu] {res.get('deviceName', 'cpu')}: NVML {tel.available}", flush=True)

    name = (res.get("deviceName") or "cpu").replace(" ", "-")
    path = args.out / f"agent_gpu_{name}.json"
    try:
        experiments(args, res, tel, shapes, cfg, cuda)
    except Exception as e:  # keep what was measured
        import traceback

        res["error"] = traceback.format_exc()
        print(f"[agent_gpu] FAILED: {e!r}", flush=True)
    finally:
        res["totalS"] = round(time.perf_counter() - t_all, 1)
        path.write_text(json.dumps(res, indent=1, default=str))
        print(f"[agent_gpu] done in {res['totalS']} s -> {path.name}", flush=True)


def experiments(args: Any, res: dict, tel: Any, shapes: list, cfg: Any, cuda: bool) -> None:
    import torch

    from vibe.agent.bench import canary, profile_device
    from vibe.agent.exporter import AgentCollector, render
    from vibe.agent.node import AgentConfig, NodeAgent
    from vibe.agent.profiler import TorchProfiler

    # 2. full profiles back to back
    profiles = []
    for k in range(args.profiles):
        r = profile_device(shapes, device=args.device, cfg=cfg, telemetry=tel)
        profiles.append(r.as_dict())
        print(
            f"[agent_gpu] profile {k + 1}: {r.duration_s:.1f} s, preheat {r.preheat.get('seconds')} s",
            flush=True,
        )
    res["profiles"] = profiles
    res["profileDurationsS"] = [p["duration_s"] for p in profiles]
    res["spread"] = spread(profiles)
    if cuda:  # the same without the per-point re-heat: how much the power state changes the curve
        from dataclasses import replace

        r = profile_device(shapes, device=args.device, cfg=replace(cfg, reheat_s=0.0), telemetry=tel)
        res["profileNoReheat"] = r.as_dict()
        print(f"[agent_gpu] profile without re-heat: {r.duration_s:.1f} s", flush=True)

    # 3. the agent's own path (NVML + torch profiler + node agent + exporter)
    agent = NodeAgent(
        "gpu-node",
        tel,
        TorchProfiler(tel, cfg),
        AgentConfig(shapes=list(shapes), canary_seconds=0.0),
        version="bench",
    )
    t0 = time.perf_counter()
    agent.step()
    res["agentFirstStepS"] = round(time.perf_counter() - t0, 2)
    for _ in range(args.poll):
        time.sleep(1.0)
        agent.step()
    res["agentEvents"] = [e.__dict__ for e in agent.events]
    res["agentDrift"] = {i: (r.drift_state, r.time_scale) for i, r in agent.records.items()}
    body = agent.body()
    (args.out / "gpuprofile.json").write_text(json.dumps(body, indent=1))
    (args.out / "metrics.txt").write_text(render(AgentCollector(lambda: [agent], version="bench")))
    print(f"[agent_gpu] agent first step {res['agentFirstStepS']} s, events {len(agent.events)}", flush=True)

    # 4. canary cost
    first = shapes[0]
    cs = [canary(first, device=args.device, telemetry=tel) for _ in range(args.canaries)]
    res["canaryIdle"] = {
        "shape": first.label,
        "tokens": cs[0].tokens,
        "wallS": [round(c.wall_s, 4) for c in cs],
        "deviceS": [round(c.gpu_s, 6) for c in cs],
        "seconds": [c.seconds for c in cs],
    }
    if cuda and not args.skip_load:
        res["canaryUnderLoad"] = canary_under_load(args.device, first, args.out)
    if cuda:
        res["maxMemoryAllocatedBytes"] = torch.cuda.max_memory_allocated(torch.device(args.device))
    if tel.available:
        res["telemetryEnd"] = tel.sample(0).as_dict()
        res["telemetryProblems"] = tel.problems


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
