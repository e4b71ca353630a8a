"""vibe simulate: the sanity checks of the serving simulator, and the command on tiny inputs.

Tiny inputs (a 4-layer, 8-expert model from a config.json, 4 GPUs with roofline curves) keep every test
to a second or two; the same code runs the evidence in benchmarks/serving.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from vibe.cli import app
from vibe.placement.curves import Fleet, GPUCurve, roofline_curve
from vibe.simulate.engine import EngineConfig, SimulationError
from vibe.simulate.models import ModelError, from_hf_config, resolve
from vibe.simulate.report import metrics
from vibe.simulate.simulator import DriftEvent, GroupSpec, Settings, Simulator
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


def sim(factors: list[float], loads: np.ndarray, slots: int = 3, **kw: object) -> Simulator:
    engine = EngineConfig(chunk_tokens=512, max_running=32)
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
    # one prompt of 300 tokens alone in a step: the step's cost, averaged over the routing samples
    one = np.mean([group.step_seconds(0.0, 300, 0, 0.0, 300 * 300 / 2, 1, k) for k in range(s.s.samples)])
    ttft = r.first - req.arrival
    assert np.allclose(ttft, one, rtol=0.25)
    assert np.median(ttft) == pytest.approx(one, rel=0.1)


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
    assert r.steps >= 3 * (-(-5000 // (512 * 4)))  # each prompt: ceil(5000 / 2048) prefill steps
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
    return {k: str(tmp_path / f"{k}.json") for k in ("config", "loads", "fleet")}


def cli(files: dict[str, str], *extra: str) -> list[str]:
    return [
        "simulate", "--loads", files["loads"], "--fleet", files["fleet"], "-s", "3",
        "--model", files["config"], "--rates", "2,20", "--requests", "60",
        "--prompt-tokens", "200", "--output-tokens", "10", "--chunk-tokens", "512",
        "--max-running", "32", *extra,
    ]  # fmt: skip


def test_the_command_on_tiny_inputs(files: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "a.json"
    res = CliRunner().invoke(app, cli(files, "--output", str(out)))
    assert res.exit_code == 0, res.output
    assert "goodput" in res.output and "2 requests/s" in res.output
    doc = json.loads(out.read_text())
    keys = {"policy", "rate", "ttft_p50_s", "ttft_p90_s", "ttft_p99_s", "tpot_p50_s", "tpot_p90_s"}
    keys |= {"throughput_tokens_s", "slo_attainment"}
    assert len(doc["runs"]) == 6 and all(keys <= set(r) for r in doc["runs"])
    assert set(doc["goodput"]) == {"round-robin", "token-balanced", "vibe"}
    assert all(set(c) == {"value", "unit", "source"} and c["source"] for c in doc["constants"].values())


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
