"""The torch benchmark on the CPU with a tiny shape: the same code path the GPU runs, minus the clocks.

Needs torch (the ``bench`` extra); skipped with a reason without it. On a GPU machine the ``gpu`` test
at the end runs the real thing on one shape.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fakes import ScriptedTelemetry

from vibe.agent.bench import BenchConfig

torch = pytest.importorskip("torch", reason="torch is not installed (pip install '.[bench]')")

from dataclasses import replace  # noqa: E402

from typer.testing import CliRunner  # noqa: E402

from vibe.agent.bench import (  # noqa: E402
    canary,
    contended_seconds,
    contention,
    fp8_supported,
    idle_iteration_s,
    layer_idle_s,
    loop_factor,
    profile_device,
    serving_loop,
)
from vibe.agent.cli import app  # noqa: E402
from vibe.agent.node import AgentConfig, NodeAgent  # noqa: E402
from vibe.agent.profiler import TorchProfiler, outcome_from_bench  # noqa: E402
from vibe.agent.shapes import ExpertShape  # noqa: E402

TINY = [ExpertShape(64, 32, "bf16", "tiny"), ExpertShape(64, 32, "fp8", "tiny")]
CFG = BenchConfig(tokens=(1, 4, 16), repeats=20, warmup=2, preheat_min_s=0.05)


def test_profile_on_cpu() -> None:
    seen: list[str] = []
    res = profile_device(TINY, device="cpu", cfg=CFG, progress=lambda ev, info: seen.append(ev))
    assert res.device == "cpu" and res.nvml_index is None
    assert seen[0] == "preheat" and seen[-1] == "done" and seen.count("point") + seen.count("skip") >= 3
    bf16 = res.curves[0]
    assert bf16.experts >= CFG.min_experts
    assert bf16.tokens == [1, 4, 16]
    assert all(p.seconds > 0 and p.min_s <= p.seconds <= p.max_s and p.retries == 0 for p in bf16.points)
    fp8 = res.curves[1]
    if not fp8_supported(torch, torch.device("cpu")):  # "" = supported, else why not
        assert fp8.tokens == [1, 4, 16] and not fp8.skipped
    else:
        assert fp8.skipped and any("fp8 skipped" in n for n in res.notes)
    out = outcome_from_bench(res, None)
    assert all(list(c.seconds) == sorted(c.seconds) for c in out.curves)  # isotonic
    json.dumps(res.as_dict())  # the results file is plain JSON
    # No contention window on the CPU (no GPU time slices): the median stands, nothing flagged shared.
    assert all(p.window_s is None and not p.shared and p.median_s == p.seconds for p in bf16.points)


def test_a_shared_gpu_reports_the_window_time() -> None:
    # A co-tenant makes the window's time per call exceed the median: that is the GPU's speed for
    # serving. Within the calls' own spread (5 %) the median stands.
    assert contended_seconds(40e-6, 160e-6, 0.05) == (160e-6, True)
    assert contended_seconds(40e-6, 41e-6, 0.05) == (40e-6, False)
    assert contended_seconds(40e-6, 30e-6, 0.05) == (40e-6, False)  # never faster than the median
    assert contended_seconds(40e-6, None, 0.05) == (40e-6, False)  # no window (CPU, canary)


G = 40e-6  # one expert call's GPU time (the point's median)


def _loop(
    factor: float, launch_s: float = 200e-6, iters: int = 40, per_sync: int = 8
) -> list[tuple[float, float, tuple[float, ...]]]:
    """Iterations of a serving loop that ran ``factor`` x their idle estimate (default config)."""
    cfg = BenchConfig()
    w = idle_iteration_s(launch_s, G, per_sync, cfg.loop_tail, cfg.loop_overhead_s)
    return [(w * factor, launch_s, ())] * iters


def test_the_idle_estimate_of_a_loop_iteration() -> None:
    # GPU-bound: 8 calls of 40 µs; the CPU launched them in 200 µs. CPU-bound: launches took 600 µs.
    assert idle_iteration_s(200e-6, G, 8, 0.4, 25e-6) == pytest.approx(8 * G + 25e-6)
    assert idle_iteration_s(600e-6, G, 8, 0.4, 25e-6) == pytest.approx(600e-6 + 0.4 * G + 25e-6)
    # On an idle GPU the loop runs at its estimate, a CPU-bound loop included: factor 1.
    cpu_bound = [(600e-6 + 0.4 * G + 25e-6, 600e-6, ())] * 10
    assert loop_factor(cpu_bound, G, 8, 0.4, 25e-6) == pytest.approx(1.0)
    # Against the calls' GPU time alone a CPU-bound loop would read x1.9 on an idle GPU.
    assert sum(w for w, _, _ in cpu_bound) / (10 * 8 * G) > 1.9
    # The CPU was slow to begin the second call (90 µs), then kept ahead: the GPU idled 50 µs waiting
    # for it, and ran the 7 remaining calls after: 90 + 7 x 40 µs, not 8 x 40 µs.
    starts = (90e-6, 100e-6, 110e-6, 120e-6, 130e-6, 140e-6, 150e-6)
    assert idle_iteration_s(160e-6, G, 8, 0.4, 25e-6, starts) == pytest.approx(90e-6 + 7 * G + 25e-6)


def test_a_co_tenant_is_reported_at_the_serving_loops_slowdown() -> None:
    cfg = BenchConfig()
    factor, parts, shared = contention([_loop(3.5)] * 4, G, 8, cfg)
    assert shared and factor == pytest.approx(3.5) and parts == [pytest.approx(3.5)] * 4
    # A 50 % duty neighbour slower than a part: slow and fast parts; the window's mean is what serving gets.
    factor, _, shared = contention([_loop(3.0), _loop(1.0), _loop(3.0), _loop(1.0)], G, 8, cfg)
    assert shared and factor == pytest.approx(2.0)


def test_idle_noise_and_one_hiccup_flag_nothing() -> None:
    cfg = BenchConfig()
    assert contention([_loop(1.05), _loop(0.97), _loop(1.1), _loop(1.0)], G, 8, cfg)[2] is False
    # One part with a 3x hiccup lifts the whole window to x1.5, but a single slow part never flags.
    factor, _, shared = contention([_loop(1.0), _loop(1.0), _loop(3.0), _loop(1.0)], G, 8, cfg)
    assert factor == pytest.approx(1.5) and shared is False
    # Faster than the estimate (a boosted clock) is never a co-tenant.
    assert contention([_loop(0.8)] * 4, G, 8, cfg)[2] is False
    assert contention([], G, 8, cfg)[2] is False


def test_a_time_sliced_graph_still_reads_the_co_tenant() -> None:
    """H100, 90 % GEMM neighbour, DeepSeek-V3 bf16 at 4096 tokens: the serving loop ran x1.95 while the
    layer's replays (5 ms each) were sliced to x1.8 and the calls' median stayed put. Pricing the idle
    layer at its sliced replays read x1.08 and flagged nothing; the calls' medians bound it."""
    graph_idle, calls = 4.6e-3, 5.1e-3  # a graph runs the calls without their gaps: 0.9 x
    sliced = 1.8 * graph_idle
    wall = 1.95 * graph_idle
    cfg = replace(BenchConfig(), loop_overhead_s=BenchConfig().loop_graph_overhead_s)
    iters = [(wall, 20e-6, ())] * 12
    factor, _, shared = contention([iters] * 4, layer_idle_s(sliced, calls), 1, cfg)
    assert shared and factor == pytest.approx(1.95 * 4.6 / 5.1)
    # Idle, the graph's own time is the estimate: its replays are faster than the calls.
    assert layer_idle_s(graph_idle, calls) == graph_idle
    quiet = [[(graph_idle, 20e-6, ())] * 12] * 4
    assert contention(quiet, layer_idle_s(graph_idle, calls), 1, cfg)[2] is False


def test_the_default_agent_runs_the_serving_loop() -> None:
    assert BenchConfig().window_mode == "loop" and BenchConfig().loop_graph


def test_the_serving_loop_syncs_after_every_layer() -> None:
    calls: list[int] = []
    syncs: list[int] = []
    iters = serving_loop(calls.append, 8, 0.0, 100, lambda: syncs.append(len(calls)))
    assert len(iters) == 3 and syncs == [8, 16, 24] and calls == list(range(24))
    assert all(wall >= launch >= 0 and len(starts) == 7 for wall, launch, starts in iters)
    assert all(list(starts) == sorted(starts) and starts[-1] <= launch for _w, launch, starts in iters)
    assert len(serving_loop(calls.append, 1, 10.0, 5, lambda: None)) == 5  # max_iters bounds a window


def test_the_ffn_is_swiglu() -> None:
    from vibe.agent.bench import ExpertBank

    bank = ExpertBank(
        torch, ExpertShape(64, 32, "bf16"), torch.device("cpu"), experts=2, max_tokens=8, seed=0
    )
    x = bank.inputs(8)
    y = bank(1, x)
    w13, w2 = bank.w13[1].float(), bank.w2[1].float()
    h = x.float() @ w13.t()
    ref = (torch.nn.functional.silu(h[:, :32]) * h[:, 32:]) @ w2.t()
    assert y.shape == (8, 64)
    assert torch.allclose(y.float(), ref, rtol=0.05, atol=0.05)
    assert not torch.equal(bank.w13[0], bank.w13[1])  # distinct experts, random (never zeros)
    assert bank.x.abs().sum() > 0


def test_canary_on_cpu() -> None:
    c = canary(TINY[0], device="cpu", tokens=(1, 8), repeats=5)
    assert len(c.seconds) == 2 and c.gpu_s > 0 and c.wall_s >= sum(c.seconds)


def test_node_agent_with_the_torch_profiler_on_cpu() -> None:
    """NodeAgent + TorchProfiler: the agent's real path, with a scripted GPU mapped to the CPU."""
    tel = ScriptedTelemetry(gpus=1)
    agent = NodeAgent(
        "cpu-node", tel, TorchProfiler(tel, CFG, devices={0: "cpu"}), AgentConfig(shapes=TINY[:1])
    )
    agent.step()
    body = agent.body()
    (gpu,) = body["spec"]["gpus"]
    assert body["spec"]["source"] == "measured"
    assert gpu["curves"][0]["hiddenSize"] == 64 and gpu["curves"][0]["tokens"] == [1, 4, 16]
    assert [e.reason for e in agent.events] == ["Benchmarked"]
    secs, cost = agent.profiler.canary(0, TINY[0], (1, 4))
    assert len(secs) == 2 and cost > 0


def test_bench_command_on_cpu(tmp_path: Path) -> None:
    out, prof = tmp_path / "r.json", tmp_path / "p.json"
    args = ["bench", "-d", "cpu", "--no-default-shapes", "-s", "tiny=64x32:bf16", "--tokens", "1,4"]
    args += [
        "--repeats",
        "20",
        "--canaries",
        "1",
        "--output",
        str(out),
        "--profile-out",
        str(prof),
        "--node",
        "n",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["devices"]["cpu"]["profiles"][0]["curves"][0]["points"][0]["tokens"] == 1
    assert data["devices"]["cpu"]["canaries"]
    body = json.loads(prof.read_text())
    assert body["kind"] == "GPUProfile" and body["spec"]["nodeName"] == "n"


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        BenchConfig(window_mode="both")
    with pytest.raises(ValueError):
        BenchConfig(loop_parts=0)
    with pytest.raises(ValueError):
        BenchConfig(tokens=(4, 2))
    with pytest.raises(ValueError):
        BenchConfig(repeats=0)


@pytest.mark.gpu
def test_one_shape_on_a_gpu() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from vibe.agent.telemetry import NvmlTelemetry

    res = profile_device(
        [ExpertShape(4096, 1536, "bf16")],
        device="cuda:0",
        cfg=BenchConfig(tokens=(1, 256, 2048)),
        telemetry=NvmlTelemetry.open(),
    )
    assert res.preheat["settled"] in (True, False) and all(p.cv < 0.2 for p in res.curves[0].points)


def test_fp8_falls_back_to_the_unfused_kernel_with_a_note_where_no_fused_one_runs() -> None:
    from vibe.agent.bench import KERNEL_BF16, KERNEL_FP8_UNFUSED, fused_fp8_supported

    cpu = torch.device("cpu")
    assert fused_fp8_supported(torch, cpu) == "no fused fp8 grouped GEMM on cpu"
    if fp8_supported(torch, cpu):
        pytest.skip("this torch has no fp8 GEMM on the CPU")
    res = profile_device(TINY, device="cpu", cfg=CFG)
    assert [c.kernel for c in res.curves] == [KERNEL_BF16, KERNEL_FP8_UNFUSED]
    assert any("fp8 measured unfused" in n and "on cpu" in n for n in res.notes)


@pytest.mark.gpu
def test_the_fused_fp8_expert_matches_bf16_on_a_gpu() -> None:
    """The grouped fp8 path computes the same SwiGLU FFN as bf16 (within fp8 rounding), at every n."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from vibe.agent.bench import FP8_GROUP, KERNEL_FP8_GROUPED, ExpertBank, fused_fp8_supported

    dev = torch.device("cuda:0")
    if fused_fp8_supported(torch, dev):
        pytest.skip(fused_fp8_supported(torch, dev))
    bank = ExpertBank(torch, ExpertShape(256, 128, "fp8"), dev, experts=2, max_tokens=64, seed=0)
    assert bank.kernel == KERNEL_FP8_GROUPED and len(bank) == 1 and bank.distinct == FP8_GROUP
    for n in (1, 5, 16, 64):
        y = bank(0, bank.inputs(n)).float()  # experts 0..7, n tokens each
        assert y.shape == (FP8_GROUP, n, 256)
        xq, xs, _offs, _n = bank.inputs(n)
        rows = xq.shape[0] // FP8_GROUP
        for j in range(FP8_GROUP):
            x = xq[j * rows : j * rows + n].float() * xs[j * rows : j * rows + n, None]
            e = j
            w13 = bank.w13[0][e].float().t() * bank.s13[0][e][:, None]
            w2 = bank.w2[0][e].float().t() * bank.s2[0][e][:, None]
            h = x @ w13.t()
            ref = (torch.nn.functional.silu(h[:, :128]) * h[:, 128:]) @ w2.t()
            assert (y[j] - ref).norm() / ref.norm() < 0.1


def test_the_package_imports_without_heavy_modules() -> None:
    """`vibe --help` stays fast: importing the agent's modules pulls neither torch nor kubernetes nor NVML."""
    code = (
        "import sys, vibe.cli, vibe.agent.node, vibe.agent.exporter, vibe.agent.publish, vibe.agent.runner, "
        "vibe.agent.bench, vibe.agent.simulate, vibe.agent.telemetry; "
        "print(sorted(m for m in ('torch', 'kubernetes', 'pynvml') if m in sys.modules))"
    )
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert got.stdout.strip() == "[]"
