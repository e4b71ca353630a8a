"""``vibe simulate``: TTFT, TPOT, throughput, SLO attainment and goodput per placement policy.

Role: the serving-level face of the placement library. It reads the same loads and fleet files as
``vibe plan`` (same validation, same errors), places the experts with each policy, and simulates an
SGLang-like engine serving Poisson requests at each rate (``vibe.simulate``).

Heavy imports happen inside the command, so ``vibe --help`` stays fast. Bad input ends as one
``vibe simulate: <Reason>: <message>`` line on stderr and exit status 1, never a traceback
(``vibe.clikit``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from vibe.clikit import failures
from vibe.placement import DEFAULT_SAMPLES, DispatchName, ReplicaSplit

COMMAND = "vibe simulate"


def simulate(
    loads: Annotated[
        Path,
        typer.Option(
            "--loads",
            "-l",
            dir_okay=False,
            metavar="LOADS.json",
            help="Expert loads, as for vibe plan: each layer's routing distribution (any scale; the "
            "simulated batches set the token counts). With --mode disaggregated: the decode group's loads.",
        ),
    ],
    fleet: Annotated[
        Path,
        typer.Option(
            "--fleet",
            "-f",
            dir_okay=False,
            metavar="FLEET.json",
            help="The expert-parallel GPUs and their curves, as for vibe plan (with --mode disaggregated: "
            "the decode group).",
        ),
    ],
    slots_per_gpu: Annotated[
        int, typer.Option("--slots-per-gpu", "-s", help="Expert slots per GPU per layer.")
    ],
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            metavar="deepseek-v3|qwen3-235b|mixtral-8x7b|CONFIG.json",
            help="Non-expert shape: a known model, or a Hugging Face config.json path.",
        ),
    ] = "deepseek-v3",
    policies: Annotated[
        str,
        typer.Option(
            metavar="POLICY,...",
            help="Comma-separated policies: round-robin, token-balanced, vibe (with --drift, vibe+replace "
            "is added: vibe re-placed by the operator after the drift).",
        ),
    ] = "round-robin,token-balanced,vibe",
    rates: Annotated[
        str, typer.Option(metavar="RATE,...", help="Request rates to simulate, requests per second.")
    ] = "0.5,1,2,4,8",
    requests: Annotated[int, typer.Option("--requests", help="Requests per run.")] = 500,
    seed: Annotated[
        int, typer.Option(help="Seed of the requests and the routing noise (same seed, same JSON).")
    ] = 0,
    prompt_tokens: Annotated[float, typer.Option(help="Mean prompt tokens.")] = 1000,
    output_tokens: Annotated[float, typer.Option(help="Mean output tokens.")] = 200,
    length_spread: Annotated[
        float, typer.Option(help="Lengths uniform within mean x (1 +- spread); 0 = fixed lengths.")
    ] = 0.5,
    burstiness: Annotated[
        float, typer.Option(help="Gamma shape of the arrival gaps: 1 Poisson, < 1 bursty.")
    ] = 1.0,
    slo_ttft_ms: Annotated[float, typer.Option(help="TTFT SLO, milliseconds.")] = 2000,
    slo_tpot_ms: Annotated[float, typer.Option(help="TPOT SLO, milliseconds.")] = 100,
    mode: Annotated[
        Literal["colocated", "disaggregated"],
        typer.Option(help="One group, or prefill and decode in separate groups (PD)."),
    ] = "colocated",
    prefill_loads: Annotated[
        Path | None, typer.Option(dir_okay=False, help="PD: the prefill group's loads file.")
    ] = None,
    prefill_fleet: Annotated[
        Path | None, typer.Option(dir_okay=False, help="PD: the prefill group's fleet file.")
    ] = None,
    prefill_slots_per_gpu: Annotated[
        int | None, typer.Option(help="PD: the prefill group's slots per GPU.")
    ] = None,
    gpu: Annotated[
        Literal["h200", "h100"],
        typer.Option(
            help="GPU of the non-expert curves and memory: h200 (measured) or h100 (scaled from it)."
        ),
    ] = "h200",
    gpu_memory_gib: Annotated[
        float | None, typer.Option(help="GPU memory, GiB (default: the GPU's).")
    ] = None,
    chunk_tokens: Annotated[int, typer.Option(help="Chunked-prefill tokens per GPU per step.")] = 8192,
    max_running: Annotated[int, typer.Option(help="Running requests per GPU, at most.")] = 256,
    mixed_chunk: Annotated[
        bool, typer.Option(help="Decode tokens ride in prefill steps (SGLang mixed chunk).")
    ] = False,
    scheduler: Annotated[
        Literal["prefill-first", "decode-first"],
        typer.Option(
            help="prefill-first (SGLang: a GPU with a prefill batch runs it, its decodes wait) or "
            "decode-first (vLLM v1: decode tokens first, prefill chunks fill the token budget)."
        ),
    ] = "prefill-first",
    overlap: Annotated[
        Literal["auto", "on", "off"],
        typer.Option(
            help="Two micro-batches hide dispatch/combine behind compute (SGLang two-batch overlap); "
            "auto: where the group spans nodes and it makes a step faster (constants: two_batch_overlap)."
        ),
    ] = "auto",
    dispatch_per_node: Annotated[
        Literal["auto", "always", "never"],
        typer.Option(
            help="Send a token once per destination node (DeepEP normal kernels): auto = in prefill "
            "steps, decode steps one copy per token-expert pair (constants: dispatch_per_node)."
        ),
    ] = "auto",
    floor_share: Annotated[
        float | None,
        typer.Option(
            help="Re-shape the fleet: each GPU's slowdown vs the median GPU (read off its curve above "
            "the floor) applies to its compute, this share of it to its memory-bound floor (0 measured "
            "under a power cap, 1 the whole curve). Default: the curves as given. Non-expert work is "
            "slowed by each GPU's floor and compute slowdowns either way."
        ),
    ] = None,
    goodput_seeds: Annotated[
        int, typer.Option(help="Seeds of the goodput bisection (0: goodput from the --rates grid only).")
    ] = 3,
    goodput_resolution: Annotated[
        float, typer.Option(help="Goodput bisection stops within this fraction of the rate.")
    ] = 0.02,
    goodput_seconds: Annotated[
        float | None,
        typer.Option(help="Goodput runs send max(--requests, rate x this) requests (default --requests)."),
    ] = None,
    plan_tokens: Annotated[
        float | None,
        typer.Option(help="Tokens per step the policies plan for (default: the group's full budget)."),
    ] = None,
    step_mix: Annotated[
        str | None,
        typer.Option(
            metavar="TOKENS[:WEIGHT],...",
            help="Plan for the expected step time over this step mix under sampled routing, as "
            "vibe plan --step-mix (default: the mean-load objective at --plan-tokens).",
        ),
    ] = None,
    samples: Annotated[
        int,
        typer.Option("--samples", help="With --step-mix: sampled routings per kind of step (as vibe plan)."),
    ] = DEFAULT_SAMPLES,
    dispatch: Annotated[
        DispatchName,
        typer.Option(
            "--dispatch",
            help="With --step-mix: how the engine splits an expert's tokens over its replicas, as vibe "
            "plan: round-robin (TensorRT-LLM, vLLM), even or sglang-static.",
        ),
    ] = "round-robin",
    replica_split: Annotated[
        ReplicaSplit,
        typer.Option(
            "--replica-split",
            help="How an expert's tokens split over its replicas, as vibe plan: even (every engine) or "
            "weighted (per-slot shares the planner chooses; vibe's own dispatch).",
        ),
    ] = "even",
    drift: Annotated[
        list[str] | None,
        typer.Option(
            metavar="at=SECONDS,gpu=ID,factor=F",
            help="The GPU slows by factor F from then (repeatable).",
        ),
    ] = None,
    replace_after_s: Annotated[
        float, typer.Option(help="vibe+replace: seconds from drift to re-placement.")
    ] = 60.0,
    replace_cost: Annotated[
        Literal["restart", "moves"],
        typer.Option(help="restart (the group is down --restart-s) or moves (weight copies pause it)."),
    ] = "moves",
    restart_s: Annotated[
        float | None, typer.Option(help="Seconds a restart takes (default: constants).")
    ] = None,
    timeline_bin_s: Annotated[
        float, typer.Option(help="With --drift: P90 TTFT per window of this length.")
    ] = 10.0,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", dir_okay=False, metavar="OUT.json", help="Write every result here (JSON)."
        ),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", dir_okay=False, metavar="OUT.png", help="Draw the results (matplotlib)."),
    ] = None,
) -> None:
    """Simulate serving with each placement policy: TTFT, TPOT, throughput, SLO attainment, goodput.

    A step costs, on the one cost model: per MoE layer the slowest GPU's expert time from its curve
    (routed tokens drawn per step from the layer's load profile), dispatch and combine, plus the
    non-expert time (attention over the batch's KV, dense layers) measured on an H200. Every modelling
    constant, with its source, is in the --output JSON.
    """
    options = dict(locals())  # the flags only (taken before the import below adds a local)
    from vibe.placement import PlacementError

    # PlacementError carries its reason; the simulator's own errors (SimulationError, ModelError) and
    # the flags' parse errors are ValueErrors: InvalidInput
    with failures(COMMAND, PlacementError, ValueError):
        _simulate(**options)


def parse_drift(text: str) -> Any:
    from vibe.simulate.simulator import DriftEvent

    fields: dict[str, str] = {}
    for part in text.split(","):
        key, sep, val = part.partition("=")
        if not sep:
            raise ValueError(f"--drift {text!r}: want at=SECONDS,gpu=ID,factor=F")
        fields[key.strip()] = val.strip()
    try:
        ev = DriftEvent(float(fields["at"]), fields["gpu"], float(fields["factor"]))
    except (KeyError, ValueError):
        raise ValueError(f"--drift {text!r}: want at=SECONDS,gpu=ID,factor=F") from None
    if not (ev.at_s >= 0 and ev.factor > 0):
        raise ValueError(f"--drift {text!r}: at must be >= 0 and factor > 0")
    return ev


def _numbers(text: str, what: str) -> list[float]:
    try:
        out = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated numbers, not {text!r}") from None
    if not out or any(not (x > 0) for x in out):
        raise ValueError(f"{what} must be positive numbers")
    return sorted(set(out))


def _simulate(**o: Any) -> None:
    from vibe.simulate.models import resolve
    from vibe.simulate.report import sweep
    from vibe.simulate.simulator import Simulator
    from vibe.simulate.workload import Workload

    m = resolve(o["model"])
    rates = _numbers(o["rates"], "--rates")
    names, drift = _policies(o)
    groups = _groups(o)
    settings = _settings(o, m, groups, drift)
    base = Workload(
        rates[0],
        o["requests"],
        o["prompt_tokens"],
        o["output_tokens"],
        o["length_spread"],
        o["burstiness"],
        o["seed"],
    )
    sim = Simulator(settings)
    progress = _Progress(len(rates) * len(names))
    doc = sweep(
        sim,
        names,
        rates,
        base,
        slo_ttft_s=o["slo_ttft_ms"] / 1e3,
        slo_tpot_s=o["slo_tpot_ms"] / 1e3,
        timeline_bin_s=o["timeline_bin_s"] if drift else None,
        progress=progress,
        goodput_seeds=o["goodput_seeds"],
        goodput_resolution=o["goodput_resolution"],
        goodput_seconds=o["goodput_seconds"],
    )
    progress.close()
    doc["settings"] = _settings_doc(o, m.name, groups, drift)
    print_tables(doc)
    if o["output"]:
        Path(o["output"]).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    if o["plot"]:
        from vibe.simulate.plot import draw

        draw(doc, str(o["plot"]))


def _policies(o: dict[str, Any]) -> tuple[list[str], tuple[Any, ...]]:
    """The policies to run and the drift events; vibe+replace is added with --drift and needs it."""
    from vibe.simulate.simulator import POLICIES, REPLACE

    names = [p.strip() for p in o["policies"].split(",") if p.strip()]
    for p in names:
        if p not in (*POLICIES, REPLACE):
            raise ValueError(f"unknown policy {p!r} (one of {', '.join((*POLICIES, REPLACE))})")
    drift = tuple(parse_drift(d) for d in o["drift"] or ())
    if drift and REPLACE not in names:
        names.append(REPLACE)
    if REPLACE in names and not drift:
        raise ValueError(f"{REPLACE} needs --drift")
    return names, drift


def _groups(o: dict[str, Any]) -> tuple[Any, ...]:
    """The expert-parallel groups, read from their files: one, or prefill then decode (--mode)."""
    from vibe.placement import load_json, read_fleet, read_loads
    from vibe.simulate.simulator import GroupSpec

    decode = GroupSpec(
        "colocated" if o["mode"] == "colocated" else "decode",
        read_loads(load_json(o["loads"], "loads")),
        read_fleet(load_json(o["fleet"], "fleet")),
        o["slots_per_gpu"],
        o["plan_tokens"],
        o["step_mix"],
    )
    if o["mode"] != "disaggregated":
        return (decode,)
    if not (o["prefill_loads"] and o["prefill_fleet"] and o["prefill_slots_per_gpu"]):
        raise ValueError(
            "--mode disaggregated needs --prefill-loads, --prefill-fleet, --prefill-slots-per-gpu"
        )
    pre = GroupSpec(
        "prefill",
        read_loads(load_json(o["prefill_loads"], "prefill loads")),
        read_fleet(load_json(o["prefill_fleet"], "prefill fleet")),
        o["prefill_slots_per_gpu"],
        o["plan_tokens"],
        o["step_mix"],
    )
    return (pre, decode)


def _settings(o: dict[str, Any], model: Any, groups: tuple[Any, ...], drift: tuple[Any, ...]) -> Any:
    """The simulator's ``Settings`` from the flags."""
    from vibe.simulate.engine import EngineConfig
    from vibe.simulate.simulator import Settings

    return Settings(
        model=model,
        groups=groups,
        engine=EngineConfig(o["chunk_tokens"], o["max_running"], o["mixed_chunk"], o["scheduler"]),
        overlap=o["overlap"],
        per_node=o["dispatch_per_node"],
        plan_samples=o["samples"],
        plan_dispatch=o["dispatch"],
        replica_split=o["replica_split"],
        floor_share=o["floor_share"],
        gpu=o["gpu"],
        gpu_memory_bytes=o["gpu_memory_gib"] * 2**30 if o["gpu_memory_gib"] else None,
        drift=drift,
        replace_after_s=o["replace_after_s"],
        replace_cost=o["replace_cost"],
        restart_s=o["restart_s"],
        seed=o["seed"],
    )


def _settings_doc(
    o: dict[str, Any], model: str, groups: tuple[Any, ...], drift: tuple[Any, ...]
) -> dict[str, Any]:
    """The output JSON's ``settings``: what was simulated, as the flags gave it."""
    return {
        "model": model,
        "mode": o["mode"],
        "gpu": o["gpu"],
        "groups": [{"name": g.name, "gpus": len(g.fleet), "slotsPerGPU": g.slots_per_gpu} for g in groups],
        "requests": o["requests"],
        "seed": o["seed"],
        "promptTokens": o["prompt_tokens"],
        "outputTokens": o["output_tokens"],
        "lengthSpread": o["length_spread"],
        "burstiness": o["burstiness"],
        "engine": {
            "chunkTokens": o["chunk_tokens"],
            "maxRunning": o["max_running"],
            "mixedChunk": o["mixed_chunk"],
            "scheduler": o["scheduler"],
            "overlap": o["overlap"],
            "dispatchPerNode": o["dispatch_per_node"],
        },
        "floorShare": o["floor_share"],
        "stepMix": o["step_mix"],
        "samples": o["samples"] if o["step_mix"] else None,
        "dispatch": o["dispatch"] if o["step_mix"] else None,
        **({"replicaSplit": o["replica_split"]} if o["replica_split"] != "even" else {}),
        "goodputSeeds": o["goodput_seeds"],
        "goodputResolution": o["goodput_resolution"],
        "drift": [{"at_s": d.at_s, "gpu": d.gpu, "factor": d.factor} for d in drift],
        "replaceAfterS": o["replace_after_s"] if drift else None,
        "replaceCost": o["replace_cost"] if drift else None,
    }


class _Progress:
    """One status line on stderr for long runs (rewritten on a terminal, every 10 s otherwise)."""

    def __init__(self, runs: int) -> None:
        self.runs = runs
        self.seen: set[tuple[str, float]] = set()
        self.tty = sys.stderr.isatty()
        self.last = time.monotonic()
        self.start = self.last
        self.shown = False

    def __call__(self, policy: str, rate: float, done: int, total: int, t: float) -> None:
        self.seen.add((policy, rate))
        now = time.monotonic()
        if now - self.start < 2.0 or (not self.tty and now - self.last < 10.0):
            return
        self.last = now
        line = (
            f"run {len(self.seen)}/{self.runs}: {policy} at {rate:g} req/s, "
            f"{done}/{total} requests done, {t:.0f} s simulated"
        )
        sys.stderr.write(("\r" + line.ljust(100)) if self.tty else line + "\n")
        sys.stderr.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown and self.tty:
            sys.stderr.write("\n")


def print_tables(doc: dict[str, Any]) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    console.width = max(console.width, 110)
    rates = sorted({r["rate"] for r in doc["runs"]})
    for rate in rates:
        t = Table(title=f"{rate:g} requests/s", title_justify="left", box=box.SIMPLE_HEAD)
        for col in ("policy", "TTFT p50", "p90", "p99", "TPOT p50", "p90", "tokens/s", "SLO attainment"):
            t.add_column(col, justify="left" if col == "policy" else "right", no_wrap=True)
        for r in doc["runs"]:
            if r["rate"] != rate:
                continue
            t.add_row(
                r["policy"],
                f"{r['ttft_p50_s'] * 1e3:.0f} ms",
                f"{r['ttft_p90_s'] * 1e3:.0f} ms",
                f"{r['ttft_p99_s'] * 1e3:.0f} ms",
                f"{r['tpot_p50_s'] * 1e3:.1f} ms",
                f"{r['tpot_p90_s'] * 1e3:.1f} ms",
                f"{r['throughput_tokens_s']:.0f}",
                f"{r['slo_attainment'] * 100:.1f}%",
            )
        console.print(t)
    slo = doc["slo"]
    within = (
        f">= {slo['goodput_attainment'] * 100:.0f}% of requests within TTFT {slo['ttft_s'] * 1e3:g} ms and "
        f"TPOT {slo['tpot_s'] * 1e3:g} ms"
    )
    search = doc.get("goodput_search")
    if search:
        first = next(iter(search.values()))
        console.print(
            f"goodput (highest rate with {within}; bisection to {first['resolution'] * 100:g}%, mean and 95% "
            f"interval over {len(first['seeds'])} seeds, attainment at it):",
            soft_wrap=True,
        )
        for p, g in search.items():
            att = g["attainment_at_goodput"]
            console.print(
                f"  {p}: {g['mean']:.3g} req/s [{g['low']:.3g}, {g['high']:.3g}]"
                + ("+ (no failing rate found)" if g["lower_bound_only"] else "")
                + (f", attainment {att * 100:.1f}%" if att is not None else ""),
                soft_wrap=True,
            )
    else:
        good = ", ".join(
            f"{p} {v:g} req/s" if v is not None else f"{p} none" for p, v in doc["goodput"].items()
        )
        console.print(f"goodput on the --rates grid (highest rate with {within}): {good}", soft_wrap=True)
    for policy, info in doc["placements"].items():
        for group, g in info.items():
            r = g.get("replace")
            if r:
                pay = f"{r['payback_s']:.0f} s" if r["payback_s"] is not None else "never"
                console.print(
                    f"{policy} ({group}): re-placed at {r['at_s']:g} s moving {r['moved_experts']} experts, "
                    f"paused {r['pause_s']:.2f} s ({r['cost']}); mean step {r['step_before_s'] * 1e3:.1f} -> "
                    f"{r['step_after_s'] * 1e3:.1f} ms ({r['gain'] * 100:+.1f}%): pays back after {pay} "
                    "of drift",
                    soft_wrap=True,
                )
