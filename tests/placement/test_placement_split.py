"""The weighted replica split: shares chosen by the planner, priced, bounded, guarded."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from placement_helpers import instances
from random_policy import random_placement

from vibe.placement import Fleet, GPUCurve, Placement, PlacementError, evaluate, reference_curve, solve
from vibe.placement.bounds import expected_lower_bounds, layer_lower_bounds
from vibe.placement.cost import mean_load_layer_times
from vibe.placement.dispatch import sampled_slot_tokens
from vibe.placement.routing import StepMix, sample_routing
from vibe.placement.split import (
    check_split,
    choose_weights,
    even_weights,
    expert_sums,
    sampled_weighted_tokens,
)


def _fleet(factors: list[float]) -> Fleet:
    tokens, seconds = reference_curve()
    return Fleet(tuple(GPUCurve(f"a/{i}", "a", tokens, seconds * f) for i, f in enumerate(factors)))


def test_weighted_strictly_beats_even_on_a_fast_and_a_slow_gpu():
    """One expert, one replica on each of a fast and a 1.5x slower GPU, prefill load: the even split waits
    for the slow GPU; the weighted one sends the fast GPU more and finishes earlier."""
    fleet = _fleet([1.0, 1.5])
    loads = np.array([[8192.0]])
    even = solve(loads, fleet, 1, "vibe")
    weighted = solve(loads, fleet, 1, "vibe", replica_split="weighted")
    assert weighted.placement.weights is not None
    share = weighted.placement.weights[0]
    assert share.sum() == pytest.approx(1.0) and share[0] > 0.55  # the fast GPU serves more
    assert weighted.step_time_s < 0.9 * even.step_time_s
    assert weighted.step_time_s >= weighted.lower_bound_s
    assert weighted.info["replicaSplit"] == "weighted"
    # the two GPUs finish nearly together: water-filling
    t = weighted.gpu_times_s[0]
    assert abs(t[0] - t[1]) < 0.02 * t.max()


def test_weighted_equals_even_on_identical_balanced_gpus():
    fleet = _fleet([1.0] * 4)
    loads = np.full((2, 4), 3000.0)
    for routing in (None, sample_routing(loads, StepMix.parse("8:0.5,512:0.5"), 2, samples=4)):
        even = solve(loads, fleet, 2, "token-balanced", routing=routing)
        weighted = solve(loads, fleet, 2, "token-balanced", routing=routing, replica_split="weighted")
        assert weighted.placement.weights is not None
        np.testing.assert_array_equal(weighted.placement.weights, even_weights(weighted.placement.phy2log, 4))
        assert weighted.step_time_s == pytest.approx(even.step_time_s, rel=1e-12)


@settings(max_examples=30, deadline=None)
@given(instances(max_experts=8, max_gpus=4), st.integers(0, 1000))
def test_chosen_weights_never_slower_than_even_and_vibe_never_worse_than_token_balanced(inst, seed):
    loads, fleet, s = inst
    loads = loads + 1.0
    rng = np.random.default_rng(seed)
    phy = random_placement(loads.shape[0], loads.shape[1], len(fleet), s, rng)
    e = loads.shape[1]
    even = evaluate(Placement(phy, s, e), loads, fleet).layer_times_s
    w = choose_weights(phy, loads, fleet.table, s)
    assert (evaluate(Placement(phy, s, e, w), loads, fleet).layer_times_s <= even * (1 + 1e-9)).all()
    rt = sample_routing(loads, StepMix.parse("2:0.6,40:0.3,2000:0.1"), 1, samples=4, seed=seed)
    even_x = evaluate(Placement(phy, s, e), loads, fleet, routing=rt).layer_times_s
    wx = choose_weights(phy, loads, fleet.table, s, routing=rt)
    assert (
        evaluate(Placement(phy, s, e, wx), loads, fleet, routing=rt).layer_times_s <= even_x * (1 + 1e-9)
    ).all()
    # vibe vs token-balanced, both weighted: mean-load, and both evaluators under routing
    v = solve(loads, fleet, s, "vibe", replica_split="weighted", time_budget_s=0.05)
    t = solve(loads, fleet, s, "token-balanced", replica_split="weighted")
    assert (v.layer_times_s <= t.layer_times_s * (1 + 1e-9)).all()
    v = solve(loads, fleet, s, "vibe", routing=rt, replica_split="weighted", time_budget_s=0.05)
    t = solve(loads, fleet, s, "token-balanced", routing=rt, replica_split="weighted")
    assert (v.layer_times_s <= t.layer_times_s * (1 + 1e-9)).all()
    mv = mean_load_layer_times(v.placement.phy2log, rt, fleet.table, s, weights=v.placement.weights)
    mt = mean_load_layer_times(t.placement.phy2log, rt, fleet.table, s, weights=t.placement.weights)
    assert (mv <= mt * (1 + 1e-9)).all()
    assert v.info["meanLoadStepTimeSeconds"] == pytest.approx(mv.sum())


@settings(max_examples=30, deadline=None)
@given(instances(max_experts=8, max_gpus=4), st.integers(0, 1000), st.sampled_from(["round-robin", "even"]))
def test_no_weighted_split_beats_its_bound(inst, seed, dispatch):
    """Any placement with any shares (zero shares included) stays above the any-split bounds."""
    loads, fleet, s = inst
    loads = loads + 1.0
    rng = np.random.default_rng(seed)
    e = loads.shape[1]
    bound = layer_lower_bounds(loads, fleet.table, s, split="weighted")
    rt = sample_routing(
        loads, StepMix.parse("1:0.5,6:0.3,300:0.2"), 1, samples=3, seed=seed, dispatch=dispatch
    )
    xbound = expected_lower_bounds(rt, fleet.table, s, split="weighted")
    for _ in range(8):
        phy = random_placement(loads.shape[0], e, len(fleet), s, rng)
        raw = rng.random(phy.shape) * (rng.random(phy.shape) > 0.3)
        raw = np.where(expert_sums(phy, raw, e)[np.arange(phy.shape[0])[:, None], phy] > 0, raw, 1.0)
        w = raw / expert_sums(phy, raw, e)[np.arange(phy.shape[0])[:, None], phy]
        pl = Placement(phy, s, e, w)
        assert (evaluate(pl, loads, fleet).layer_times_s >= bound).all()
        assert (evaluate(pl, loads, fleet, routing=rt).layer_times_s >= xbound).all()
    r = solve(loads, fleet, s, "vibe", routing=rt, replica_split="weighted", time_budget_s=0.05)
    assert r.lower_bound_s == pytest.approx(xbound.sum()) and r.gap >= 0


def test_sampled_weighted_tokens_are_whole_and_follow_the_shares():
    phy = np.array([[0, 1, 0, 0, 1, 2]])
    w = np.array([[0.5, 0.25, 0.3, 0.2, 0.75, 1.0]])
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 50, size=(200, 1, 3))
    offsets = rng.integers(0, 1 << 30, size=counts.shape)
    tok = sampled_weighted_tokens(phy, counts, w, "round-robin", offsets=offsets)
    assert np.array_equal(tok, np.round(tok))
    per_slot = counts[:, 0, phy[0]]
    assert (np.abs(tok[:, 0] - per_slot * w[0]) < 1.0 + 1e-9).all()  # within one token of c * w
    for x in range(3):  # every token of every expert is served exactly once
        assert (tok[:, 0, phy[0] == x].sum(axis=1) == counts[:, 0, x]).all()
    # over many steps each slot's share approaches its weight
    np.testing.assert_allclose(tok[:, 0].sum(axis=0) / per_slot.sum(axis=0), w[0], atol=0.01)
    # equal shares deal exactly as round-robin; the even dispatch is fractional c * w
    ev = even_weights(phy, 3)
    dealt = sampled_slot_tokens(phy, counts, 2, "round-robin", offsets=offsets)
    np.testing.assert_array_equal(
        sampled_weighted_tokens(phy, counts, ev, "round-robin", offsets=offsets), dealt
    )
    np.testing.assert_allclose(sampled_weighted_tokens(phy, counts, w, "even"), per_slot[:, None] * w)


def test_bad_weights_and_splits_are_named():
    phy = np.array([[0, 1, 0, 1]])
    with pytest.raises(PlacementError, match="sum to"):
        Placement(phy, 2, 2, np.array([[0.5, 0.5, 0.6, 0.5]]))
    with pytest.raises(PlacementError, match="non-negative"):
        Placement(phy, 2, 2, np.array([[1.5, 0.5, -0.5, 0.5]]))
    with pytest.raises(PlacementError, match="shape"):
        Placement(phy, 2, 2, np.array([[0.5, 0.5]]))
    with pytest.raises(PlacementError, match="unknown replica split"):
        check_split("proportional")
    loads = np.array([[100.0, 50.0]])
    fleet = _fleet([1.0, 1.2])
    with pytest.raises(PlacementError, match="unknown replica split"):
        solve(loads, fleet, 2, "vibe", replica_split="fast")
    rt = sample_routing(loads, StepMix.one(16), 1, samples=2, dispatch="sglang-static")
    with pytest.raises(PlacementError, match="cannot take weights"):
        solve(loads, fleet, 2, "vibe", routing=rt, replica_split="weighted")


def test_align_to_current_keeps_each_slots_share():
    fleet = _fleet([1.0, 1.5, 1.0, 1.2])
    rng = np.random.default_rng(3)
    loads = rng.integers(100, 5000, size=(2, 6)).astype(float)
    first = solve(loads, fleet, 3, "round-robin")
    r = solve(loads, fleet, 3, "vibe", replica_split="weighted", current=first.placement)
    plain = solve(loads, fleet, 3, "vibe", replica_split="weighted")
    assert r.step_time_s == pytest.approx(plain.step_time_s, rel=1e-12)
    assert r.placement.weights is not None
