"""Curves: validation, the interpolation rules of the cost model, the shared table, reference data."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from placement_helpers import random_curve

from vibe.placement import Fleet, GPUCurve, PlacementError, reference_curve, reference_shapes, roofline_curve
from vibe.placement.curves import CurveTable, scale_curve


def test_rules_zero_flat_interpolate_extrapolate():
    c = GPUCurve("g", "n", np.array([10.0, 20.0, 40.0]), np.array([1.0, 1.0, 3.0]))
    n = np.array([0.0, 0.5, 10.0, 15.0, 20.0, 30.0, 40.0, 60.0])
    np.testing.assert_allclose(c(n), [0.0, 1.0, 1.0, 1.0, 1.0, 2.0, 3.0, 5.0])


@pytest.mark.parametrize(
    ("tokens", "seconds", "words"),
    [
        ([], [], "empty"),
        ([1, 2], [1.0], "token points"),
        ([1], [1.0], "at least 2"),
        ([1, 2, 3], [1.0, 0.5, 2.0], "not monotone"),
        ([2, 1], [1.0, 2.0], "strictly increasing"),
        ([0, 1], [1.0, 2.0], "strictly increasing"),
        ([1, 2], [float("nan"), 2.0], "NaN"),
        ([1, 2], [0.0, 2.0], "> 0"),
        ([1, 2, 3], [1.0, 2.0, 2.0], "must rise"),
        ("abc", [1.0], "list of numbers"),
    ],
)
def test_bad_curves_raise_one_line(tokens, seconds, words):
    with pytest.raises(PlacementError) as e:
        GPUCurve("g0", "n", tokens, seconds)
    assert e.value.reason == "InvalidCurve"
    assert words in str(e.value)
    assert "\n" not in str(e.value)


def test_fleet_rejects_duplicates_and_empty():
    t, s = reference_curve()
    with pytest.raises(PlacementError, match="duplicate"):
        Fleet((GPUCurve("a", "n", t, s), GPUCurve("a", "n", t, s)))
    with pytest.raises(PlacementError, match="no GPUs"):
        Fleet(())


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_table_matches_each_curve_and_is_monotone(seed):
    rng = np.random.default_rng(seed)
    curves = [random_curve(rng) for _ in range(int(rng.integers(1, 5)))]
    gpus = tuple(GPUCurve(f"g{i}", "n", t, s) for i, (t, s) in enumerate(curves))
    table = CurveTable(gpus)
    n = np.sort(np.concatenate([[0.0], rng.uniform(0, 3000, 200), table.x]))
    for i, (t, s) in enumerate(curves):
        got = table(i, n)
        slope = (s[-1] - s[-2]) / (t[-1] - t[-2])
        want = np.where(n > t[-1], s[-1] + (n - t[-1]) * slope, np.interp(n, t, s))
        want[n == 0] = 0.0
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-18)
        assert np.all(np.diff(got) >= -1e-18)
    # all_gpus is the same lookup for every GPU at once
    np.testing.assert_allclose(table.all_gpus(n), np.stack([table(i, n) for i in range(len(gpus))]))
    # inverse: the most tokens within a time, consistent with the curve
    tau = table.all_gpus(n)[0]
    inv = table.inverse(tau)[0]
    pos = n > 0
    assert np.all(table(0, inv[pos]) <= tau[pos] * (1 + 1e-9))
    assert np.all(inv[pos] >= n[pos] * (1 - 1e-9))


def test_reference_data_is_monotone_and_scales():
    shapes = reference_shapes()
    assert shapes["deepseek-v3"] == (7168, 2048, "bf16")
    for h, i, d in shapes.values():
        t, s = reference_curve(h, i, d)
        assert np.all(np.diff(t) > 0) and np.all(np.diff(s) >= 0)
        GPUCurve("x", "n", t, s)  # validates
    t, s = reference_curve()
    assert t[0] == 1 and t[-1] == 8192
    assert 30e-6 < s[0] < 60e-6 and 1e-3 < s[-1] < 1.3e-3  # flat ~40 us, ~1.16 ms at 8192 tokens
    # fp8 halves the weights: faster than bf16 but above the fixed overhead
    _, s8 = reference_curve(7168, 2048, "fp8")
    assert np.all(s8 < s) and np.all(s8 > 10e-6)
    # an unmeasured shape scales from its nearest measured one
    _, s_big = reference_curve(7168, 4096)
    assert np.all(s_big > s)
    np.testing.assert_allclose(
        scale_curve(s, from_shape=(7168, 2048, "bf16"), to_shape=(7168, 2048, "bf16")), s
    )
    with pytest.raises(PlacementError):
        reference_curve(7168, 2048, "int3")


def test_roofline():
    t, s = roofline_curve(40e-6, 0.14e-6)
    GPUCurve("r", "n", t, s)
    assert s[0] == pytest.approx(40e-6, rel=1e-6)
    assert s[-1] == pytest.approx(0.14e-6 * t[-1], rel=1e-3)
    with pytest.raises(PlacementError):
        roofline_curve(-1.0, 1e-7)
