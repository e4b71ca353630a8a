"""The drift detector on synthetic series: a step is caught, noise is not; hysteresis; the estimator."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vibe.agent.drift import Baseline, DriftConfig, DriftDetector, describe, estimate_scale, is_busy
from vibe.agent.telemetry import Sample, reason_mask

BASE_HZ = 1_515_000_000  # the H100's steady clock under the power cap (shared clock ramp)


def clocks_to_scales(clocks_hz: np.ndarray) -> list[float]:
    """What the agent feeds the detector: estimate_scale of busy samples at these SM clocks."""
    base = Baseline(sm_clock_hz=BASE_HZ, mem_clock_hz=2_619_000_000)
    out = []
    for c in clocks_hz:
        s = Sample(
            time=0.0,
            sm_clock_hz=int(c),
            mem_clock_hz=2_619_000_000,
            utilization_pct=100.0,
            clock_event_reasons=reason_mask(["SwPowerCap"]),
        )
        out.append(estimate_scale(s, base)[0])
    return out


def noisy_clocks(n: int, seed: int, rel_sd: float = 0.023, scale: float = 1.0) -> np.ndarray:
    """Measured H100 behaviour under the cap: ±2.3 % (sd) around the steady clock, clipped at ±6 %."""
    rng = np.random.default_rng(seed)
    noise = np.clip(rng.normal(0, rel_sd, n), -0.06, 0.06)
    return BASE_HZ / scale * (1 + noise)


def run(det: DriftDetector, scales: list[float | None]) -> list[tuple[int, str]]:
    return [(k, d) for k, x in enumerate(scales) if (d := det.update(x))]


@pytest.mark.parametrize("seed", range(3))
def test_noise_is_not_drift(seed: int) -> None:
    det = DriftDetector()
    decisions = run(det, clocks_to_scales(noisy_clocks(10_000, seed)))  # 2.8 hours at 1 Hz
    assert decisions == []
    assert det.state == "Stable"


def test_autocorrelated_wander_is_not_drift() -> None:
    """Slow thermal wander of ±3 % (an AR(1) process) on top of the noise stays under the raise line."""
    rng = np.random.default_rng(7)
    wander = np.zeros(10_000)
    for k in range(1, wander.size):
        wander[k] = 0.99 * wander[k - 1] + rng.normal(0, 0.003)
    wander = np.clip(wander, -0.03, 0.03)
    clocks = noisy_clocks(wander.size, 8) * (1 + wander)
    assert run(DriftDetector(), clocks_to_scales(clocks)) == []


@pytest.mark.parametrize("step", [1.1, 1.25, 1.5, 2.0])
def test_a_step_is_caught_quickly_with_its_size(step: float) -> None:
    clocks = np.concatenate([noisy_clocks(300, 1), noisy_clocks(300, 2, scale=step)])
    det = DriftDetector()
    decisions = run(det, clocks_to_scales(clocks))
    assert decisions and decisions[0][1] == "drifted"
    at = decisions[0][0]
    assert 300 <= at <= 300 + (6 if step >= 1.25 else 12), decisions
    assert det.state == "Drifted"
    assert det.scale == pytest.approx(step, rel=0.05)
    assert not any(d == "cleared" for _, d in decisions)


def test_step_back_clears_with_hysteresis() -> None:
    clocks = np.concatenate([noisy_clocks(100, 1), noisy_clocks(100, 2, scale=1.25), noisy_clocks(300, 3)])
    det = DriftDetector()
    decisions = run(det, clocks_to_scales(clocks))
    kinds = [d for _, d in decisions]
    assert kinds[0] == "drifted" and kinds[-1] == "cleared"
    assert kinds.count("drifted") == 1 and kinds.count("cleared") == 1
    cleared_at = decisions[-1][0]
    assert 200 < cleared_at <= 200 + 20  # the EWMA decays under the clear line within ~10-20 samples
    assert det.state == "Stable" and det.scale == pytest.approx(1.0, abs=0.03)


def test_a_drift_near_the_line_does_not_flap() -> None:
    """A real 5 % slowdown (at the raise line) may raise and clear a few times an hour, not every sample."""
    clocks = np.concatenate([noisy_clocks(100, 1), noisy_clocks(5000, 2, scale=1.05)])
    decisions = run(DriftDetector(), clocks_to_scales(clocks))
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(decisions)]
    assert len(decisions) <= 12 and min(gaps, default=10**9) >= 30, decisions


def test_one_outlier_neither_raises_nor_moves() -> None:
    det = DriftDetector()
    assert run(det, [1.0] * 20 + [3.0] + [1.0] * 20) == []
    det = DriftDetector()
    run(det, [1.3] * 20)
    assert det.state == "Drifted"
    assert run(det, [3.0] + [1.3] * 5) == []  # no "changed" for one wild sample
    assert det.scale == pytest.approx(1.3, abs=0.01)


def test_a_second_step_while_drifted_is_a_change() -> None:
    det = DriftDetector()
    decisions = run(det, [1.0] * 10 + [1.25] * 20 + [1.6] * 20)
    kinds = [d for _, d in decisions]
    assert kinds == ["drifted", "changed"]
    assert det.scale == pytest.approx(1.6, abs=0.01)


def test_partial_recovery_is_a_change_and_full_recovery_a_clear() -> None:
    det = DriftDetector()
    decisions = run(det, [1.0] * 10 + [1.6] * 20 + [1.25] * 20 + [1.0] * 30)
    assert [d for _, d in decisions] == ["drifted", "changed", "cleared"]
    assert decisions[1][0] in range(31, 35)


def test_none_holds_the_state() -> None:
    det = DriftDetector()
    run(det, [1.3] * 10)
    assert det.drifted
    assert run(det, [None] * 100) == []
    assert det.drifted and det.scale == pytest.approx(1.3, abs=0.01)


def test_both_directions() -> None:
    det = DriftDetector(DriftConfig(direction="both"))
    assert [d for _, d in run(det, [1.0] * 5 + [0.7] * 10)] == ["drifted"]
    slower_only = DriftDetector()
    assert run(slower_only, [1.0] * 5 + [0.7] * 10) == []


def test_reset_resumes_a_published_drift() -> None:
    det = DriftDetector()
    det.reset(drifted=True, scale=1.4)
    assert det.state == "Drifted" and det.scale == 1.4
    assert run(det, [1.4] * 10) == []  # resuming is not a new decision
    assert [d for _, d in run(det, [1.0] * 30)] == ["cleared"]


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        DriftConfig(raise_threshold=0.02, clear_threshold=0.05)
    with pytest.raises(ValueError):
        DriftConfig(alpha=0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=-0.045, max_value=0.045), min_size=50, max_size=400))
def test_bounded_noise_never_drifts(noise: list[float]) -> None:
    """Any series within ±4.5 % of the baseline clock (worse than the measured noise) stays Stable."""
    clocks = np.array([BASE_HZ * (1 + e) for e in noise])
    assert run(DriftDetector(), clocks_to_scales(clocks)) == []


@settings(max_examples=40, deadline=None)
@given(st.floats(min_value=1.12, max_value=3.0), st.integers(min_value=0, max_value=10_000))
def test_any_clear_step_is_caught(step: float, seed: int) -> None:
    clocks = np.concatenate([noisy_clocks(60, seed), noisy_clocks(60, seed + 1, scale=step)])
    decisions = run(DriftDetector(), clocks_to_scales(clocks))
    assert decisions and decisions[0][1] == "drifted" and 60 <= decisions[0][0] <= 70


def test_estimate_scale() -> None:
    base = Baseline(sm_clock_hz=1_500_000_000, mem_clock_hz=2_619_000_000)
    busy = dict(time=0.0, utilization_pct=100.0, mem_clock_hz=2_619_000_000)
    assert estimate_scale(Sample(sm_clock_hz=1_200_000_000, **busy), base)[0] == pytest.approx(1.25)
    # Boosting above the capped benchmark clock is not a speed-up worth re-placing for: floored at 1.
    assert estimate_scale(Sample(sm_clock_hz=1_980_000_000, **busy), base)[0] == 1.0
    # A memory clock drop counts too (weight streaming).
    low_mem = {**busy, "mem_clock_hz": 1_309_500_000}
    assert estimate_scale(Sample(sm_clock_hz=1_500_000_000, **low_mem), base)[0] == pytest.approx(2.0)
    idle = Sample(time=0.0, sm_clock_hz=345_000_000, clock_event_reasons=reason_mask(["GpuIdle"]))
    assert not is_busy(idle)
    assert estimate_scale(idle, base) == (None, "idle")
    assert estimate_scale(Sample(**busy), Baseline())[0] is None
    light = Sample(time=0.0, sm_clock_hz=345_000_000, utilization_pct=5.0)
    assert estimate_scale(light, base)[0] is None


def test_describe() -> None:
    base = Baseline(sm_clock_hz=1_500_000_000)
    s = Sample(
        time=0.0, sm_clock_hz=1_200_000_000, clock_event_reasons=reason_mask(["HwSlowdown", "GpuIdle"])
    )
    assert describe(s, base, 1.25) == "SM clock 1200 MHz vs 1500 MHz at benchmark (HwSlowdown)"
    assert describe(None, base, 1.25) == "time scale 1.25"
    assert math.isfinite(DriftDetector().scale)
