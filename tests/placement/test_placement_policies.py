"""Policies: constraints (every expert placed, S slots per GPU), determinism, and what each promises."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from placement_helpers import h100_fleet4, instances
from random_policy import solve_random

from vibe.engines import ENGINES
from vibe.placement import COMPARED, PlacementError, solve
from vibe.placement.engine import token_balanced
from vibe.placement.policies import replicate_by_tokens
from vibe.placement.synthetic import h100_fleet, skewed_loads


def eplb_style_reference(loads: np.ndarray, num_gpus: int, slots: int) -> np.ndarray:
    """The token-balanced baseline written straightforwardly, one layer and one replica at a time."""
    out = []
    for w in loads:
        e = len(w)
        cnt = [1] * e
        for _ in range(num_gpus * slots - e):
            best = max(range(e), key=lambda i: (w[i] / cnt[i], -i))  # argmax, first on ties
            cnt[best] += 1
        items = sorted(
            ((w[i] / cnt[i], i) for i in range(e) for _ in range(cnt[i])), key=lambda t: -t[0]
        )  # stable: ties keep expert order
        load = [0.0] * num_gpus
        used = [0] * num_gpus
        gpus = [[] for _ in range(num_gpus)]
        for tokens, i in items:
            g = min((k for k in range(num_gpus) if used[k] < slots), key=lambda k: (load[k], k))
            gpus[g].append(i)
            load[g] += tokens
            used[g] += 1
        out.append([i for g in gpus for i in g])
    return np.array(out)


@settings(max_examples=60, deadline=None)
@given(instances(max_experts=12, max_gpus=5, max_slots=4))
def test_every_policy_places_every_expert_in_exactly_s_slots(inst):
    loads, fleet, s = inst
    layers, e = loads.shape
    for r in [*(solve(loads, fleet, s, p) for p in COMPARED), solve_random(loads, fleet, s)]:
        phy = r.placement.phy2log
        assert phy.shape == (layers, len(fleet) * s)  # exactly S slots on every GPU
        assert phy.dtype == np.int64
        for row in phy:
            assert set(row.tolist()) == set(range(e))
        assert r.placement.logcnt().sum(axis=1).tolist() == [len(fleet) * s] * layers


@settings(max_examples=40, deadline=None)
@given(instances())
def test_token_balanced_matches_the_straightforward_version(inst):
    loads, fleet, s = inst
    got = token_balanced(loads, len(fleet), s)
    want = eplb_style_reference(loads, len(fleet), s)
    # same multiset per GPU (slot order within a GPU is free)
    g = len(fleet)
    np.testing.assert_array_equal(
        np.sort(got.reshape(len(loads), g, s), axis=2), np.sort(want.reshape(len(loads), g, s), axis=2)
    )


@settings(max_examples=60, deadline=None)
@given(instances())
def test_vibe_never_slower_than_token_balanced_per_layer(inst):
    loads, fleet, s = inst
    v = solve(loads, fleet, s, "vibe")
    t = solve(loads, fleet, s, "token-balanced")
    assert (v.layer_times_s <= t.layer_times_s * (1 + 1e-12)).all()


def test_deterministic_to_the_byte():
    loads = skewed_loads(5, 64, mean_tokens=300, seed=4)
    fleet = h100_fleet(8, spread=0.08, outliers=1, seed=5)
    for policy in COMPARED:
        a = solve(loads, fleet, 9, policy)
        b = solve(loads.copy(), fleet, 9, policy)
        assert ENGINES["vibe"].write(a, fleet, None) == ENGINES["vibe"].write(b, fleet, None)


def test_replication_follows_tokens_per_replica():
    loads = np.array([[100.0, 10.0, 40.0, 1.0]])
    # 4 redundant: values 100, 50, 40, 33.3 are the largest w/k, so expert 0 gets 4 copies, expert 2 two
    np.testing.assert_array_equal(replicate_by_tokens(loads, 8), [[4, 1, 2, 1]])


def test_linear_and_round_robin_layouts():
    loads = np.ones((2, 6))
    fleet = h100_fleet4()
    lin = solve(loads, fleet, 2, "linear").placement.phy2log
    rr = solve(loads, fleet, 2, "round-robin").placement.phy2log
    np.testing.assert_array_equal(lin[0], [0, 1, 2, 3, 4, 5, 0, 1])
    np.testing.assert_array_equal(rr[0], [0, 4, 1, 5, 2, 0, 3, 1])


def test_vibe_gains_where_gpus_differ():
    loads = skewed_loads(4, 128, mean_tokens=2048, seed=6)
    same = h100_fleet(16, seed=1)
    varied = h100_fleet(16, spread=0.08, outliers=1, seed=1)
    gain_same = solve(loads, same, 9, "token-balanced").step_time_s / solve(loads, same, 9).step_time_s
    gain_varied = solve(loads, varied, 9, "token-balanced").step_time_s / solve(loads, varied, 9).step_time_s
    assert gain_varied > gain_same >= 1.0
    assert gain_varied > 1.2


def test_unknown_policy_and_infeasible_slots():
    loads = np.ones((1, 9))
    fleet = h100_fleet4()
    with pytest.raises(PlacementError) as e:
        solve(loads, fleet, 3, "fastest")
    assert e.value.reason == "UnknownPolicy"
    with pytest.raises(PlacementError) as e:
        solve(loads, fleet, 2)
    assert e.value.reason == "InfeasibleSlots"
    assert "8 slots cannot hold 9 experts" in str(e.value)


def test_exact_is_at_least_as_good_as_vibe_on_a_small_instance():
    pytest.importorskip("ortools")
    loads = skewed_loads(2, 8, mean_tokens=120, seed=2)
    fleet = h100_fleet4()
    v = solve(loads, fleet, 3, "vibe")
    x = solve(loads, fleet, 3, "exact", time_budget_s=4.0)
    assert x.step_time_s <= v.step_time_s * (1 + 1e-9)
    assert x.step_time_s >= x.lower_bound_s
    assert x.info["cpsatBoundSeconds"] <= x.step_time_s * (1 + 1e-9)


def test_exact_refuses_large_instances():
    pytest.importorskip("ortools")
    loads = skewed_loads(1, 256, mean_tokens=100, seed=2)
    with pytest.raises(PlacementError) as e:
        solve(loads, h100_fleet(32), 9, "exact")
    assert e.value.reason == "InstanceTooLarge"


@pytest.mark.parametrize("budget", [0.0, -1.0, float("nan")])
def test_a_bad_time_budget_is_named_as_such(budget: float) -> None:
    """A bad budget is the caller's setting, not its loads: the reason says which (was InvalidLoads)."""
    loads = skewed_loads(2, 16, mean_tokens=64.0, seed=0)
    with pytest.raises(PlacementError) as e:
        solve(loads, h100_fleet(4), 5, "vibe", time_budget_s=budget)
    assert e.value.reason == "InvalidBudget" and "budget" in str(e.value)
