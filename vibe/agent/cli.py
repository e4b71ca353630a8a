"""``vibe agent ...``: run the per-node GPU agent, benchmark GPUs by hand, read telemetry.

Role: the entry point of the agent's DaemonSet (``vibe agent run --node=$(NODE_NAME) ...``), of the
simulated fleets of the demo and the tests (``vibe agent run --simulate fleet.yaml``), and of a person at
a GPU node (``vibe agent bench``, ``vibe agent telemetry``). torch, NVML and the Kubernetes client are
imported inside the commands, so ``vibe --help`` stays fast and ``vibe agent bench`` runs on a machine
with torch but no Kubernetes client.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from vibe.clikit import (
    ContextOpt,
    KubeconfigOpt,
    LogFormat,
    LogFormatOpt,
    VerboseOpt,
    fail,
    setup_logging,
)

if TYPE_CHECKING:  # torch-free names only: the commands import what they run
    from vibe.agent.bench import BenchResult
    from vibe.agent.node import AgentConfig, NodeAgent
    from vibe.agent.shapes import ExpertShape

COMMAND = "vibe agent"

app = typer.Typer(
    help="The per-node GPU agent: benchmark, telemetry, drift, GPUProfile.",
    no_args_is_help=True,
    rich_markup_mode=None,  # help texts show [layers][experts] shapes literally
)

ShapeOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--shape",
        "-s",
        metavar="[NAME=]HxI[:DTYPE]",
        help="Extra expert shape [name=]HIDDENxINTERMEDIATE[:bf16|fp16|fp8|all] (repeatable; default all).",
    ),
]
NoDefaultsOpt = Annotated[
    bool,
    typer.Option(
        "--no-default-shapes", help="Only the --shape shapes (defaults: DeepSeek-V3, Qwen3-235B, Mixtral)."
    ),
]


def parse_device(text: str) -> str:
    """``--device``: ``cuda``, ``cuda:N`` or ``cpu`` (what ``torch.device`` takes for a benchmark)."""
    if not re.fullmatch(r"cpu|cuda(:[0-9]+)?", text.strip()):
        raise typer.BadParameter(f"{text!r} is not cuda:N or cpu")
    return text.strip()


def _shapes(shape: list[str] | None, no_defaults: bool) -> list[ExpertShape]:
    from vibe.agent.shapes import dedupe, default_shapes, parse_shape

    try:
        extra = [s for text in shape or () for s in parse_shape(text)]
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--shape") from None
    shapes = dedupe([*([] if no_defaults else default_shapes()), *extra])
    if not shapes:
        raise typer.BadParameter("no shapes to benchmark", param_hint="--shape")
    return shapes


def _logging(verbose: bool, log_format: LogFormat = LogFormat.text) -> None:
    setup_logging(verbose, log_format)


# -- run -----------------------------------------------------------------------------------------------


@app.command()
def run(
    node: Annotated[
        str | None, typer.Option(help="This node's name (default: $NODE_NAME, else the host name).")
    ] = None,
    namespace: Annotated[
        str, typer.Option("--namespace", "-n", help="Namespace of the GPUProfiles.")
    ] = "vibe-system",
    simulate: Annotated[
        Path | None,
        typer.Option(
            dir_okay=False,
            metavar="FLEET.yaml",
            help="Simulate the GPUs of a fleet file (YAML/JSON; every node in it, or only --node).",
        ),
    ] = None,
    metrics_port: Annotated[
        int, typer.Option(help="Prometheus /metrics port (0: off; not 9400, dcgm-exporter's).")
    ] = 9435,
    metrics_addr: Annotated[str, typer.Option(help="Address the metrics server binds.")] = "0.0.0.0",
    curve_metrics: Annotated[
        bool,
        typer.Option(
            help="Export vibe_gpu_expert_ffn_seconds (+14 series per GPU and shape: 84 by default)."
        ),
    ] = False,
    telemetry_metrics: Annotated[
        bool,
        typer.Option(
            help="Also export SM/memory clock, temperature, power and utilisation: dcgm-exporter's"
            " default counters have them (+5 series per GPU)."
        ),
    ] = False,
    heartbeat_seconds: Annotated[int, typer.Option(help="GPUProfile status heartbeat period.")] = 30,
    poll_seconds: Annotated[float, typer.Option(help="Telemetry poll and drift check period.")] = 1.0,
    shape: ShapeOpt = None,
    no_default_shapes: NoDefaultsOpt = False,
    follow_deployments: Annotated[
        bool, typer.Option(help="Also benchmark the expert shapes of the cluster's MoEDeployments.")
    ] = True,
    canary_seconds: Annotated[
        float,
        typer.Option(help="Run a short canary on busy GPUs this often (0: never; it costs serving time)."),
    ] = 0.0,
    reprofile_hours: Annotated[
        float, typer.Option(help="Re-benchmark an idle, stable GPU this often (0: never).")
    ] = 0.0,
    max_profile_age_hours: Annotated[
        float, typer.Option(help="On restart, reuse a published profile younger than this.")
    ] = 168.0,
    force_bench: Annotated[
        bool, typer.Option(help="Benchmark even while other processes use a GPU (disturbs serving!).")
    ] = False,
    pod_resources_socket: Annotated[
        str,
        typer.Option(
            help="The kubelet's pod-resources socket: publish each pod's GPUs (empty: off; needs the "
            "podresources extra)."
        ),
    ] = "",
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out-dir",
            file_okay=False,
            help="Write profiles and events under this directory instead of the cluster.",
        ),
    ] = None,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
    qps: Annotated[
        float, typer.Option(help="API requests per second, at most (all simulated nodes together).")
    ] = 20.0,
    burst: Annotated[int, typer.Option(help="API request burst.")] = 40,
    duration: Annotated[
        float | None, typer.Option(help="Stop after this many seconds (tests, demos).")
    ] = None,
    once: Annotated[bool, typer.Option(help="One step: benchmark/resume, publish, exit.")] = False,
    seed: Annotated[int | None, typer.Option(help="Override the fleet file's seed (simulation).")] = None,
    verbose: VerboseOpt = False,
    log_format: LogFormatOpt = LogFormat.text,
) -> None:
    """Run the agent: benchmark GPUs when free, watch telemetry, publish GPUProfiles, export metrics."""
    _logging(verbose, log_format)
    from vibe.agent import wiring
    from vibe.agent.drift import DriftConfig
    from vibe.agent.node import AgentConfig
    from vibe.agent.runner import RunnerConfig
    from vibe.kubeclient import CredentialsError

    shapes = _shapes(shape, no_default_shapes)
    cfg = AgentConfig(
        namespace=namespace,
        heartbeat_seconds=heartbeat_seconds,
        shapes=shapes,
        drift=DriftConfig(),
        canary_seconds=canary_seconds,
        reprofile_seconds=reprofile_hours * 3600,
        max_profile_age_s=max_profile_age_hours * 3600,
        force_bench=force_bench,
    )
    agents = _agents(cfg, simulate, node, seed)
    try:
        publisher = wiring.publisher(out_dir, kubeconfig, context, qps=qps, burst=burst)
    except CredentialsError as e:
        fail("NoCredentials", f"{e} (or --out-dir DIR to write profiles to files)", command=COMMAND)
    wiring.run(
        agents,
        publisher,
        RunnerConfig(
            poll_seconds=poll_seconds,
            heartbeat_seconds=heartbeat_seconds,
            shapes_seconds=300.0 if follow_deployments else 0.0,
        ),
        shapes,
        metrics=wiring.Metrics(metrics_port, metrics_addr, curve_metrics, telemetry_metrics),
        pod_resources_socket=pod_resources_socket if simulate is None else "",
        once=once,
        duration=duration,
    )


def _agents(cfg: AgentConfig, simulate: Path | None, node: str | None, seed: int | None) -> list[NodeAgent]:
    """The node agents: one per simulated node of the ``--simulate`` fleet file (``--node``: only that
    one), else this node's (``--node``, ``NODE_NAME`` or the host name) on its GPUs."""
    from vibe.agent import wiring

    if simulate is None:
        return wiring.on_gpus(node or os.environ.get("NODE_NAME") or socket.gethostname(), cfg)
    from vibe.agent.simulate import SimulationError

    try:
        return wiring.simulated(simulate, cfg, node=node, seed=seed)
    except (OSError, SimulationError) as e:
        raise typer.BadParameter(str(e), param_hint="--simulate") from None


# -- bench -----------------------------------------------------------------------------------------------


@app.command()
def bench(
    device: Annotated[
        list[str] | None,
        typer.Option(
            "--device",
            "-d",
            parser=parse_device,
            metavar="cuda:N|cpu",
            help="Device to benchmark (repeatable; default: every GPU, else the CPU).",
        ),
    ] = None,
    shape: ShapeOpt = None,
    no_default_shapes: NoDefaultsOpt = False,
    tokens: Annotated[
        str | None, typer.Option(help="Token counts, comma-separated (default 1,2,4..8192).")
    ] = None,
    repeats: Annotated[int, typer.Option(help="Timed calls per point (the median is kept; >= 20).")] = 25,
    preheat_max: Annotated[float, typer.Option(help="Longest pre-heat, seconds.")] = 10.0,
    window_mode: Annotated[
        Literal["chunks", "loop"],
        typer.Option(help="How a point checks for a co-tenant: a serving loop, or back-to-back calls."),
    ] = "loop",
    repeat_profiles: Annotated[
        int, typer.Option(help="Profile each device this many times (run-to-run spread).")
    ] = 1,
    canaries: Annotated[
        int, typer.Option(help="Then time this many canaries of the first shape (their cost).")
    ] = 0,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", dir_okay=False, metavar="OUT.json", help="Write the full results (JSON) here."
        ),
    ] = None,
    profile_out: Annotated[
        Path | None,
        typer.Option(
            dir_okay=False,
            metavar="PROFILE.json",
            help="Write the GPUProfile this node would publish (JSON) here.",
        ),
    ] = None,
    node: Annotated[str | None, typer.Option(help="Node name in the written GPUProfile.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or table.")] = False,
) -> None:
    """Benchmark the expert FFN on this machine's GPUs (or CPU) now, with progress; print the curves.

    Unlike ``vibe agent run`` this does not wait for a GPU to be free: running it is asking for it.
    It warns when other processes hold a GPU (their work and this benchmark slow each other).
    """
    from rich.console import Console

    from vibe.agent.bench import TOKEN_GRID, BenchConfig
    from vibe.agent.telemetry import NvmlTelemetry, own_pids

    console = Console(stderr=True, quiet=quiet, width=None if sys.stderr.isatty() else 140)
    shapes = _shapes(shape, no_default_shapes)
    try:
        import torch
    except ImportError:
        fail(
            "MissingDependency",
            "torch is not installed: pip install 'vibe-operator[bench]' (or use the agent image)",
            command=COMMAND,
        )
    try:
        grid = tuple(int(t) for t in tokens.split(",")) if tokens else None
        cfg = BenchConfig(
            repeats=repeats, preheat_max_s=preheat_max, tokens=grid or TOKEN_GRID, window_mode=window_mode
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    devices = device or (
        [f"cuda:{k}" for k in range(torch.cuda.device_count())] if torch.cuda.is_available() else ["cpu"]
    )
    telemetry = NvmlTelemetry.open()
    results: dict[str, Any] = {"started": time.time(), "torch": torch.__version__, "devices": {}}
    last: dict[str, Any] = {}
    for dev in devices:
        runs = []
        for r in range(repeat_profiles):
            res = _bench_one(console, dev, shapes, cfg, telemetry, r, repeat_profiles, own_pids())
            runs.append(res)
            if not quiet:
                _print_result(console, res)
        last[dev] = runs[-1]
        entry: dict[str, Any] = {"profiles": [x.as_dict() for x in runs]}
        if canaries:
            entry["canaries"] = _time_canaries(console, shapes, dev, telemetry, canaries)
        results["devices"][dev] = entry
    if telemetry.available:
        results["telemetry"] = {
            "gpus": [g.__dict__ for g in telemetry.gpus()],
            "problems": telemetry.problems,
        }
    elif telemetry.error:
        results["telemetry"] = {"error": telemetry.error}
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=1, default=str))
        console.print(f"results: {output}")
    if profile_out is not None:
        _write_profile(profile_out, node, last, telemetry)
        console.print(f"profile: {profile_out}")


def _time_canaries(
    console: Any, shapes: list[ExpertShape], dev: str, telemetry: Any, count: int
) -> list[dict[str, Any]]:
    """Time ``count`` canaries of the first bf16 shape (else the first shape) on ``dev``; print their cost."""
    from vibe.agent.bench import canary

    first = next((s for s in shapes if s.dtype == "bf16"), shapes[0])
    cs = [canary(first, device=dev, telemetry=telemetry) for _ in range(count)]
    console.print(
        f"canary {first.label} x{count}: wall {min(c.wall_s for c in cs) * 1e3:.0f}-"
        f"{max(c.wall_s for c in cs) * 1e3:.0f} ms, device time {cs[-1].gpu_s * 1e3:.2f} ms"
    )
    return [
        {
            "shape": first.label,
            "tokens": c.tokens,
            "seconds": c.seconds,
            "wallS": c.wall_s,
            "gpuS": c.gpu_s,
        }
        for c in cs
    ]


def _bench_one(
    console: Any,
    dev: str,
    shapes: list[ExpertShape],
    cfg: Any,
    telemetry: Any,
    r: int,
    n: int,
    own: frozenset[int],
) -> BenchResult:
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from vibe.agent.bench import nvml_index_for, profile_device

    d = torch.device(dev)
    idx = nvml_index_for(torch, d, telemetry)
    if idx is not None:
        s = telemetry.sample(idx)
        others = s.other_processes(own)
        if others:
            console.print(
                f"[yellow]warning: {others} other process(es) use {dev}; timings will be disturbed[/]"
            )
    total = len(shapes) * len(cfg.tokens)
    label = f"{dev}" + (f" (profile {r + 1}/{n})" if n > 1 else "")
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as prog:
        task = prog.add_task(f"{label}: pre-heat", total=total)

        def progress(event: str, info: dict[str, Any]) -> None:
            if event == "preheat":
                mhz = info.get("clock_mhz")
                prog.update(
                    task,
                    description=f"{label}: pre-heat {info['elapsed']:.1f}s" + (f" {mhz} MHz" if mhz else ""),
                )
            elif event == "shape":
                prog.update(task, description=f"{label}: {info['shape'].label} ({info['experts']} experts)")
            elif event == "point":
                prog.advance(task)
            elif event == "skip":
                prog.advance(task, info["points"])

        return profile_device(shapes, device=dev, cfg=cfg, telemetry=telemetry, progress=progress)


def _print_result(console: Any, res: Any) -> None:
    from rich.table import Table

    pre = res.preheat
    console.print(
        f"[bold]{res.device}[/] {res.device_name}: full profile in {res.duration_s:.1f} s"
        + (
            f" (pre-heat {pre['seconds']:.1f} s, settled={pre['settled']}, {pre.get('clockMHz')} MHz)"
            if pre
            else ""
        )
        + (f", SM clock {res.sm_clock_hz / 1e6:.0f} MHz" if res.sm_clock_hz else "")
    )
    for note in res.notes:
        console.print(f"  note: {note}")
    shown = [c for c in res.curves if c.points]
    for c in res.curves:
        if c.skipped:
            console.print(f"  {c.shape.label}: skipped ({c.skipped})")
    if not shown:
        return
    table = Table(
        "tokens",
        *[c.shape.label.replace("/", "\n", 1) for c in shown],
        title="µs per expert call (median; window time where shared)",
    )
    for k, n in enumerate(shown[0].tokens):
        table.add_row(
            str(n), *[f"{c.points[k].seconds * 1e6:.1f}" if k < len(c.points) else "" for c in shown]
        )
    table.add_row("max cv", *[f"{max(p.cv for p in c.points):.3f}" for c in shown])
    table.add_row("retries", *[str(sum(p.retries for p in c.points)) for c in shown])
    table.add_row("shared", *[str(sum(p.shared for p in c.points)) for c in shown])
    console.print(table)


def _write_profile(path: Path, node: str | None, last: dict[str, Any], telemetry: Any) -> None:
    """The GPUProfile these results would make (one GPU per benchmarked device)."""
    from vibe import __version__
    from vibe.agent.profile import GPURecord, build_profile, relative_speed
    from vibe.agent.profiler import outcome_from_bench
    from vibe.agent.telemetry import GPUInfo

    infos = {g.index: g for g in telemetry.gpus()} if telemetry.available else {}
    records = []
    for k, (dev, res) in enumerate(last.items()):
        info = infos.get(res.nvml_index) or GPUInfo(index=k, uuid=dev, product=res.device_name)
        out = outcome_from_bench(res, None)
        rec = GPURecord(info=info, curves=out.curves, benchmark_time=res.started, baseline=out.baseline)
        rec.base_speed = relative_speed(rec.curves) if rec.curves else None
        records.append(rec)
    body = build_profile(node or socket.gethostname(), "vibe-system", records, agent_version=__version__)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body, indent=1))


# -- telemetry -------------------------------------------------------------------------------------------


@app.command()
def telemetry(
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False,
    watch: Annotated[float, typer.Option(help="Repeat every this many seconds (0: once).")] = 0.0,
) -> None:
    """Read NVML once (or repeatedly): identity, clocks, power, reasons, violations, ECC, MIG."""
    from rich.console import Console
    from rich.table import Table

    from vibe.agent.telemetry import NvmlTelemetry

    console = Console()
    tel = NvmlTelemetry.open()
    if not tel.available:
        fail("NoTelemetry", f"no GPU telemetry: {tel.error}", command=COMMAND)
    gpus = tel.gpus()
    while True:
        rows = []
        for g in gpus:
            s = tel.sample(g.index)
            rows.append((g, s))
        if as_json:
            print(json.dumps([{"gpu": g.__dict__, "sample": s.as_dict()} for g, s in rows], default=str))
        else:
            t = Table(
                "GPU",
                "product",
                "SM MHz",
                "mem MHz",
                "W / limit",
                "°C",
                "reasons",
                "power/thermal viol. s",
                "procs",
            )
            for g, s in rows:
                t.add_row(
                    f"{g.index} {g.uuid[:12]}",
                    g.product,
                    _mhz(s.sm_clock_hz) + f" / {_mhz(g.max_sm_clock_hz)}",
                    _mhz(s.mem_clock_hz),
                    f"{_num(s.power_w)} / {_num(s.power_limit_w)}",
                    _num(s.temperature_c),
                    ",".join(s.reasons) or "-",
                    f"{_num(s.power_violation_s)} / {_num(s.thermal_violation_s)}",
                    "?" if s.compute_processes is None else str(s.compute_processes),
                )
            console.print(t)
            for p in tel.problems:
                console.print(f"[yellow]{p}[/]")
        if watch <= 0:
            break
        time.sleep(watch)


def _mhz(v: int | None) -> str:
    return "?" if v is None else f"{v // 1_000_000}"


def _num(v: float | None) -> str:
    return "?" if v is None else f"{v:.1f}"
