"""``vibe plan``: compute a placement from files, write it, and show how the policies compare.

Role: the offline face of the placement library (what the operator does on every reconcile, done by
hand): read loads and a fleet, solve, write one of the output formats (``vibe.engines.ENGINES``: the
same names as the MoEDeployment's ``spec.output.formats``), print a short table.

``vibe --help`` never imports this module (the root registers it lazily); rich is imported only to print
the table. Every bad input ends as one ``vibe plan: <Reason>: <message>`` line on stderr and exit status
1, a bad flag as Click's usage error and exit status 2, never a traceback (``vibe.clikit``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from vibe.clikit import failures
from vibe.engines import ENGINES, FormatOrAlias
from vibe.placement import DEFAULT_SAMPLES, DispatchName, PolicyName, ReplicaSplit

if TYPE_CHECKING:
    import numpy as np

    from vibe.engines import Engine
    from vibe.placement import Fleet, Placement, Result, Routing


COMMAND = "vibe plan"


def plan(
    loads: Annotated[
        Path,
        typer.Option(
            "--loads",
            "-l",
            dir_okay=False,
            metavar="LOADS.json",
            help="Expert loads: {'loads': [[...]]} as [layers][experts] tokens per expert per forward step, "
            "or SGLang's recorder output {'logical_count': ...} ([layers][experts], or "
            "[steps][layers][experts] averaged over steps).",
        ),
    ],
    fleet: Annotated[
        Path,
        typer.Option(
            "--fleet",
            "-f",
            dir_okay=False,
            metavar="FLEET.json",
            help="The expert-parallel GPUs in rank order: {'gpus': [{'id', 'node', 'tokens': [...], "
            "'seconds': [...]}]} (seconds for ONE expert over n tokens), or per GPU a 'roofline' "
            "{floorSeconds, secondsPerToken} or 'reference' {hiddenSize, intermediateSize, dtype}, "
            "with an optional 'timeScale' slowdown.",
        ),
    ],
    slots_per_gpu: Annotated[
        int,
        typer.Option(
            "--slots-per-gpu", "-s", help="Physical expert slots per GPU per layer; slots x GPUs >= experts."
        ),
    ],
    policy: Annotated[
        PolicyName,
        typer.Option(
            "--policy",
            "-p",
            help="vibe (fastest predicted step: hardware-aware replication, binning and local search), "
            "token-balanced (DeepSeek EPLB-style, balances tokens), round-robin, linear (engine defaults), "
            "or exact (OR-Tools CP-SAT per layer, small instances only).",
        ),
    ] = "vibe",
    fmt: Annotated[
        FormatOrAlias,
        typer.Option(
            "--format",
            "-F",
            help="Output, as spec.output.formats names it: "
            + ", ".join(f"{e.name} ({e.key})" for e in ENGINES.values())
            + ". 'placement' is the old spelling of 'vibe' (deprecated).",
        ),
    ] = "vibe",
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            dir_okay=False,
            metavar="OUT.json",
            help="Write the placement file here; without it the file goes to stdout and the table to stderr.",
        ),
    ] = None,
    current: Annotated[
        Path | None,
        typer.Option(
            "--current",
            "-c",
            dir_okay=False,
            metavar="PLACEMENT.json",
            help="The placement in service (any format): re-place incrementally, moving "
            "few experts, and report the moves.",
        ),
    ] = None,
    max_moves: Annotated[
        int | None, typer.Option("--max-moves", help="With --current: change at most this many slots.")
    ] = None,
    tokens_per_step: Annotated[
        float | None,
        typer.Option(
            "--tokens-per-step",
            help="Treat the loads as relative frequencies and rescale each layer to this many tokens per "
            "forward step (times --top-k).",
        ),
    ] = None,
    top_k: Annotated[
        int | None,
        typer.Option(
            "--top-k", help="Experts each token is routed to (for --tokens-per-step and --step-mix)."
        ),
    ] = None,
    step_mix: Annotated[
        str | None,
        typer.Option(
            "--step-mix",
            metavar="TOKENS[:WEIGHT],...",
            help="The kinds of steps the deployment runs, e.g. 64:0.7,2048:0.3 (tokens one MoE layer routes "
            "per step before top-k : fraction of steps). Optimise the EXPECTED step time under sampled "
            "routing (an expert that gets no tokens in a step costs nothing) instead of the mean-load time; "
            "needs --top-k (or the loads file's top_k).",
        ),
    ] = None,
    samples: Annotated[
        int,
        typer.Option("--samples", help="With --step-mix: sampled routings per kind of step (seeded)."),
    ] = DEFAULT_SAMPLES,
    dispatch: Annotated[
        DispatchName,
        typer.Option(
            "--dispatch",
            help="With --step-mix: how the engine splits an expert's tokens over its replicas: round-robin "
            "(TensorRT-LLM, vLLM), even (fractional, DeepSeek EPLB's model) or sglang-static.",
        ),
    ] = "round-robin",
    replica_split: Annotated[
        ReplicaSplit,
        typer.Option(
            "--replica-split",
            help="How an expert's tokens split over its replicas: even (what every engine does) or weighted "
            "(per-slot shares the planner chooses, so a replica on a fast GPU serves more; only format vibe "
            "carries them, for vibe's own dispatch: other formats refuse it).",
        ),
    ] = "even",
    time_budget: Annotated[
        float,
        typer.Option(
            "--time-budget",
            help="Search budget in seconds (a deterministic work budget: same inputs, same bytes).",
        ),
    ] = 1.0,
    compare: Annotated[
        bool,
        typer.Option(
            "--compare/--no-compare", help="Also solve with the other policies and show them side by side."
        ),
    ] = True,
) -> None:
    """Compute an expert placement from measured GPU speeds and expert loads.

    Predicted times use the cost model: a GPU's layer time is the sum over its slots of its own curve
    t_g(tokens / replicas); a layer waits for its slowest GPU; a step is the sum of its layers. The
    table shows, per policy, the step time, the imbalance (max / mean GPU time, averaged over layers),
    the provable lower bound and the gap to it, the solve time and (with --current) the slots moved.
    """
    from vibe.engines import EngineError
    from vibe.placement import PlacementError

    with failures(COMMAND, PlacementError, EngineError):
        _plan(
            str(loads),
            str(fleet),
            slots_per_gpu,
            policy,
            fmt,
            None if output is None else str(output),
            None if current is None else str(current),
            max_moves,
            tokens_per_step,
            top_k,
            time_budget,
            compare,
            step_mix,
            samples,
            dispatch,
            replica_split,
        )


def _plan(
    loads_path: str,
    fleet_path: str,
    slots_per_gpu: int,
    policy: str,
    fmt: str,
    output: str | None,
    current_path: str | None,
    max_moves: int | None,
    tokens_per_step: float | None,
    top_k: int | None,
    time_budget: float,
    compare: bool,
    step_mix: str | None = None,
    samples: int = 16,
    dispatch: str = "round-robin",
    replica_split: str = "even",
) -> None:
    from vibe.engines import check_replica_split
    from vibe.placement import load_json, read_fleet, read_loads, routing_from_flags

    engine = _checked_flags(policy, fmt, slots_per_gpu, time_budget, max_moves, current_path)
    check_replica_split(replica_split, [engine.name])

    loads_doc = load_json(loads_path, "loads")
    load_arr = read_loads(loads_doc, tokens_per_step=tokens_per_step, top_k=top_k)
    gpus = read_fleet(load_json(fleet_path, "fleet"))
    routing = routing_from_flags(
        load_arr,
        step_mix,
        top_k,
        samples=samples,
        dispatch=dispatch,
        loads_doc=loads_doc,
        tokens_per_step=tokens_per_step,
    )
    current = None
    if current_path is not None:
        current = _read_current(current_path, slots_per_gpu, load_arr.shape[1])

    results, chosen = _results(
        load_arr,
        gpus,
        slots_per_gpu,
        policy,
        routing,
        current,
        max_moves,
        time_budget,
        compare,
        replica_split,
    )
    baseline = results.get("token-balanced")
    if baseline is chosen:
        baseline = None
    _write(engine.write(chosen, gpus, baseline), output)
    _table(
        results, chosen, load_arr.shape, len(gpus), slots_per_gpu, to_stderr=output is None, written=output
    )


def _checked_flags(
    policy: str,
    fmt: str,
    slots_per_gpu: int,
    time_budget: float,
    max_moves: int | None,
    current_path: str | None,
) -> Engine:
    """The engine record of ``--format``, once the flags that need no file are checked."""
    from vibe.engines import ALIASES, get
    from vibe.placement import POLICIES, PlacementError

    if policy not in POLICIES:
        names = ", ".join(POLICIES)
        raise PlacementError("UnknownPolicy", f"unknown policy {policy!r} (one of {names})")
    if fmt not in ENGINES and fmt not in ALIASES:
        raise PlacementError("UnknownFormat", f"unknown format {fmt!r} (one of {', '.join(ENGINES)})")
    engine = get(fmt)
    if fmt in ALIASES:
        print(f"vibe plan: --format {fmt} is deprecated: it is called {engine.name} now", file=sys.stderr)
    if slots_per_gpu < 1:
        raise PlacementError("InfeasibleSlots", f"--slots-per-gpu must be at least 1, not {slots_per_gpu}")
    if not (time_budget > 0):
        raise PlacementError("InvalidBudget", f"--time-budget must be positive, not {time_budget:g}")
    if max_moves is not None and current_path is None:
        raise PlacementError("InvalidPlacement", "--max-moves needs --current")
    return engine


def _results(
    load_arr: np.ndarray,
    gpus: Fleet,
    slots_per_gpu: int,
    policy: str,
    routing: Routing | None,
    current: Placement | None,
    max_moves: int | None,
    time_budget: float,
    compare: bool,
    replica_split: str = "even",
) -> tuple[dict[str, Result], Result]:
    """Every row of the table, and the one written: the incremental re-placement of ``current`` (with the
    placement in service priced beside it), else ``policy``'s solve; with ``compare``, each policy too
    (every row with ``replica_split``; the incremental one gets its weights after its search)."""
    import time

    from vibe.placement import COMPARED, make_result, replace_incremental, solve

    results = {}
    if current is not None:
        # incremental re-placement chooses by the objective every row is priced by (with --step-mix: the
        # expected step time on the sampled steps), then gets its replica split's weights
        incremental = replace_incremental(
            current,
            load_arr,
            gpus,
            max_moves=max_moves,
            time_budget_s=time_budget,
            routing=routing,
            replica_split=replica_split,
        )
        results["current"] = make_result(
            "current", current, load_arr, gpus, time.perf_counter(), current=current, routing=routing
        )
        results["incremental"] = incremental
        chosen = results["incremental"]
        if compare:
            for p in COMPARED:
                results[p] = solve(
                    load_arr,
                    gpus,
                    slots_per_gpu,
                    p,
                    time_budget_s=time_budget,
                    current=current,
                    routing=routing,
                    replica_split=replica_split,
                )
    else:
        chosen = solve(
            load_arr,
            gpus,
            slots_per_gpu,
            policy,
            time_budget_s=time_budget,
            routing=routing,
            replica_split=replica_split,
        )
        if compare:
            for p in COMPARED:
                results[p] = (
                    chosen
                    if p == policy
                    else solve(
                        load_arr,
                        gpus,
                        slots_per_gpu,
                        p,
                        time_budget_s=time_budget,
                        routing=routing,
                        replica_split=replica_split,
                    )
                )
        results[policy] = chosen
    return results, chosen


def _write(data: bytes, output: str | None) -> None:
    """The placement file to ``output``, or to stdout."""
    from vibe.placement import PlacementError

    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        try:
            Path(output).write_bytes(data)
        except OSError as e:
            raise PlacementError("UnreadableFile", f"cannot write {output!r}: {e.strerror or e}") from None


def _read_current(path: str, slots_per_gpu: int, num_experts: int) -> Placement:
    """The placement in service from a file of any format: JSON ones, else TensorRT-LLM's YAML."""
    from vibe.engines import ENGINES
    from vibe.placement import PlacementError, load_json, read_placement

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PlacementError("UnreadableFile", f"cannot read current placement file {path!r}: {e}") from None
    if text.lstrip().startswith("{"):
        return read_placement(
            load_json(path, "current placement"), slots_per_gpu=slots_per_gpu, num_experts=num_experts
        )
    engine = ENGINES["trtllm"]
    try:
        doc = engine.parse(text)
    except ValueError as e:
        raise PlacementError("UnreadableFile", f"current placement file {path!r}: {e}") from None
    return engine.read(doc, slots_per_gpu=slots_per_gpu, num_experts=num_experts)


def _table(
    results: dict[str, Result],
    chosen: Result,
    shape: tuple[int, int],
    num_gpus: int,
    slots: int,
    *,
    to_stderr: bool,
    written: str | None,
) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=to_stderr, highlight=False)
    expected = "objective" in chosen.info  # priced by the expected objective (--step-mix)
    # redirected output defaults to 80 columns: too narrow (and the expected objective adds a column)
    console.width = max(console.width, 120 if expected else 100)
    layers, experts = shape
    title = f"{layers} layers x {experts} experts on {num_gpus} GPUs x {slots} slots"
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    columns: tuple[tuple[str, Literal["left", "right"]], ...] = (
        ("policy", "left"),
        ("step ms", "right"),
        ("speedup", "right"),
        ("imbalance", "right"),
        ("bound ms", "right"),
        ("gap", "right"),
        ("solve s", "right"),
        ("moves", "right"),
    )
    if expected:
        columns = (*columns, ("mean-load ms", "right"))
    for col, just in columns:
        table.add_column(col, justify=just, no_wrap=True)
    ref = results.get("token-balanced")
    for name, r in results.items():
        speed = f"{ref.step_time_s / r.step_time_s:.3f}x" if ref is not None and r.step_time_s > 0 else "-"
        mark = " *" if r is chosen else ""
        cells = [
            f"{name}{mark}",
            f"{r.step_time_s * 1e3:.3f}",
            speed,
            f"{r.imbalance:.3f}",
            f"{r.lower_bound_s * 1e3:.3f}",
            f"{r.gap * 100:.2f}%",
            f"{r.solve_seconds:.2f}",
            str(r.moves),
        ]
        if expected:
            cells.append(f"{float(r.info.get('meanLoadStepTimeSeconds', 0.0)) * 1e3:.3f}")
        table.add_row(*cells)
    console.print(table)
    notes = ["* = written" + (f" to {written}" if written else "")]
    if not chosen.converged:
        notes.append(
            "note: the search used its whole work budget; a larger --time-budget may find a better placement"
        )
    notes.append("speedup = token-balanced step time / this step time")
    if chosen.info.get("replicaSplit") == "weighted":
        notes.append(
            "every row with the WEIGHTED replica split (per-slot shares chosen per placement; "
            "bound = one for any split)"
        )
    if expected:
        i = chosen.info
        mix = ", ".join(f"{m['tokens']} tokens x {m['weight']:g}" for m in i["stepMix"])
        notes.append(
            f"step ms = EXPECTED step time over the step mix ({mix}; {i['samplesPerKind']} sampled routings "
            f"per kind, top-{i['topK']}, {i['dispatch']} dispatch); "
            "bound = the sampled steps' own bounds averaged or the work bound on expected costs, the larger; "
            "mean-load ms = the mean-load model's time over the same mix"
        )
    console.print("; ".join(notes), soft_wrap=True)
