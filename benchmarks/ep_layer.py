"""Measure placements for real: the reference expert-parallel MoE layer runs each placement volume.

The pipeline a fleet runs, end to end, with the real parts: ``vibe agent bench`` measures each GPU's
curve (with a noisy neighbour slowing one GPU), ``fleet`` turns the agent's GPUProfile output into the
fleet file ``vibe plan`` reads, ``volume`` solves a policy and writes what the operator writes into the
``<name>-placement`` ConfigMap (placement.json, eplb.json, sglang-expert-location.json and
placement-meta.json with the content hash and generation), and ``run`` loads each volume through
``vibe serving init``'s reader and times it in ``vibe.measure.reference_ep``'s layer, one process per
rank (NCCL on GPUs, gloo on CPU), next to the cost model's predictions.

Subcommands (``--help`` on each)::

    loads     synthetic skewed loads, or the first layers of a loads file
    fleet     GPUProfile JSON(s) from `vibe agent bench --profile-out` -> fleet JSON (rank order)
    volume    loads + fleet + policy -> a placement volume directory (as the operator writes it)
    neighbour GEMMs at a duty cycle on one GPU, until killed or --seconds pass
    run       the layer over each --placement NAME=DIR: check against a dense reference, or time it

Example (one H200; the multi-GPU command is in benchmarks/results/ep-layer-*/README.md)::

    PYTHONPATH=. python3 benchmarks/ep_layer.py run --world-size 1 --slots-per-gpu 36 \\
        --loads loads.json --fleet fleet.json --placement vibe=vol/vibe --neighbour-gpu 0 --duty 0.5

NVLink multicast is off in every process this starts (``reference_ep.NO_MULTICAST``); nothing here
changes clocks or power limits.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from vibe.measure import reference_ep as ep  # noqa: E402

os.environ.update(ep.NO_MULTICAST)


# -- loads / fleet / volume -------------------------------------------------------------------------------


def cmd_loads(a: argparse.Namespace) -> None:
    from vibe.placement.inputs import load_json, read_loads
    from vibe.placement.synthetic import skewed_loads

    if a.source:
        loads = read_loads(load_json(a.source, "loads"))[: a.layers]
    else:
        lo, hi = (float(x) for x in a.skew.split(","))
        loads = skewed_loads(a.layers, a.experts, mean_tokens=a.mean_tokens, skew=(lo, hi), seed=a.seed)
    if a.tokens_per_step:  # vibe plan's rescaling: each layer routes tokens_per_step * top_k tokens
        loads = read_loads({"loads": loads.tolist()}, tokens_per_step=a.tokens_per_step, top_k=a.top_k)
    Path(a.out).write_text(json.dumps({"loads": loads.tolist()}) + "\n")
    print(f"loads {loads.shape[0]}x{loads.shape[1]}, {loads.sum(axis=1).mean():.0f} tokens/layer -> {a.out}")


def parse_shape(text: str) -> tuple[int, int, str]:
    dims, _, dtype = text.partition(":")
    h, i = (int(x) for x in dims.lower().split("x"))
    return h, i, dtype or "bf16"


def cmd_fleet(a: argparse.Namespace) -> None:
    """The operator's own GPUProfile reading (``vibe.operator.gpus``), written as ``vibe plan``'s fleet."""
    from vibe.operator.gpus import curve_for, profile_snapshot

    shape = parse_shape(a.shape)
    gpus = []
    for spec in a.profile:
        path, _, index = spec.partition(":")
        snap = profile_snapshot(json.loads(Path(path).read_text()))
        chosen = [g for g in snap.gpus if not index or g.index == int(index)]
        if not chosen:
            raise SystemExit(f"error: {path} has no GPU {index}")
        for g in chosen:
            tokens, seconds, _ = curve_for(g, shape)
            gid = f"{snap.node}/{g.index}" if not a.label else f"{a.label[len(gpus)]}"
            gpus.append(
                {
                    "id": gid,
                    "node": snap.node,
                    "uuid": g.uuid,
                    "tokens": tokens.tolist(),
                    "seconds": seconds.tolist(),
                }
            )
    Path(a.out).write_text(json.dumps({"gpus": gpus}, indent=1) + "\n")
    print(f"fleet of {len(gpus)} GPU(s), shape {shape} -> {a.out}")


def cmd_volume(a: argparse.Namespace) -> None:
    """Solve and write a ConfigMap-shaped directory: the operator's keys and its placement-meta.json."""
    from vibe.engines import canonical
    from vibe.operator import output
    from vibe.placement.engine import solve
    from vibe.placement.incremental import replace_incremental
    from vibe.placement.inputs import load_json, read_fleet, read_loads, read_placement

    loads = read_loads(load_json(a.loads, "loads"))
    fleet = read_fleet(load_json(a.fleet, "fleet"))
    if a.current:
        current = read_placement(
            load_json(Path(a.current) / canonical.KEY, "current placement"),
            slots_per_gpu=a.slots_per_gpu,
            num_experts=loads.shape[1],
        )
        result = replace_incremental(
            current, loads, fleet, max_moves=a.max_moves, time_budget_s=a.time_budget
        )
    else:
        result = solve(loads, fleet, a.slots_per_gpu, a.policy, time_budget_s=a.time_budget)
    # The operator's own rendering: same keys, bytes, content hash and placement-meta.json.
    core = output.render(result, fleet, ("vibe", "eplb", "sglang"))
    data, _ = output.finish(
        core, generation=a.generation, keys=output.InputKeys("", "", "", ""), placed_at="", summary={}
    )
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        if old.is_file():
            old.unlink()
    for key, text in data.items():
        (out / key).write_text(text)
    print(
        f"{result.policy}: predicted step {result.step_time_s * 1e3:.3f} ms,"
        f" imbalance {result.imbalance:.3f}, gap {result.gap * 100:.2f}%, moves {result.moves}"
        f" -> {out} (generation {a.generation})"
    )


# -- the noisy neighbour ----------------------------------------------------------------------------------


def cmd_neighbour(a: argparse.Namespace) -> None:
    """bf16 GEMMs for ``duty`` of every ``period``, idle the rest: a co-tenant that slows a GPU's kernels."""
    import torch

    dev = torch.device(a.device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    gen = torch.Generator(device=dev).manual_seed(1)
    x = torch.randn(a.size, a.size, generator=gen, device=dev, dtype=torch.float32).to(dtype)
    y = torch.randn(a.size, a.size, generator=gen, device=dev, dtype=torch.float32).to(dtype)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda *_: None)
    x @ y
    sync(dev)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    print("neighbour ready", flush=True)
    t_end = time.monotonic() + a.seconds if a.seconds else float("inf")
    busy = idle = 0.0
    gemms = 0
    while not stop and time.monotonic() < t_end:
        t0 = time.monotonic()
        while time.monotonic() - t0 < a.duty * a.period:
            x @ y
            sync(dev)
            gemms += 1
        t1 = time.monotonic()
        busy += t1 - t0
        if a.duty < 1:  # idle in proportion to the busy time it really took: the duty cycle holds
            time.sleep((t1 - t0) * (1 - a.duty) / a.duty)
        idle += time.monotonic() - t1
    print(
        json.dumps({"neighbour": str(dev), "gemms": gemms, "size": a.size, "busyS": busy, "idleS": idle}),
        flush=True,
    )


def start_neighbour(gpu: int | str, duty: float, size: int, period: float) -> subprocess.Popen[str]:
    device = gpu if isinstance(gpu, str) and not gpu.isdigit() else f"cuda:{gpu}"
    cmd = [sys.executable, __file__, "neighbour", "--device", str(device), "--duty", str(duty)]
    cmd += ["--size", str(size), "--period", str(period)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=ep.no_multicast())
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "ready" not in line:
        proc.kill()
        raise SystemExit(f"error: the neighbour did not start ({line.strip() or 'no output'})")
    return proc


def stop_neighbour(proc: subprocess.Popen[str]) -> dict[str, Any]:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


# -- run --------------------------------------------------------------------------------------------------


def cmd_run(a: argparse.Namespace) -> None:
    from vibe.placement.inputs import load_json, read_fleet, read_loads
    from vibe.serving.errors import ServingError

    loads = read_loads(load_json(a.loads, "loads"))
    num_layers, num_experts = loads.shape
    shape = ep.LayerShape(a.hidden, a.intermediate, a.top_k, a.dtype, a.seed)
    tokens = a.tokens_per_rank or ep.tokens_per_rank(loads, a.top_k, a.world_size)
    work = Path(a.work_dir or tempfile.mkdtemp(prefix="ep-layer-"))
    placements = []
    try:  # the init container of each rank's pod, before any step runs
        for spec in a.placement:
            name, _, mount = spec.partition("=")
            placed = ep.load_placement(
                mount,
                ep_size=a.world_size,
                num_experts=num_experts,
                slots_per_rank=a.slots_per_gpu,
                work_dir=work / "init" / name,
                document=a.document,
                expect_generation=a.expect_generation,
            )
            if placed.num_layers != num_layers:
                raise ServingError(
                    "PlacementMismatch", f"{name}: {placed.num_layers} layers but the loads have {num_layers}"
                )
            placements.append((name, placed))
    except ServingError as e:
        print(f"vibe serving: {e.reason}: {e.message}", file=sys.stderr)
        raise SystemExit(1) from None
    fleet = read_fleet(load_json(a.fleet, "fleet")) if a.fleet else None
    backend = a.backend if a.backend != "auto" else ("nccl" if _cuda() else "gloo")
    timed = backend == "nccl" and not a.check
    cfg = ep.RunConfig(
        placements=tuple(placements),
        loads=loads,
        shape=shape,
        tokens=tokens,
        backend=backend,
        init_method=f"tcp://127.0.0.1:{ep.free_port()}",
        out_dir=str(work),
        steps=a.steps,
        warmup=a.warmup,
        timed=timed,
        check=a.check,
        grouped={"auto": None, "on": True, "off": False}[a.grouped],
    )
    neighbour = None
    if a.neighbour_gpu is not None and a.duty > 0:
        neighbour = start_neighbour(a.neighbour_gpu, a.duty, a.neighbour_size, a.period)
        time.sleep(a.neighbour_settle)
    timed = cfg.timed
    started = time.perf_counter()
    try:
        ranks = ep.launch(cfg)
    finally:
        neighbour_stats = stop_neighbour(neighbour) if neighbour is not None else None
    report: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "worldSize": a.world_size,
        "backend": backend,
        "shape": dataclasses.asdict(shape),
        "tokensPerRank": tokens,
        "steps": a.steps,
        "warmup": a.warmup,
        "neighbour": None
        if neighbour is None
        else {"gpu": a.neighbour_gpu, "duty": a.duty, "size": a.neighbour_size, **(neighbour_stats or {})},
        "wallSeconds": time.perf_counter() - started,
        "devices": [r.get("deviceName", r["device"]) for r in ranks],
        "placements": {},
    }
    for name, placed in placements:
        per_rank = [r["placements"][name] for r in ranks]
        entry: dict[str, Any] = {
            "generation": placed.generation,
            "dataHash": placed.data_hash,
            "grouped": per_rank[0]["grouped"],
        }
        if a.check:
            entry["maxAbsError"] = max(p["maxAbsError"] for p in per_rank)
            entry["refMaxAbs"] = max(p["refMaxAbs"] for p in per_rank)
        if timed:
            entry.update(summarise(placed, per_rank, loads, fleet))
            entry["rawRanks"] = per_rank
        report["placements"][name] = entry
    print_table(report, a.check, timed)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(report, indent=1, default=str) + "\n")
        print(f"results: {a.out}")
    if a.check and a.tolerance is not None:
        bad = {n: p["maxAbsError"] for n, p in report["placements"].items() if p["maxAbsError"] > a.tolerance}
        if bad:
            raise SystemExit(f"error: outputs differ from the dense reference beyond {a.tolerance}: {bad}")


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def summarise(
    placed: ep.ServingPlacement, per_rank: list[dict], loads: np.ndarray, fleet: Any
) -> dict[str, Any]:
    """Per layer: slowest rank per step (median over steps), per-rank medians, and the curves' predictions.

    Predicted expert time of a rank in a step = sum over its slots of its curve at the tokens the slot
    really received that step (what the layer did, priced by the cost model); ``planMs`` is what the
    planner predicted from the loads (even split over replicas).
    """
    from vibe.placement.cost import gpu_times_of

    s = placed.slots_per_rank
    layers = []
    plan = gpu_times_of(placed.phy2log, loads, fleet.table, s) if fleet is not None else None
    for layer in range(placed.num_layers):
        rows = [p["layers"][layer] for p in per_rank]
        total = np.array([r["totalMs"] for r in rows])  # [G, steps]
        compute = np.array([r["computeMs"] for r in rows])
        entry: dict[str, Any] = {
            "layerMs": float(np.median(total.max(axis=0))),
            "expertMs": float(np.median(compute.max(axis=0))),
            "slowestRank": int(np.argmax(np.median(total, axis=1))),
            "ranks": [
                {
                    "dispatchMs": ep.median(r["dispatchMs"]),
                    "computeMs": ep.median(r["computeMs"]),
                    "combineMs": ep.median(r["combineMs"]),
                    "totalMs": ep.median(r["totalMs"]),
                    "meanSlotTokens": np.mean(np.array(r["slotTokens"]), axis=0).round(1).tolist(),
                }
                for r in rows
            ],
        }
        if fleet is not None:
            for rank, r in enumerate(rows):
                counts = np.array(r["slotTokens"], dtype=np.float64)  # [steps, S]
                pred = fleet.table(np.full(counts.shape, rank), counts).sum(axis=1) * 1e3
                entry["ranks"][rank]["predictedComputeMs"] = float(np.median(pred))
                entry["ranks"][rank]["measuredOverPredicted"] = float(
                    np.median(np.array(r["computeMs"]) / pred)
                )
                entry["ranks"][rank]["planMs"] = float(plan[layer, rank] * 1e3)
            entry["planLayerMs"] = float(plan[layer].max() * 1e3)
        layers.append(entry)
    out: dict[str, Any] = {
        "stepMs": sum(x["layerMs"] for x in layers),
        "expertStepMs": sum(x["expertMs"] for x in layers),
        "layers": layers,
    }
    if fleet is not None:
        out["planStepMs"] = sum(x["planLayerMs"] for x in layers)
        ratios = [rk["measuredOverPredicted"] for x in layers for rk in x["ranks"]]
        out["measuredOverPredicted"] = {
            "median": float(np.median(ratios)),
            "min": float(np.min(ratios)),
            "max": float(np.max(ratios)),
        }
    return out


def cmd_reprice(a: argparse.Namespace) -> None:
    """Measured expert time of a run against the curves of one or more fleet files (rank r = GPU r)."""
    from vibe.placement.inputs import load_json, read_fleet

    report = json.loads(Path(a.run).read_text())
    fleets = {}
    for spec in a.fleet:
        label, _, path = spec.rpartition("=")
        fleets[label or path] = read_fleet(load_json(path, "fleet"))
    print(f"{a.run}: measured expert time / sum of per-slot curve times (median over steps; per rank-layer)")
    print(f"{'placement':>12} {'expert ms':>10} " + " ".join(f"{n:>26}" for n in fleets))
    out: dict[str, Any] = {}
    for name, p in report["placements"].items():
        ratios: dict[str, list[float]] = {n: [] for n in fleets}
        for rank, r in enumerate(p["rawRanks"]):
            for layer in r["layers"]:
                counts = np.array(layer["slotTokens"], dtype=np.float64)
                for n, fleet in fleets.items():
                    pred = fleet.table(np.full(counts.shape, rank), counts).sum(axis=1) * 1e3
                    ratios[n].append(float(np.median(np.array(layer["computeMs"]) / pred)))
        out[name] = {
            n: {"median": float(np.median(v)), "min": min(v), "max": max(v)} for n, v in ratios.items()
        }
        cells = [f"{x['median']:.3f} [{x['min']:.3f}, {x['max']:.3f}]" for x in out[name].values()]
        print(f"{name:>12} {p['expertStepMs']:>10.3f} " + " ".join(f"{c:>26}" for c in cells))
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1) + "\n")


def print_table(report: dict[str, Any], check: bool, timed: bool) -> None:
    nb = report["neighbour"]
    who = "none" if nb is None else f"GPU {nb['gpu']} at duty {nb['duty']}"
    print(
        f"world size {report['worldSize']} ({report['backend']}), {report['tokensPerRank']} tokens/rank,"
        f" neighbour: {who}"
    )
    cols = ["placement", "gen"]
    if check:
        cols += ["max |err|", "max |ref|"]
    if timed:
        cols += ["step ms", "expert ms", "plan ms", "meas/curve", "vs first"]
    print("  ".join(f"{c:>12}" for c in cols))
    first = None
    for name, p in report["placements"].items():
        row = [name, str(p["generation"])]
        if check:
            row += [f"{p['maxAbsError']:.2e}", f"{p['refMaxAbs']:.2e}"]
        if timed:
            first = first or p["stepMs"]
            mop = p.get("measuredOverPredicted")
            row += [
                f"{p['stepMs']:.3f}",
                f"{p['expertStepMs']:.3f}",
                f"{p['planStepMs']:.3f}" if "planStepMs" in p else "-",
                f"{mop['median']:.2f} [{mop['min']:.2f},{mop['max']:.2f}]" if mop else "-",
                f"{first / p['stepMs']:.3f}x",
            ]
        print("  ".join(f"{c:>12}" for c in row))


# -- CLI --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("loads", help="synthetic skewed loads, or the first layers of a loads file")
    p.add_argument("--from", dest="source", help="take the first --layers layers of this loads file")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--experts", type=int, default=32)
    p.add_argument("--mean-tokens", type=float, default=256.0, help="mean tokens per expert per step")
    p.add_argument("--skew", default="2,4", help="max/mean per layer drawn from this range")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokens-per-step", type=float, help="rescale: tokens per forward step, all ranks")
    p.add_argument("--top-k", type=int, default=8, help="with --tokens-per-step")
    p.add_argument("-o", "--out", required=True)
    p.set_defaults(fn=cmd_loads)

    p = sub.add_parser("fleet", help="GPUProfile JSON(s) (vibe agent bench --profile-out) -> fleet JSON")
    p.add_argument("--profile", action="append", required=True, help="FILE[:GPU_INDEX], in rank order")
    p.add_argument("--shape", default="7168x2048:bf16", help="HIDDENxINTERMEDIATE[:dtype]")
    p.add_argument("--label", action="append", help="GPU ids to use instead of node/index (rank order)")
    p.add_argument("-o", "--out", required=True)
    p.set_defaults(fn=cmd_fleet)

    p = sub.add_parser("volume", help="solve a policy and write a placement volume directory")
    p.add_argument("--loads", required=True)
    p.add_argument("--fleet", required=True)
    p.add_argument("--slots-per-gpu", type=int, required=True)
    p.add_argument("--policy", default="vibe", help="vibe | token-balanced | round-robin | linear")
    p.add_argument("--current", help="the volume in service: re-place incrementally from it")
    p.add_argument("--max-moves", type=int)
    p.add_argument("--generation", type=int, default=1)
    p.add_argument("--time-budget", type=float, default=1.0)
    p.add_argument("-o", "--out", required=True)
    p.set_defaults(fn=cmd_volume)

    p = sub.add_parser("neighbour", help="GEMMs at a duty cycle on one device")
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--duty", type=float, default=0.5)
    p.add_argument("--period", type=float, default=0.02, help="seconds per busy+idle cycle")
    p.add_argument("--size", type=int, default=4096, help="square GEMM size")
    p.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0: on SIGTERM)")
    p.set_defaults(fn=cmd_neighbour)

    p = sub.add_parser("run", help="run the layer over placement volumes")
    p.add_argument("--placement", action="append", required=True, help="NAME=VOLUME_DIR (repeatable)")
    p.add_argument("--loads", required=True, help="[L][E] loads: the router samples from them")
    p.add_argument("--world-size", type=int, required=True)
    p.add_argument("--slots-per-gpu", type=int, required=True, help="as the engine is launched")
    p.add_argument("--fleet", help="the fleet's curves: predicted expert time per rank")
    p.add_argument("--document", default="eplb", choices=["eplb", "sglang"])
    p.add_argument("--expect-generation", type=int)
    p.add_argument("--hidden", type=int, default=7168)
    p.add_argument("--intermediate", type=int, default=2048)
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokens-per-rank", type=int, help="default: the loads' tokens per step / (k * G)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--backend", default="auto", choices=["auto", "nccl", "gloo"])
    p.add_argument("--grouped", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--check", action="store_true", help="compare with the dense reference (no timing)")
    p.add_argument("--tolerance", type=float, help="with --check: fail above this max abs error")
    p.add_argument("--neighbour-gpu", help="GPU index (or device) of the noisy neighbour")
    p.add_argument("--duty", type=float, default=0.5)
    p.add_argument("--period", type=float, default=0.02)
    p.add_argument("--neighbour-size", type=int, default=4096)
    p.add_argument("--neighbour-settle", type=float, default=1.0, help="seconds before the layer starts")
    p.add_argument("--work-dir")
    p.add_argument("--out")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("reprice", help="a run's measured expert time against fleet curves")
    p.add_argument("run", help="the JSON of a timed run (--out)")
    p.add_argument("--fleet", action="append", required=True, help="[LABEL=]FLEET.json (repeatable)")
    p.add_argument("-o", "--out")
    p.set_defaults(fn=cmd_reprice)

    args = ap.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
