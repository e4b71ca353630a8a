"""Drift: is a GPU persistently slower (or back to normal) compared with its benchmark?

Role in the data flow: between the 1 Hz telemetry (or a canary) and the GPUProfile. ``estimate_scale``
turns one telemetry sample into an estimate of the GPU's *time scale* (time now / time at benchmark);
``DriftDetector`` decides on a stream of such estimates, with hysteresis, when the profile must change.

Why EWMA with two thresholds: under the power cap the SM clock of a healthy H100 wanders between 1440 and
1710 MHz around a median of 1515 MHz (2.3 % standard deviation; the project's measured clock ramp), so a
single 1 Hz sample can read 5 % slow. The detector smooths ``log(scale)`` with an exponentially weighted
moving average (weight ``alpha`` per sample, starting from the benchmark's own level, 0) and declares
drift when the average passes ``raise_threshold``; it clears only when the average falls back under the
lower ``clear_threshold``, so it neither fires on one noisy sample nor flaps around one line. With the
defaults (alpha 0.2, raise 6 %, clear 2.5 %) a 25 % slowdown is caught on the second sample, while
200,000 samples drawn from the measured steady-state clocks (55 hours at 1 Hz) never lift the average
above 2.8 %. Log space makes a 2x slowdown and a 2x speed-up symmetric and lets scales multiply.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, replace
from typing import Literal

from vibe.agent.telemetry import SLOWDOWN_REASONS, Sample

Decision = Literal["drifted", "changed", "cleared"]


@dataclass(frozen=True)
class DriftConfig:
    """Detector tuning; thresholds are relative (0.06 = 6 %) and applied to log(scale)."""

    alpha: float = 0.2  # EWMA weight of a new sample; 1 Hz polling gives a ~5 s memory
    raise_threshold: float = 0.06
    clear_threshold: float = 0.025
    change_threshold: float = 0.04  # while Drifted, republish when the scale moves this much more
    scale_window: int = 3  # the published scale is the median of this many recent raw samples
    min_samples: int = 2  # no decision before this many samples
    direction: Literal["slower", "both"] = "slower"

    def __post_init__(self) -> None:
        if not 0 < self.alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        if not 0 <= self.clear_threshold < self.raise_threshold:
            raise ValueError("need 0 <= clear_threshold < raise_threshold (hysteresis)")
        if self.scale_window < 1:
            raise ValueError("scale_window must be >= 1")


class DriftDetector:
    """EWMA of log(time scale) with a raise and a lower clear threshold (see the module docstring).

    Decisions (each needs the EWMA *and* the median of the last ``scale_window`` raw samples to agree,
    so one outlier can neither raise nor move a drift):

    * "drifted": both beyond the raise threshold;
    * "changed" (while Drifted): both moved more than ``change_threshold`` from the last reported
      scale, and the scale is still beyond the raise threshold (by ``change_threshold`` more when it
      moved back towards normal, so a recovery is one "cleared", not a string of shrinking changes);
    * "cleared": the EWMA back under the clear threshold (~10 samples after a 25 % step ends).

    ``scale`` is what to publish: the median of the last ``scale_window`` raw samples, not the EWMA,
    which lags a step by several samples; rounded to 1 %.
    """

    def __init__(self, cfg: DriftConfig | None = None) -> None:
        self.cfg = cfg or DriftConfig()
        self.reset()

    @property
    def scale(self) -> float:
        return round(math.exp(self.reported if self.drifted else self._recent()), 2)

    @property
    def state(self) -> str:
        return "Drifted" if self.drifted else "Stable"

    def reset(self, drifted: bool = False, scale: float = 1.0) -> None:
        """Start over (after a re-profile), or resume a published state (after an agent restart)."""
        x = math.log(scale) if drifted and scale > 0 else 0.0
        self.level = x  # EWMA of log(scale), starting from the benchmark's own level (or the resumed one)
        self.raw: list[float] = [x] * self.cfg.scale_window if drifted else []
        self.reported = x
        self.samples = 0
        self.drifted = drifted

    def _recent(self) -> float:
        return statistics.median(self.raw) if self.raw else self.level

    def _dev(self, x: float) -> float:
        return x if self.cfg.direction == "slower" else abs(x)

    def update(self, scale: float | None) -> Decision | None:
        if scale is None or not (scale > 0 and math.isfinite(scale)):
            return None  # the sample says nothing (idle GPU, missing field): hold the state
        x = math.log(scale)
        cfg = self.cfg
        self.level = (1 - cfg.alpha) * self.level + cfg.alpha * x
        self.raw = [*self.raw, x][-cfg.scale_window :]
        self.samples += 1
        if self.samples < cfg.min_samples:
            return None
        recent = self._recent()
        if not self.drifted:
            if min(self._dev(self.level), self._dev(recent)) > cfg.raise_threshold:
                self.drifted = True
                self.reported = recent
                return "drifted"
            return None
        if self._dev(self.level) < cfg.clear_threshold:
            self.drifted = False
            self.reported = 0.0
            return "cleared"
        moved = min(abs(self.level - self.reported), abs(recent - self.reported))
        same_way = (self.level - self.reported) * (recent - self.reported) > 0
        # A move back towards normal is published only while clearly drifted still: on the way to a
        # clear, the median passes through every value in between and would publish each of them.
        floor = cfg.raise_threshold + (cfg.change_threshold if abs(recent) < abs(self.reported) else 0.0)
        if moved > cfg.change_threshold and same_way and self._dev(recent) > floor:
            self.reported = recent
            return "changed"
        return None


@dataclass(frozen=True)
class Baseline:
    """What "normal" means for one GPU: telemetry at benchmark time, then its steady serving clock.

    ``calibrated`` is False right after a benchmark: the benchmark's short pre-heat stops before the GPU
    reaches thermal equilibrium, and under sustained full load at the same power cap a healthy H100
    settles ~9-11 % lower (benchmarks/results/gpu-h100-2026-11-23/under-load/: 1485 MHz at benchmark,
    1320-1358 MHz after 30 s of dense GEMMs at 696 W). ``calibrate`` replaces ``sm_clock_hz`` by the
    median clock of the first busy, power-capped samples free of slowdown reasons (never above the
    benchmark's, never more than ``MAX_CALIBRATION_DROP`` below it), so drift means a change from how
    the GPU serves, not the difference between a 7-second benchmark and hours of load.
    """

    sm_clock_hz: int | None = None
    mem_clock_hz: int | None = None
    power_limit_w: float | None = None
    calibrated: bool = False

    def calibrate(self, sm_clocks_hz: list[int]) -> Baseline:
        if not self.sm_clock_hz or not sm_clocks_hz:
            return replace(self, calibrated=True)
        steady = statistics.median(sm_clocks_hz)
        floor = self.sm_clock_hz * (1.0 - MAX_CALIBRATION_DROP)
        return replace(self, sm_clock_hz=int(min(self.sm_clock_hz, max(steady, floor))), calibrated=True)


#: Busy samples (1 Hz) that set a GPU's steady serving clock after a benchmark.
CALIBRATION_SAMPLES = 30
#: The steady clock is taken at most this far below the benchmark's (a larger gap is a slowdown).
MAX_CALIBRATION_DROP = 0.2


def calibration_sample(sample: Sample, base: Baseline) -> int | None:
    """The SM clock of a sample fit to calibrate ``base`` with: busy, no slowdown reason, same power limit."""
    if not is_busy(sample) or not sample.sm_clock_hz or set(sample.reasons) & SLOWDOWN_REASONS:
        return None
    if base.power_limit_w and sample.power_limit_w and sample.power_limit_w < base.power_limit_w * 0.99:
        return None
    return sample.sm_clock_hz


def is_busy(sample: Sample, min_utilization: float = 30.0) -> bool:
    """Is the GPU running kernels now (so its clock says how fast it would run ours)?"""
    if "GpuIdle" in sample.reasons:
        return False
    return sample.utilization_pct is None or sample.utilization_pct >= min_utilization


def estimate_scale(sample: Sample, base: Baseline) -> tuple[float | None, str]:
    """Estimate time-now / time-at-benchmark from one sample; (None, why) when it cannot tell.

    While the GPU is busy, its SM clock is the clock our kernels would get: the expert FFN is
    compute-bound past the knee and the weight-streaming part scales with the memory clock, so the
    estimate is the larger of the two clock ratios. It is floored at 1: a lightly loaded GPU boosts above
    the power-capped clock it was benchmarked at, which is not a property worth re-placing experts for
    (a GPU benchmarked while degraded is fixed by re-profiling, not by this estimate). While idle, clocks
    drop to idle levels and say nothing; the agent re-profiles an idle GPU instead (see ``node``).
    """
    if not is_busy(sample):
        return None, "idle"
    ratios = []
    if base.sm_clock_hz and sample.sm_clock_hz:
        ratios.append(base.sm_clock_hz / sample.sm_clock_hz)
    if base.mem_clock_hz and sample.mem_clock_hz:
        ratios.append(base.mem_clock_hz / sample.mem_clock_hz)
    if not ratios:
        return None, "no clock readings"
    return max(1.0, max(ratios)), ""


def describe(sample: Sample | None, base: Baseline, scale: float) -> str:
    """Human reason for a drift decision, e.g. "SM clock 1320 MHz vs 1500 MHz at benchmark (HwSlowdown)"."""
    if sample is None:
        return f"time scale {scale:.2f}"
    parts = []
    if sample.sm_clock_hz and base.sm_clock_hz:
        normal = "serving normally" if base.calibrated else "at benchmark"
        now_mhz, base_mhz = sample.sm_clock_hz // 10**6, base.sm_clock_hz // 10**6
        parts.append(f"SM clock {now_mhz} MHz vs {base_mhz} MHz {normal}")
    if sample.mem_clock_hz and base.mem_clock_hz and sample.mem_clock_hz != base.mem_clock_hz:
        parts.append(f"memory clock {sample.mem_clock_hz // 10**6} MHz vs {base.mem_clock_hz // 10**6} MHz")
    text = ", ".join(parts) or f"time scale {scale:.2f}"
    slow = [r for r in sample.reasons if r in SLOWDOWN_REASONS or r == "SwPowerCap"]
    return f"{text} ({', '.join(slow)})" if slow else text
