"""vibe simulate --step-mix: the policies plan for the expected step time over a step mix, as vibe plan."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from vibe.cli import app
from vibe.placement import evaluate
from vibe.placement.curves import Fleet, GPUCurve, roofline_curve
from vibe.placement.routing import StepMix, sample_routing
from vibe.simulate.engine import EngineConfig
from vibe.simulate.models import from_hf_config
from vibe.simulate.simulator import GroupSpec, Settings, Simulator

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

#: The GPUs' slowdowns, the same in the fleets built here and written for the command.
FACTORS = [1, 1.1, 1.05, 1.5]


def _loads() -> np.ndarray:
    return np.exp(np.random.default_rng(1).standard_normal((4, 8)))


def _fleet(factors: list[float]) -> Fleet:
    t, s = roofline_curve(20e-6, 0.2e-6)
    return Fleet(tuple(GPUCurve(f"n/{i}", "n", t, s * f) for i, f in enumerate(factors)))


def _command(tmp_path: Path, loads: np.ndarray) -> list[str]:
    """``vibe simulate`` on the tiny model, these loads and a FACTORS fleet (written to tmp_path)."""
    (tmp_path / "config.json").write_text(json.dumps(TINY_CONFIG))
    (tmp_path / "loads.json").write_text(json.dumps({"loads": loads.round(3).tolist()}))
    fl = {"roofline": {"floorSeconds": 20e-6, "secondsPerToken": 0.2e-6}}
    fl["gpus"] = [{"id": f"n/{i}", "node": "n", "timeScale": FACTORS[i]} for i in range(4)]
    (tmp_path / "fleet.json").write_text(json.dumps(fl))
    return [
        "simulate", "--loads", str(tmp_path / "loads.json"),
        "--fleet", str(tmp_path / "fleet.json"), "-s", "3",
        "--model", str(tmp_path / "config.json"), "--rates", "2", "--requests", "30",
        "--prompt-tokens", "200", "--output-tokens", "10", "--chunk-tokens", "512", "--max-running", "32",
    ]  # fmt: skip


def test_the_policies_are_priced_by_the_expected_objective() -> None:
    fleet = _fleet(FACTORS)
    loads = _loads()
    spec = GroupSpec("colocated", loads, fleet, 3, plan_step_mix="4:0.8,256:0.2")
    settings = Settings(
        from_hf_config(TINY_CONFIG), (spec,), engine=EngineConfig(chunk_tokens=512, max_running=32)
    )
    sim = Simulator(settings)
    predicted = {p: sim.prepare(p).info["colocated"]["predicted_step_s"] for p in ("token-balanced", "vibe")}
    assert predicted["vibe"] <= predicted["token-balanced"]
    # the same figure vibe plan --step-mix gives: the expected objective of the placement it chose
    routing = sample_routing(loads, StepMix.parse("4:0.8,256:0.2"), 2, seed=settings.seed)
    from vibe.placement.engine import solve

    res = solve(loads, fleet, 3, "vibe", time_budget_s=settings.solve_budget_s, routing=routing)
    assert evaluate(res.placement, loads, fleet, routing=routing).step_time_s == predicted["vibe"]


def test_the_command_takes_the_step_mix(tmp_path: Path) -> None:
    base = _command(tmp_path, _loads())
    res = CliRunner().invoke(app, [*base, "--step-mix", "32:0.8,1024:0.2"])
    assert res.exit_code == 0, res.output
    bad = CliRunner().invoke(app, [*base, "--step-mix", "32:"])
    assert bad.exit_code == 1 and bad.output.startswith("vibe simulate: InvalidLoads: ")
    assert "TOKENS:WEIGHT" in bad.output and len(bad.output.strip().splitlines()) == 1


def test_the_weighted_replica_split_is_simulated_with_the_placements_weights(tmp_path: Path) -> None:
    """--replica-split weighted: each policy's placement carries weights, the simulator's expert table
    splits each expert's tokens by them (equal to even where the weights are even), and the JSON says so."""
    from vibe.placement.engine import solve

    fleet = _fleet(FACTORS)
    loads = _loads()
    spec = GroupSpec("colocated", loads, fleet, 3, plan_tokens=4096)
    engine = EngineConfig(chunk_tokens=512, max_running=32)
    model = from_hf_config(TINY_CONFIG)
    weighted = Simulator(Settings(model, (spec,), engine=engine, replica_split="weighted"))
    even = Simulator(Settings(model, (spec,), engine=engine))
    w = weighted.prepare("token-balanced").info["colocated"]["predicted_step_s"]
    e = even.prepare("token-balanced").info["colocated"]["predicted_step_s"]
    assert w < e  # token-balanced ignores the 1.5x GPU; the weights move its replicas' tokens off it
    plan = loads / loads.sum(axis=1, keepdims=True) * 4096 * 2
    res = solve(plan, fleet, 3, "token-balanced", replica_split="weighted")
    assert res.placement.weights is not None
    assert w == res.step_time_s
    # the table splits by the weights: at the plan's token count its expert time follows the weights
    table = weighted.table(spec, res.placement, fleet, 0)
    plain = even.table(spec, solve(plan, fleet, 3, "token-balanced").placement, fleet, 0)
    assert table.mean(4096)[0] < plain.mean(4096)[0]
    out = tmp_path / "out.json"
    args = [*_command(tmp_path, loads), "--replica-split", "weighted", "--output", str(out)]
    res2 = CliRunner().invoke(app, args)
    assert res2.exit_code == 0, res2.output
    assert json.loads(out.read_text())["settings"]["replicaSplit"] == "weighted"


def test_a_replacement_after_drift_chooses_by_the_expected_objective() -> None:
    """vibe+replace with a plan step mix re-places as the operator does: by the expected objective."""
    from vibe.placement import replace_incremental
    from vibe.placement.engine import solve
    from vibe.simulate.simulator import REPLACE, DriftEvent, slowed

    fleet = _fleet([1, 1.1, 1.05, 1.0])
    loads = _loads()
    spec = GroupSpec("colocated", loads, fleet, 3, plan_step_mix="4:0.8,256:0.2")
    settings = Settings(
        from_hf_config(TINY_CONFIG),
        (spec,),
        engine=EngineConfig(chunk_tokens=512, max_running=32),
        drift=(DriftEvent(3.0, "n/1", 3.0),),
    )
    info = Simulator(settings).prepare(REPLACE).info["colocated"]["replace"]
    routing = sample_routing(loads, StepMix.parse("4:0.8,256:0.2"), 2, seed=settings.seed)
    placed = solve(loads, fleet, 3, "vibe", time_budget_s=settings.solve_budget_s, routing=routing)
    want = replace_incremental(
        placed.placement,
        loads,
        slowed(fleet, "n/1", 3.0),
        time_budget_s=settings.solve_budget_s,
        routing=routing,
    )
    assert want.moved_experts > 0 and want.info["objective"] == "expected"
    assert info["moved_experts"] == want.moved_experts
