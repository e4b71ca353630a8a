"""Incremental re-placement: moves are what changed, the budget holds, and it never makes things worse."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from placement_helpers import instances, random_loads

from vibe.placement import (
    Fleet,
    GPUCurve,
    Placement,
    PlacementError,
    evaluate,
    reference_curve,
    replace_incremental,
    solve,
)
from vibe.placement.bounds import expected_lower_bounds
from vibe.placement.routing import StepMix, sample_routing
from vibe.placement.synthetic import h100_fleet, skewed_loads


@settings(max_examples=40, deadline=None)
@given(instances(), st.integers(0, 2**32 - 1), st.one_of(st.none(), st.integers(0, 6)))
def test_moves_budget_and_never_worse(inst, seed, max_moves):
    loads, fleet, s = inst
    current = solve(loads, fleet, s, "round-robin").placement
    new = random_loads(np.random.default_rng(seed), *loads.shape)
    before = evaluate(current, new, fleet).step_time_s
    r = replace_incremental(current, new, fleet, max_moves=max_moves)
    assert r.moves == int((r.placement.phy2log != current.phy2log).sum())
    if max_moves is not None:
        assert r.moves <= max_moves
    assert r.step_time_s <= before * (1 + 1e-12)
    assert r.step_time_s >= r.lower_bound_s
    assert r.policy == "incremental"


def test_no_moves_when_nothing_changed():
    loads = skewed_loads(4, 64, mean_tokens=500, seed=1)
    fleet = h100_fleet(8, spread=0.04, seed=1)
    current = solve(loads, fleet, 9).placement
    r = replace_incremental(current, loads, fleet)
    assert r.moves == 0


def test_recovers_most_of_a_slowdown_with_few_moves():
    loads = skewed_loads(8, 128, mean_tokens=2048, seed=2)
    fleet = h100_fleet(16, spread=0.04, seed=2)
    current = solve(loads, fleet, 9).placement
    gpus = list(fleet.gpus)
    g = gpus[3]
    gpus[3] = GPUCurve(g.id, g.node, g.tokens, g.seconds * 1.5)  # GPU 3 became 1.5x slower
    slow = Fleet(tuple(gpus))
    before = evaluate(current, loads, slow).step_time_s
    full = solve(loads, slow, 9, current=current)
    inc = replace_incremental(current, loads, slow, max_moves=20 * loads.shape[0])
    recovered = (before - inc.step_time_s) / (before - full.step_time_s)
    assert recovered > 0.8
    assert inc.moves < full.moves / 5


def test_rejects_a_placement_of_another_shape():
    loads = skewed_loads(2, 16, mean_tokens=100, seed=1)
    fleet = h100_fleet(4)
    current = solve(loads, fleet, 4).placement
    with pytest.raises(PlacementError) as e:
        replace_incremental(current, loads[:, :8], fleet)
    assert e.value.reason == "ShapeMismatch"
    with pytest.raises(PlacementError) as e:
        replace_incremental(current, loads, h100_fleet(8))
    assert e.value.reason == "ShapeMismatch"


def test_follows_a_load_drift_below_the_knee():
    """Decode-sized loads drift by 30 %: hot experts need new replicas taken from spare ones anywhere."""
    recovered = {20: [], None: []}
    for seed in (1, 2, 3):
        loads = skewed_loads(8, 128, mean_tokens=100, seed=seed)
        fleet = h100_fleet(16, spread=0.04, seed=seed)
        current = solve(loads, fleet, 9).placement
        drift = np.round(0.7 * loads + 0.3 * skewed_loads(8, 128, mean_tokens=100, seed=seed + 10))
        before = evaluate(current, drift, fleet).step_time_s
        full = solve(drift, fleet, 9, current=current)
        for per_layer in recovered:
            cap = None if per_layer is None else per_layer * 8
            inc = replace_incremental(current, drift, fleet, max_moves=cap)
            assert inc.moves < full.moves / 5
            recovered[per_layer].append((before - inc.step_time_s) / (before - full.step_time_s))
    # 20 slots per layer (of 144) get most of a full re-solve (which rewrites ~130); so does the default
    assert np.mean(recovered[20]) > 0.8
    assert np.mean(recovered[None]) > 0.78


def test_default_stops_at_the_knee():
    """Without a cap the choice stops where a copy buys a quarter of the walks' average, not at their end."""
    loads = skewed_loads(8, 128, mean_tokens=2048, seed=2)
    fleet = h100_fleet(16, spread=0.04, seed=2)
    current = solve(loads, fleet, 9).placement
    drift = np.round(0.7 * loads + 0.3 * skewed_loads(8, 128, mean_tokens=2048, seed=12))
    before = evaluate(current, drift, fleet).step_time_s
    default = replace_incremental(current, drift, fleet)
    walks = replace_incremental(current, drift, fleet, max_moves=current.num_slots * 8)
    assert 0 < default.moves < walks.moves
    assert (before - default.step_time_s) > 0.8 * (before - walks.step_time_s)


# ---- the expected objective (a step mix's sampled steps, as the full planner's)


def _fast_and_slow() -> Fleet:
    """Two H100s on one node, the second 1.5x slower."""
    tokens, seconds = reference_curve()
    return Fleet(tuple(GPUCurve(f"a/{i}", "a", tokens, seconds * (1.5 if i else 1.0)) for i in range(2)))


def test_zero_token_slots_change_the_best_incremental_move():
    """Four tokens per step (top-1) over five experts, a fast and a 1.5x slower GPU, one move's worth of
    budget (two slots). The slow GPU holds the hottest expert (53 % of tokens) twice.

    Move A (mean loads): swap one replica of the hot expert onto the fast GPU, which evens the mean loads.
    Move B (sampled steps): re-target the hot expert's second replica to the coldest expert, which is idle
    in most steps and so costs nothing: the slow GPU then runs one busy slot per step instead of two."""
    fleet = _fast_and_slow()
    loads = np.array([[1.5, 5.3, 53.2, 36.5, 5.9]])
    current = Placement(np.array([[3, 4, 1, 2, 2, 0]]), 3, 5)
    rt = sample_routing(loads, StepMix.one(4), 1, samples=64, seed=0)
    held_out = sample_routing(loads, StepMix.one(4), 1, samples=256, seed=1)
    by_mean = replace_incremental(current, rt.mean_loads[0], fleet, max_moves=2)
    by_expected = replace_incremental(current, loads, fleet, max_moves=2, routing=rt)
    assert sorted(by_mean.placement.by_gpu()[0, 1].tolist()) == [0, 2, 4]  # A: a hot replica to the fast GPU
    assert sorted(by_expected.placement.by_gpu()[0, 1].tolist()) == [0, 0, 2]  # B: the cold expert twice
    assert by_expected.moves == 1
    # the mean-load evaluator prefers A ...
    mean_of_b = evaluate(by_expected.placement, rt.mean_loads[0], fleet).step_time_s
    assert by_mean.step_time_s < mean_of_b
    # ... the sampled steps B, in-sample (what was optimised) and on held-out steps, by > 10 %
    in_a = evaluate(by_mean.placement, loads, fleet, routing=rt).step_time_s
    assert by_expected.step_time_s < 0.9 * in_a
    out_a = evaluate(by_mean.placement, loads, fleet, routing=held_out).step_time_s
    out_b = evaluate(by_expected.placement, loads, fleet, routing=held_out).step_time_s
    assert out_b < 0.9 * out_a
    # the result is priced, bounded and labelled by the objective it optimised
    assert by_expected.info["objective"] == "expected"
    bound = expected_lower_bounds(rt, fleet.table, 3).sum()
    assert by_expected.lower_bound_s == pytest.approx(bound)
    assert by_expected.gap == pytest.approx(by_expected.step_time_s / bound - 1)
    assert by_mean.info.get("objective") is None  # no step mix: the mean-load result, as before


@settings(max_examples=30, deadline=None)
@given(
    instances(max_layers=2),
    st.integers(0, 2**32 - 1),
    st.one_of(st.none(), st.integers(0, 6)),
    st.sampled_from(["round-robin", "even"]),
)
def test_expected_moves_budget_and_never_worse(inst, seed, max_moves, dispatch):
    loads, fleet, s = inst
    current = solve(loads, fleet, s, "round-robin").placement
    rng = np.random.default_rng(seed)
    new = random_loads(rng, *loads.shape) + 0.1
    rt = sample_routing(
        new, StepMix.parse("2:0.6,64:0.4"), 1, samples=8, seed=int(seed % 7), dispatch=dispatch
    )
    before = evaluate(current, new, fleet, routing=rt).step_time_s
    r = replace_incremental(current, new, fleet, max_moves=max_moves, routing=rt)
    assert r.moves == int((r.placement.phy2log != current.phy2log).sum())
    if max_moves is not None:
        assert r.moves <= max_moves
    assert r.step_time_s <= before * (1 + 1e-12)
    assert r.step_time_s >= r.lower_bound_s * (1 - 1e-9)
    assert r.info["objective"] == "expected"


def test_expected_incremental_is_deterministic_to_the_byte():
    loads = skewed_loads(4, 64, mean_tokens=500, seed=1)
    fleet = h100_fleet(8, spread=0.08, seed=1, outliers=1)
    current = solve(loads, fleet, 9).placement
    drift = np.round(0.7 * loads + 0.3 * skewed_loads(4, 64, mean_tokens=500, seed=7)) + 1
    mix = StepMix.parse("64:0.8,512:0.2")
    a = replace_incremental(current, drift, fleet, routing=sample_routing(drift, mix, 8, seed=0))
    b = replace_incremental(current, drift.copy(), fleet, routing=sample_routing(drift, mix, 8, seed=0))
    assert a.moves > 0
    np.testing.assert_array_equal(a.placement.phy2log, b.placement.phy2log)
    assert a.step_time_s == b.step_time_s
