"""vibe simulate: the sanity checks of the serving simulator, and the command on tiny inputs.

Tiny inputs (a 4-layer, 8-expert model from a config.json, 4 GPUs with roofline curves) keep every test
to a second or two; the same code runs the evidence in benchmarks/serving.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from vibe.cli import app
from vibe.placement.curves import Fleet, GPUCurve, reference_curve, roofline_curve
from vibe.placement.synthetic import slowed_curve
from vibe.simulate.costs import CommModel, NonExpertCost, slowness_of
from vibe.simulate.engine import EngineConfig, SimulationError
from vibe.simulate.models import ModelError, from_hf_config, resolve
from vibe.simulate.report import attainment_at, bisect_goodput, goodput_search, interval, metrics
from vibe.simulate.simulator import DriftEvent, GroupSpec, Settings, Simulator, reshaped
from vibe.simulate.workload import Workload, generate

TINY_CONFIG = {
    "model_type": "tiny-moe",
    "hidden_size": 512,
    "num_hidden_layers": 4,
    "num_local_experts": 8,
    "num_experts_per_tok": 2,
    "intermediate_size": 1024,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "vocab_size": 1000,
}
TINY = from_hf_config(TINY_CONFIG)


def fleet(factors: list[float]) -> Fleet:
    t, s = roofline_curve(20e-6, 0.2e-6)
    return Fleet(tuple(GPUCurve(f"n/{i}", "n", t, s * f) for i, f in enumerate(factors)))


def skewed(layers: int = 4, experts: int = 8) -> np.ndarray:
    rng = np.random.default_rng(1)
    return np.exp(rng.standard_normal((layers, experts)))


def sim(factors: list[float], loads: np.ndarray, slots: int = 3, **kw: Any) -> Simulator:
    engine = kw.pop("engine", EngineConfig(chunk_tokens=512, max_running=32))
    settings = Settings(TINY, (GroupSpec("colocated", loads, fleet(factors), slots),), engine=engine, **kw)
    return Simulator(settings)


def run(s: Simulator, policy: str, rate: float, n: int = 120, **kw: float) -> dict[str, object]:
    req = generate(Workload(rate, n, kw.get("prompt", 300), kw.get("output", 20), seed=0))
    r = s.run(policy, req)
    r.rate = rate
    return metrics(r, 1.0, 0.05)


def test_identical_gpus_and_uniform_loads_give_every_policy_the_same_service() -> None:
    s = sim([1.0] * 4, np.ones((4, 8)), slots=2)  # 2 experts per GPU, no replicas: all equivalent
    rows = [run(s, p, 20.0) for p in ("round-robin", "token-balanced", "vibe")]
    for key in ("ttft_p50_s", "ttft_p90_s", "tpot_p50_s", "throughput_tokens_s"):
        vals = [float(r[key]) for r in rows]  # type: ignore[arg-type]
        assert max(vals) <= min(vals) * 1.05, (key, vals)


def test_at_a_low_rate_ttft_is_one_prefill() -> None:
    s = sim([1.0] * 4, skewed())
    req = generate(Workload(0.05, 30, 300, 5, spread=0.0, seed=0))  # 20 s apart: never queued
    r = s.run("vibe", req)
    group = s.prepare("vibe").groups[0]
    # one prompt of 300 tokens alone in a step, all on the one GPU (attention rank) it was sent to: the
    # step's cost, averaged over the routing samples
    z = np.zeros(4)
    e0 = np.eye(4)[0]
    alone = (e0 * 300, z, z, e0 * 300 * 300 / 2, e0)
    one = np.mean([group.step_seconds(0.0, *alone, k, True) for k in range(s.s.samples)])
    spread = (z + 75, z, z, z + 75 * 75 / 2, z + 0.25)  # what pricing it as evenly spread would say
    assert one > np.mean([group.step_seconds(0.0, *spread, k, True) for k in range(s.s.samples)])
    ttft = r.first - req.arrival
    assert np.allclose(ttft, one, rtol=0.25)
    assert np.median(ttft) == pytest.approx(one, rel=0.1)


def test_attention_is_priced_on_each_gpus_own_batch_and_a_slow_gpu_slows_it() -> None:
    """Finding 3: a lone 1024-token prompt on one of 8 GPUs is not 1/8 of it on each; a GPU slow in
    compute is slow in prefill attention and the GEMMs above their floor, a GPU slow at its floor in
    decode attention."""
    ne = NonExpertCost(resolve("deepseek-v3"), "h100")
    one, z = np.ones(8), np.zeros(8)
    lone = ne.ranks(z + np.eye(8)[0] * 1024, z, z, z + np.eye(8)[0] * 1024**2 / 2, z + np.eye(8)[0], one, one)
    even = ne.ranks(z + 128, z, z, z + 8 * (128**2 / 2), z + 1 / 8, one, one)
    assert lone.max() > 1.8 * even.max()
    slow = one.copy()
    slow[3] = 1.5
    prefill = (z + 1024, z, z, z + 1024**2 / 2, z + 1)
    decode = (z + 32, z + 32, z + 32 * 2000, z, z + 32)
    p_compute, p_floor = ne.ranks(*prefill, one, slow), ne.ranks(*prefill, slow, one)
    d_compute, d_floor = ne.ranks(*decode, one, slow), ne.ranks(*decode, slow, one)
    assert p_compute[3] / p_compute[0] > p_floor[3] / p_floor[0] > 1.0  # prefill: compute-heavier
    assert d_floor[3] > 1.4 * d_floor[0] and d_compute[3] < 1.05 * d_compute[0]  # decode: floor-bound


def test_more_load_never_lowers_ttft() -> None:
    s = sim([1.0, 1.1, 1.05, 1.5], skewed())
    rows = [run(s, "token-balanced", rate, n=150) for rate in (1, 16, 256, 1024, 4096)]
    for key in ("ttft_p50_s", "ttft_p90_s"):
        ttft = [float(r[key]) for r in rows]  # type: ignore[arg-type]
        assert ttft == sorted(ttft) and ttft[-1] > 2 * ttft[0], (key, ttft)


def test_a_slow_gpu_costs_token_balanced_more_than_vibe() -> None:
    s = sim([1.0, 1.0, 1.0, 2.0], skewed())
    tb, vb = run(s, "token-balanced", 40.0), run(s, "vibe", 40.0)
    assert float(vb["tpot_p50_s"]) < float(tb["tpot_p50_s"])  # type: ignore[arg-type]


def test_chunked_prefill_spans_steps_and_kv_capacity_makes_requests_wait() -> None:
    s = sim([1.0] * 4, skewed(), gpu_memory_bytes=None)
    long = generate(Workload(0.01, 3, 5000, 2, spread=0.0, seed=0))
    r = s.run("vibe", long)
    assert r.steps >= 3 * (-(-5000 // 512))  # each prompt on one GPU: ceil(5000 / 512) prefill steps
    # 2 GiB per GPU leaves room for few requests: they queue for KV, not for the running cap
    weights = 3 * TINY.moe_layers * TINY.expert_bytes() + TINY.non_expert_weight_bytes()
    per_gpu = (weights + 2 * 320 * TINY.kv_bytes_per_token()) / 0.88  # two requests' KV per GPU
    small = sim([1.0] * 4, skewed(), gpu_memory_bytes=per_gpu)
    assert small.prepare("vibe").groups[0].kv_tokens == pytest.approx(4 * 2 * 320, abs=4)
    burst = generate(Workload(1000.0, 40, 300, 20, spread=0.0, seed=0))
    a = small.run("vibe", burst)
    b = s.run("vibe", burst)
    assert np.nanmax(a.first - burst.arrival) > 2 * np.nanmax(b.first - burst.arrival)
    with pytest.raises(SimulationError, match="KV tokens"):
        small.run("vibe", generate(Workload(1.0, 2, 5000, 20, spread=0.0, seed=0)))


def test_drift_and_replacement() -> None:
    s = sim([1.0] * 4, skewed(), drift=(DriftEvent(3.0, "n/1", 3.0),), replace_after_s=2.0)
    before = run(s, "vibe", 30.0, n=300)
    after = run(s, "vibe+replace", 30.0, n=300)
    info = s.prepare("vibe+replace").info["colocated"]["replace"]
    assert info["at_s"] == 5.0 and info["moved_experts"] > 0 and info["gain"] > 0
    assert float(after["ttft_p90_s"]) <= float(before["ttft_p90_s"])  # type: ignore[arg-type]


def test_disaggregated_groups() -> None:
    pre = GroupSpec("prefill", skewed(), fleet([1.0, 1.2]), 4)
    dec = GroupSpec("decode", skewed()[::-1].copy(), fleet([1.0, 1.0, 1.3, 1.0]), 3)
    s = Simulator(Settings(TINY, (pre, dec), engine=EngineConfig(512, 32)))
    m = run(s, "vibe", 10.0)
    assert 0 < float(m["ttft_p50_s"]) < 1.0 and float(m["slo_attainment"]) > 0  # type: ignore[arg-type]


def test_presets_and_configs() -> None:
    ds = resolve("deepseek-v3")
    assert (ds.moe_layers, ds.experts, ds.top_k, ds.dtype) == (58, 256, 8, "fp8")
    assert ds.kv_bytes_per_token() == 576 * 61 * 2 and ds.expert_bytes() == 3 * 7168 * 2048
    assert resolve("qwen3").layers == 94 and resolve("mixtral").top_k == 2
    with pytest.raises(ModelError):
        resolve("gpt-5")
    with pytest.raises(ModelError):
        from_hf_config({**TINY_CONFIG, "num_experts_per_tok": 9})


# -- the command ------------------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "config.json").write_text(json.dumps(TINY_CONFIG))
    (tmp_path / "loads.json").write_text(json.dumps({"loads": skewed().round(3).tolist()}))
    fl = {"roofline": {"floorSeconds": 20e-6, "secondsPerToken": 0.2e-6}}
    fl["gpus"] = [{"id": f"n/{i}", "node": "n", "timeScale": [1, 1.1, 1.05, 1.5][i]} for i in range(4)]
    (tmp_path / "fleet.json").write_text(json.dumps(fl))
    for g in fl["gpus"]:  # 50x slower: the group saturates near 50 requests/s at 2 running per GPU
        g["timeScale"] *= 50
    (tmp_path / "slow.json").write_text(json.dumps(fl))
    return {k: str(tmp_path / f"{k}.json") for k in ("config", "loads", "fleet", "slow")}


def cli(files: dict[str, str], *extra: str) -> list[str]:
    return [
        "simulate", "--loads", files["loads"], "--fleet", files["fleet"], "-s", "3",
        "--model", files["config"], "--rates", "2,20", "--requests", "60",
        "--prompt-tokens", "200", "--output-tokens", "10", "--chunk-tokens", "512",
        "--max-running", "32", "--goodput-seeds", "0", *extra,
    ]  # fmt: skip


def test_the_command_on_tiny_inputs(files: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "a.json"
    extra = (
        "--fleet",
        files["slow"],
        "--max-running",
        "2",
        "--prompt-tokens",
        "300",
        "--output-tokens",
        "20",
    )
    extra += ("--rates", "20,80", "--slo-ttft-ms", "1000", "--slo-tpot-ms", "50", "--goodput-seconds", "6")
    res = CliRunner().invoke(app, cli(files, *extra, "--goodput-seeds", "3", "--output", str(out)))
    assert res.exit_code == 0, res.output
    assert "goodput" in res.output and "20 requests/s" in res.output and "interval over 3 seeds" in res.output
    doc = json.loads(out.read_text())
    keys = {"policy", "rate", "ttft_p50_s", "ttft_p90_s", "ttft_p99_s", "tpot_p50_s", "tpot_p90_s"}
    keys |= {"throughput_tokens_s", "slo_attainment"}
    assert len(doc["runs"]) == 6 and all(keys <= set(r) for r in doc["runs"])
    assert set(doc["goodput"]) == {"round-robin", "token-balanced", "vibe"}  # the grid's, as before
    for g in doc["goodput_search"].values():  # and by bisection, with its interval and attainment
        assert (
            g["low"] <= g["mean"] <= g["high"] and len(g["seeds"]) == 3 and g["attainment_at_goodput"] >= 0.9
        )
        assert 20 <= g["mean"] <= 80 and g["resolution"] == 0.02
    assert all(set(c) == {"value", "unit", "source"} and c["source"] for c in doc["constants"].values())
    assert doc["constants"]["floor_slowdown_share"]["value"] == 0.0


def test_the_same_seed_gives_identical_json(files: dict[str, str], tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    for path, seed in ((a, "1"), (b, "1"), (c, "2")):
        res = CliRunner().invoke(app, cli(files, "--seed", seed, "--output", str(path)))
        assert res.exit_code == 0, res.output
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_a_drift_run_from_the_command(files: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "d.json"
    extra = ("--drift", "at=2,gpu=n/0,factor=3", "--replace-after-s", "1", "--timeline-bin-s", "1")
    res = CliRunner().invoke(app, cli(files, *extra, "--output", str(out), "--replace-cost", "restart"))
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert "vibe+replace" in doc["goodput"] and doc["ttft_over_time"]["vibe+replace"]["20"]["t_s"]
    assert "re-placed at 3 s" in res.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--model", "gpt-5"), "unknown model"),
        (("--drift", "at=x"), "--drift"),
        (("--drift", "at=1,gpu=nope,factor=2"), "not in the fleet"),
        (("--rates", "0"), "--rates"),
        (("--policies", "best"), "unknown policy"),
        (("--model", "qwen3"), "loads have 8 experts, qwen3-235b has 128"),
        (("--mode", "disaggregated"), "--prefill-loads"),
        (("--gpu-memory-gib", "0.001"), "does not fit"),
    ],
)
def test_bad_input_is_one_line(files: dict[str, str], extra: tuple[str, ...], message: str) -> None:
    res = CliRunner().invoke(app, cli(files, *extra))
    assert res.exit_code == 1, res.output
    assert res.output.startswith("vibe simulate: ") and len(res.output.strip().splitlines()) == 1
    assert message in res.output and "Traceback" not in res.output


def test_plot(files: dict[str, str], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib is not installed (pip install '.[plot]')")
    out = tmp_path / "p.png"
    res = CliRunner().invoke(app, cli(files, "--drift", "at=2,gpu=n/0,factor=3", "--plot", str(out)))
    assert res.exit_code == 0, res.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- goodput by bisection ---------------------------------------------------------------------------


def test_bisection_finds_the_threshold_to_its_resolution_from_any_guess() -> None:
    calls: list[float] = []

    def step(rate: float) -> float:
        calls.append(rate)
        return 1.0 if rate <= 7.3 else 0.5

    for lo, hi in ((1.0, 2.0), (7.0, 8.0), (20.0, 40.0), (0.1, 1000.0)):
        r = bisect_goodput(step, lo, hi, resolution=0.01)
        assert r["rate"] <= 7.3 < r["fail_rate"] <= r["rate"] * 1.01, (lo, hi, r)
        assert r["attainment"] == 1.0 and r["fail_attainment"] == 0.5
    assert bisect_goodput(lambda rate: 0.0, 1.0, 2.0)["rate"] is None
    never = bisect_goodput(lambda rate: 1.0, 1.0, 2.0)
    assert never["fail_rate"] is None and never["rate"] > 2.0  # a lower bound, said so
    # not monotone: passes below 3, fails in [3, 5), passes again in [5, 6): a crossing, within resolution
    odd = bisect_goodput(lambda r: 1.0 if r < 3 or 5 <= r < 6 else 0.0, 1.0, 10.0, resolution=0.02)
    ok, bad = odd["rate"], odd["fail_rate"]
    assert (ok < 3 <= bad or ok < 6 <= bad) and bad <= ok * 1.02
    with pytest.raises(ValueError):
        bisect_goodput(step, 2.0, 1.0)


def test_interval_is_a_student_t_interval() -> None:
    iv = interval([10.0, 11.0, 12.0])  # mean 11, sd 1, t(2) = 4.303
    assert iv["mean"] == 11.0 and iv["high"] - 11.0 == pytest.approx(4.303 / 3**0.5)
    assert interval([5.0]) == {"mean": 5.0, "low": 5.0, "high": 5.0}


def test_identical_gpus_give_every_policy_the_same_goodput_within_the_interval() -> None:
    # slow GPUs and 2 running requests per GPU: the group saturates near 50 requests/s
    engine = EngineConfig(chunk_tokens=512, max_running=2)
    same = sim([50.0] * 4, np.ones((4, 8)), slots=2, engine=engine)  # every placement is equivalent
    base = Workload(1.0, 60, 300, 20)

    def search(s: Simulator, policies: list[str]) -> dict[str, Any]:
        def attain(p: str, rate: float, seed: int) -> float:
            return attainment_at(s, p, rate, seed, base, 1.0, 0.05, seconds=6.0)

        return goodput_search(attain, policies, {p: (20.0, 80.0) for p in policies})

    res = search(same, ["round-robin", "vibe"])
    a, b = res["round-robin"], res["vibe"]
    assert len(a["seeds"]) == 3 and a["low"] <= a["mean"] <= a["high"] and 20 < a["mean"] < 80
    assert a["low"] <= b["mean"] <= a["high"] and b["low"] <= a["mean"] <= b["high"], (a, b)
    assert a["attainment_at_goodput"] >= 0.9 and not a["lower_bound_only"]
    for r in a["seeds"]:
        assert r["fail_rate"] <= r["rate"] * 1.02 and r["fail_attainment"] < 0.9
    slow = search(sim([50.0, 50.0, 50.0, 150.0], np.ones((4, 8)), slots=2, engine=engine), ["vibe"])
    assert slow["vibe"]["high"] < a["low"]  # a 3x slower GPU costs goodput beyond the interval


# -- slowness, dispatch, schedulers -----------------------------------------------------------------


def test_a_gpu_slow_in_compute_keeps_its_floor_under_the_measured_model() -> None:
    _t, sec = roofline_curve(20e-6, 0.2e-6)
    kept = slowed_curve(sec, 1.5, 0.0)
    assert kept.min() == pytest.approx(sec.min()) and kept[-1] == pytest.approx(
        sec.min() + (sec[-1] - sec.min()) * 1.5
    )
    assert np.allclose(slowed_curve(sec, 1.5, 1.0), sec * 1.5)
    uniform = fleet([1.0, 1.0, 1.0, 1.5])
    measured = reshaped(uniform, 0.0)
    assert measured.gpus[3].seconds.min() == pytest.approx(measured.gpus[0].seconds.min())
    assert measured.gpus[3].seconds[-1] / measured.gpus[0].seconds[-1] == pytest.approx(1.5, rel=0.02)
    floor, compute = slowness_of([g.tokens for g in uniform.gpus], [g.seconds for g in uniform.gpus])
    assert floor[3] == pytest.approx(1.5) and compute[3] == pytest.approx(1.5)
    floor, compute = slowness_of([g.tokens for g in measured.gpus], [g.seconds for g in measured.gpus])
    assert floor[3] == pytest.approx(1.0) and compute[3] == pytest.approx(1.5, rel=0.02)
    # the decode-heavy service barely feels a compute-only slow GPU; the uniform model feels it
    a = run(sim([1.0, 1.0, 1.0, 1.5], skewed(), floor_share=0.0), "round-robin", 20.0, prompt=50)
    b = run(sim([1.0, 1.0, 1.0, 1.5], skewed()), "round-robin", 20.0, prompt=50)
    assert float(a["tpot_p50_s"]) < float(b["tpot_p50_s"])  # type: ignore[arg-type]


def test_dispatch_once_per_node_and_two_batch_overlap() -> None:
    base = CommModel(7168, 8, 1.0, 2.0, 32, 8, 155e9, 50e9, 10e-6)
    assert base.node_dedup() == pytest.approx(3 * (1 - 0.75**8) / 6)  # 4 nodes: 2.70 of 6 remote copies
    assert base.seconds(1e5, 58, extend=True) < 0.6 * base.seconds(1e5, 58, extend=False)
    assert CommModel(7168, 8, 1.0, 2.0, 8, 8, 155e9, 50e9, 10e-6).node_dedup() == 1.0
    # DeepSeek-V3 on 16 GPUs (2 nodes): two micro-batches hide dispatch/combine behind compute in a
    # large prefill step, and cost more than they save in a small decode step (each half pays the floor)
    t, sec = reference_curve(7168, 2048, "fp8")
    ds = Fleet(tuple(GPUCurve(f"n{i // 8}/{i % 8}", f"n{i // 8}", t, sec) for i in range(16)))
    spec = GroupSpec("colocated", skewed(2, 256), ds, 16)
    on, off, auto = (
        Simulator(Settings(resolve("deepseek-v3"), (spec,), overlap=mode, samples=2))
        .prepare("vibe")
        .groups[0]
        for mode in ("on", "off", "auto")
    )
    z = np.zeros(16)
    prefill = (z + 4096, z, z, z + 4096**2 / 2, z + 1)
    decode = (z + 8, z + 8, z + 8 * 1000, z, z + 8)
    _ex, comm = off.table_at(0.0).step(4096 * 16, 4096, 0, True)
    p_on, p_off = on.step_seconds(0.0, *prefill, 0, True), off.step_seconds(0.0, *prefill, 0, True)
    assert comm * off.layer_scale < p_on < p_off
    assert on.step_seconds(0.0, *decode, 0, False) > off.step_seconds(0.0, *decode, 0, False)
    # auto (the default): two micro-batches where they make the step faster
    assert auto.step_seconds(0.0, *prefill, 0, True) == p_on
    assert auto.step_seconds(0.0, *decode, 0, False) == off.step_seconds(0.0, *decode, 0, False)


def test_decode_first_keeps_decoding_while_prompts_arrive() -> None:
    loads = skewed()
    pf = sim([1.0] * 4, loads)
    df = sim(
        [1.0] * 4, loads, engine=EngineConfig(chunk_tokens=512, max_running=32, scheduler="decode-first")
    )
    a, b = run(pf, "vibe", 1000.0, n=200, prompt=1500), run(df, "vibe", 1000.0, n=200, prompt=1500)
    # decodes never wait for a prefill (TPOT), prompts wait for the decodes' share of the budget (TTFT)
    assert float(b["tpot_p90_s"]) < 0.6 * float(a["tpot_p90_s"])  # type: ignore[arg-type]
    assert float(b["ttft_p50_s"]) > float(a["ttft_p50_s"])  # type: ignore[arg-type]
    with pytest.raises(SimulationError, match="scheduler"):
        EngineConfig(scheduler="fastest")


def test_the_command_plans_with_vibe_plans_step_mix_flags(files: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    mix = ("--step-mix", "32:0.8,256:0.2", "--samples", "4", "--dispatch", "even", "--rates", "2")
    res = CliRunner().invoke(app, cli(files, *mix, "--dispatch-per-node", "never", "--output", str(out)))
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())["settings"]
    assert (doc["stepMix"], doc["samples"], doc["dispatch"]) == ("32:0.8,256:0.2", 4, "even")
    assert doc["engine"]["dispatchPerNode"] == "never"
    # the flags reach the planner: token-balanced is priced on 4 samples per kind, split evenly
    from vibe.placement import evaluate, read_fleet, read_loads, solve
    from vibe.placement.routing import StepMix, sample_routing

    loads = read_loads(json.loads(Path(files["loads"]).read_text()))
    fleet = read_fleet(json.loads(Path(files["fleet"]).read_text()))
    routing = sample_routing(loads, StepMix.parse("32:0.8,256:0.2"), 2, samples=4, dispatch="even", seed=0)
    tb = solve(loads, fleet, 3, "token-balanced").placement
    want = evaluate(tb, loads, fleet, routing=routing).step_time_s
    got = json.loads(out.read_text())["placements"]["token-balanced"]["colocated"]["predicted_step_s"]
    assert got == pytest.approx(want, rel=1e-12)
    bad = CliRunner().invoke(app, cli(files, *mix[:4], "--dispatch", "nearest"))
    assert bad.exit_code != 0 and "nearest" in bad.output
