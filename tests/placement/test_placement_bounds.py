"""The lower bound: no placement, from any policy, random or exhaustive, ever beats it; and it is tight."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from placement_helpers import h100_fleet4, instances, random_fleet, random_loads
from random_policy import random_placement, solve_random

from vibe.placement import Placement, evaluate, lower_bound, solve
from vibe.placement.bounds import layer_lower_bounds
from vibe.placement.cost import gpu_times_of
from vibe.placement.synthetic import h100_fleet, skewed_loads


@settings(max_examples=80, deadline=None)
@given(instances(), st.integers(0, 1000))
def test_no_policy_or_random_placement_beats_the_bound(inst, seed):
    loads, fleet, s = inst
    bound = lower_bound(loads, fleet, s)
    per_layer = layer_lower_bounds(loads, fleet.table, s)
    assert bound == pytest.approx(per_layer.sum())
    results = [
        solve(loads, fleet, s, p, seed=seed) for p in ("round-robin", "linear", "token-balanced", "vibe")
    ]
    for r in [*results, solve_random(loads, fleet, s, seed=seed)]:
        assert r.step_time_s >= bound
        assert (r.layer_times_s >= per_layer).all()
        assert r.gap >= 0 or bound == 0
    rng = np.random.default_rng(seed)
    for _ in range(20):
        phy = random_placement(loads.shape[0], loads.shape[1], len(fleet), s, rng)
        t = gpu_times_of(phy, loads, fleet.table, s).max(axis=1)
        assert (t >= per_layer).all()


def _all_placements(e: int, p: int):
    for phy in itertools.product(range(e), repeat=p):
        if len(set(phy)) == e:
            yield phy


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_bound_below_exhaustive_optimum(seed):
    rng = np.random.default_rng(seed)
    g, s = int(rng.integers(1, 4)), int(rng.integers(1, 3))
    p = g * s
    e = int(rng.integers(1, min(p, 4) + 1))
    loads = random_loads(rng, 1, e)
    fleet = random_fleet(rng, g)
    phys = np.array(list(_all_placements(e, p)))
    best = gpu_times_of(phys, np.repeat(loads, len(phys), axis=0), fleet.table, s).max(axis=1).min()
    bound = layer_lower_bounds(loads, fleet.table, s)[0]
    assert bound <= best
    vibe = solve(loads, fleet, s, "vibe").step_time_s
    assert vibe >= best * (1 - 1e-12)


def test_decode_floors_are_tight():
    # every expert below the knee on identical GPUs: each GPU runs S near-floor items
    loads = np.full((1, 8), 2.0)
    fleet = h100_fleet4()
    r = solve(loads, fleet, 2, "vibe")
    # the slow GPU holds two items no matter what: 2 x 1.5 x t(2 tokens) is optimal and the bound finds it
    assert r.gap < 0.01


def test_gap_is_small_on_a_real_sized_instance():
    loads = skewed_loads(6, 256, mean_tokens=2048, seed=3)
    fleet = h100_fleet(32, spread=0.08, outliers=1, seed=1)
    r = solve(loads, fleet, 9, "vibe")
    assert r.gap < 0.01


def test_zero_loads():
    loads = np.zeros((2, 6))
    fleet = h100_fleet4()
    assert lower_bound(loads, fleet, 2) == 0.0
    r = solve(loads, fleet, 2, "vibe")
    assert r.step_time_s == 0.0 and r.gap == 0.0
    pl = Placement(r.placement.phy2log, 2, 6)
    assert evaluate(pl, loads, fleet).imbalance == 1.0
