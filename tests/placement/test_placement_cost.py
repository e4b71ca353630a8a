"""The one evaluator and the Placement's derived arrays."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from placement_helpers import instances
from random_policy import random_placement

from vibe.placement import Fleet, GPUCurve, Placement, PlacementError, evaluate


def _fleet() -> Fleet:
    # t_0(n) = 1 for n <= 10, 1 + (n - 10) / 10 after; GPU 1 is twice as slow
    t = np.array([10.0, 20.0])
    s = np.array([1.0, 2.0])
    return Fleet((GPUCurve("a", "n", t, s), GPUCurve("b", "n", t, 2 * s)))


def test_hand_computed_example():
    # 3 experts, 2 GPUs x 2 slots; expert 0 has two replicas (one per GPU)
    loads = np.array([[40.0, 5.0, 0.0]])
    pl = Placement(np.array([[0, 1, 0, 2]]), slots_per_gpu=2, num_experts=3)
    ev = evaluate(pl, loads, _fleet())
    # GPU a: expert 0 gets 40/2 = 20 tokens -> 2.0 s; expert 1 gets 5 -> 1.0 s (flat) => 3.0
    # GPU b: expert 0 20 tokens -> 4.0 s; expert 2 has no tokens -> 0 => 4.0
    np.testing.assert_allclose(ev.gpu_times_s, [[3.0, 4.0]])
    assert ev.step_time_s == pytest.approx(4.0)
    assert ev.imbalance == pytest.approx(4.0 / 3.5)
    np.testing.assert_array_equal(pl.logcnt(), [[2, 1, 1]])
    np.testing.assert_array_equal(pl.log2phy(), [[[0, 2], [1, -1], [3, -1]]])


@settings(max_examples=60, deadline=None)
@given(instances())
def test_derived_arrays_agree(inst):
    loads, fleet, s = inst
    layers, e = loads.shape
    phy = random_placement(layers, e, len(fleet), s, np.random.default_rng(0))
    pl = Placement(phy, s, e)
    cnt = pl.logcnt()
    l2p = pl.log2phy()
    assert l2p.shape == (layers, e, len(fleet) * s - e + 1)
    assert (cnt >= 1).all() and (cnt.sum(axis=1) == len(fleet) * s).all()
    for layer in range(layers):
        for x in range(e):
            slots = l2p[layer, x][l2p[layer, x] >= 0]
            assert len(slots) == cnt[layer, x]
            assert (np.diff(slots) > 0).all()
            assert (phy[layer, slots] == x).all()
    ev = evaluate(pl, loads, fleet)
    assert ev.gpu_times_s.shape == (layers, len(fleet))
    np.testing.assert_allclose(ev.layer_times_s, ev.gpu_times_s.max(axis=1))
    assert ev.step_time_s == pytest.approx(ev.layer_times_s.sum())
    # brute force: each slot priced on its own GPU's curve at tokens / replicas
    for layer in range(layers):
        for g in range(len(fleet)):
            want = sum(
                float(fleet.gpus[g](loads[layer, x] / cnt[layer, x])) for x in phy[layer, g * s : (g + 1) * s]
            )
            assert ev.gpu_times_s[layer, g] == pytest.approx(want, rel=1e-12, abs=1e-18)


@pytest.mark.parametrize(
    ("phy", "s", "e", "words"),
    [
        ([[0, 1, 2]], 2, 3, "do not split"),
        ([[0, 1, 1, 1]], 2, 3, "without a slot"),
        ([[0, 1, 2, 5]], 2, 3, "0..2"),
        ([[0, 1, 2, -1]], 2, 3, "0..2"),
        ([0, 1, 2, 0], 2, 3, "[layers][slots]"),
    ],
)
def test_bad_placements(phy, s, e, words):
    with pytest.raises(PlacementError) as err:
        Placement(np.array(phy), s, e)
    assert err.value.reason == "InvalidPlacement"
    assert words in str(err.value)


def test_shape_mismatch_and_bad_loads():
    fleet = _fleet()
    pl = Placement(np.array([[0, 1, 0, 2]]), 2, 3)
    for loads, reason in (
        (np.array([[1.0, 2.0]]), "ShapeMismatch"),
        (np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]), "ShapeMismatch"),
        (np.array([[1.0, np.nan, 3.0]]), "InvalidLoads"),
        (np.array([[1.0, -2.0, 3.0]]), "InvalidLoads"),
        (np.array([1.0, 2.0, 3.0]), "InvalidLoads"),
        (np.array([[1e308, 1.0, 1.0]]), "InvalidLoads"),  # finite, but its time overflows
        (np.array([["1", "2", "3"]]), "InvalidLoads"),
    ):
        with pytest.raises(PlacementError) as err:
            evaluate(pl, loads, fleet)
        assert err.value.reason == reason


def test_moves_count_changed_slots():
    a = Placement(np.array([[0, 1, 2, 0]]), 2, 3)
    b = Placement(np.array([[1, 0, 2, 1]]), 2, 3)
    assert b.moves_from(a) == 3
    assert b.moved_experts_from(a) == 1  # GPU 0 reshuffled (free); GPU 1 gets a new copy of expert 1
    assert a.moves_from(a) == 0
