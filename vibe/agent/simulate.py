"""Simulated GPUs: telemetry and benchmark results for nodes without GPUs (the demo, the tests).

Role in the data flow: stands in for NVML and torch behind the same interfaces (``TelemetrySource``,
``Profiler``), so a simulated node goes through exactly the agent's code path: the same drift detector
reads the simulated clocks, the same publisher writes the GPUProfile (``source: simulated``), the same
exporter serves the metrics (label ``source="simulated"``).

The fleet file (YAML or JSON) describes nodes, per-GPU speeds and a drift schedule::

    product: NVIDIA H100 80GB HBM3      # optional, per-GPU default
    seed: 7                             # noise and generated speeds are reproducible
    floorShare: 0                       # optional: how much of a slowdown reaches the floor (below)
    nodes:                              # explicit nodes: a speed per GPU (1.0 = the reference H100)
    - name: gpu-node-0
      gpus: [1.0, 0.97, 0.93, 1.02, 0.95, 0.99, 0.91, {speed: 0.66, floorShare: 1}]
    generate:                           # and/or many generated nodes
      count: 1000
      namePattern: "sim-{i:04d}"        # str.format with i = 0..count-1
      gpusPerNode: 8
      spread: 0.08                      # mean slowdown vs the fastest GPU (SC'22: 8 % average, 22 % max)
      outliers: 1                       # GPUs fleet-wide at 1.5x the median time (SC'22's outliers)
      floorShare: 0                     # optional, for the generated GPUs (default: the file's)
    drift:
    - {at: 30s, node: gpu-node-0, gpu: 3, timeScale: 1.25, reason: HwSlowdown}
    - {at: 90s, node: gpu-node-0, gpu: 3, timeScale: 1.0}       # recovers
    - {at: 60s, gpu: 5, timeScale: 1.4, for: 30s, reason: HwThermalSlowdown, floorShare: 0.5}

How a simulated GPU is slow: the two-part model of ``vibe.placement.slowed_curve``, the one the serving
simulator and the benchmarks use. A curve is a memory-bound floor (its smallest time, weight streaming)
plus the compute above it; a GPU with time factor ``f`` (1/speed, or a drift's ``timeScale``) runs the
part above the floor ``f`` times slower and its floor ``1 + (f - 1) * floorShare`` times. ``floorShare``
0, the default (``FLOOR_SHARE["measured"]``, as ``vibe simulate``'s constant ``floor_slowdown_share``),
is a GPU slowed by its power cap: floor-bound expert GEMMs run at the top SM clock below the cap and
only from the knee on does the cap pull the clock down (benchmarks/results/gpu-slowness-h100-2026-12-07/),
so a slow GPU keeps its floor. ``floorShare`` 1 slows the whole curve (the "uniform" model); in between
is a heat- or clock-limited GPU (its clock held low at any load), whose floor pays part of a clock loss:
0.07-0.6 of it by shape in the clock probe of that folder's ``slowness.log``.

``at``/``for`` are seconds from the agent's first step (numbers, or "30s", "2m", "1h"); ``node`` defaults to
the first node. A drift entry's ``timeScale`` slows the GPU's compute region that many times (and its floor
by ``floorShare`` of that: default the file's ``floorShare``, so 0), on top of the GPU's own speed: a
benchmark or canary run meanwhile measures curves so slowed, its simulated SM clock falls to the benchmark
clock / timeScale (plus the measured ±2.3 % noise), and ``reason`` (default ``HwSlowdown`` for a slowdown)
joins its clock-event reasons, so the drift detector has to find it the way it would on a real GPU.

Clocks are one per GPU, not per point of a curve: the telemetry is of a GPU serving flat out at its power
cap (the compute region, where the clock is what the cap leaves: the reference clock x speed / timeScale),
so a floor-bound point's top clock is not simulated.

Curves come from the measured H100 reference of ``vibe.placement`` (steady state at the power cap), slowed
as above (the floor read off the whole reference curve), resampled onto the agent's token grid, with 1 %
measurement noise.
"""

from __future__ import annotations

import functools
import json
import math
import re
import time
import uuid as uuidlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vibe.agent.drift import Baseline
from vibe.agent.profile import Curve
from vibe.agent.profiler import ProfileOutcome
from vibe.agent.shapes import TOKEN_GRID, ExpertShape
from vibe.agent.telemetry import GPUInfo, Sample, reason_mask
from vibe.placement import FLOOR_SHARE, reference_curve, slowed_curve

H100 = "NVIDIA H100 80GB HBM3"
#: Steady-state SM clock under the power cap of the reference H100, and its jitter (shared clock ramp).
REFERENCE_SM_HZ = 1_515_000_000
CLOCK_NOISE = 0.023
MEM_HZ = 2_619_000_000
MAX_SM_HZ = 1_980_000_000
POWER_LIMIT_W = 700.0
OUTLIER_TIME = 1.5  # SC'22: outliers 1.5x slower than the median
MAX_SPREAD = 0.22  # SC'22: 22 % max variation
SERVING_PID = 4_000_000  # the simulated serving process (above any real pid_max default)


class SimulationError(ValueError):
    """The fleet file is invalid (message says where)."""


@dataclass(frozen=True)
class DriftStep:
    at: float  # seconds from start
    node: str
    gpu: int
    time_scale: float
    reason: str = ""
    duration: float | None = None  # back to 1.0 after this long
    floor_share: float = FLOOR_SHARE["measured"]  # how much of time_scale reaches the floor (module doc)


@dataclass
class SimGPU:
    node: str
    index: int
    speed: float  # 1.0 = reference H100; compute time = reference time / speed (module doc)
    info: GPUInfo
    rng: np.random.Generator
    floor_share: float = FLOOR_SHARE["measured"]  # how much of 1/speed reaches the floor (module doc)
    steps: list[DriftStep] = field(default_factory=list)
    power_violation_s: float = 0.0
    thermal_violation_s: float = 0.0
    last_t: float | None = None
    _noise: list[float] = field(default_factory=list)  # standard normals drawn in batches (1,000 nodes)

    def normal(self) -> float:
        if not self._noise:
            self._noise = self.rng.standard_normal(512).tolist()
        return self._noise.pop()

    def step_at(self, t: float) -> DriftStep | None:
        """The drift step in force at ``t`` seconds from start (the latest that began), None if none."""
        step = None
        for s in self.steps:  # sorted by start (parse_fleet)
            if s.at <= t:
                step = None if s.duration is not None and t >= s.at + s.duration else s
        return step

    def drift_at(self, t: float) -> tuple[float, str]:
        """(time scale, reason) in force at ``t`` seconds from start."""
        s = self.step_at(t)
        return (1.0, "") if s is None else (s.time_scale, s.reason)

    def slowed(self, seconds: np.ndarray, t: float | None = None) -> np.ndarray:
        """A reference curve's ``seconds`` as this GPU runs them (module doc), with the drift in force at
        ``t`` if given. Pass the whole curve: its floor is its smallest time."""
        out = slowed_curve(seconds, 1 / self.speed, self.floor_share)
        s = None if t is None else self.step_at(t)
        return out if s is None else slowed_curve(out, s.time_scale, s.floor_share)


@dataclass
class Fleet:
    """The parsed fleet file: GPUs per node, in node order."""

    nodes: dict[str, list[SimGPU]]
    seed: int = 0

    def node_names(self) -> list[str]:
        return list(self.nodes)


def parse_duration(v: Any, where: str) -> float:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", str(v))
    if not m:
        raise SimulationError(f"{where}: bad duration {v!r} (want seconds or e.g. 30s, 2m, 1h)")
    return float(m[1]) * {"ms": 1e-3, "s": 1, "m": 60, "h": 3600, None: 1}[m[2]]


def load_fleet(path: str | Path, seed: int | None = None) -> Fleet:
    """Read a fleet file (YAML or JSON; see the module docstring); ``seed`` overrides the file's."""
    import yaml

    text = Path(path).read_text()
    try:
        data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        raise SimulationError(
            f"{path}: not valid {'JSON' if str(path).endswith('.json') else 'YAML'}: {e}"
        ) from None
    data = data or {}
    if seed is not None and isinstance(data, Mapping):
        data = {**data, "seed": seed}
    return parse_fleet(data)


def _share(v: Any, default: float, where: str) -> float:
    """A ``floorShare`` (module doc): a number in [0, 1], ``default`` when absent."""
    if v is None:
        return default
    try:
        share = float(v)
    except (TypeError, ValueError):
        raise SimulationError(f"{where}: floorShare must be a number in [0, 1]") from None
    if not 0 <= share <= 1:
        raise SimulationError(f"{where}: floorShare must be in [0, 1], not {share:g}")
    return share


def parse_fleet(data: Mapping[str, Any]) -> Fleet:
    if not isinstance(data, Mapping):
        raise SimulationError("fleet file: top level must be a mapping")
    seed = int(data.get("seed", 0))
    product = str(data.get("product") or H100)
    share = _share(data.get("floorShare"), FLOOR_SHARE["measured"], "floorShare")
    rng = np.random.default_rng(seed)
    speeds: dict[str, list[tuple[float, float]]] = {}
    for k, n in enumerate(data.get("nodes") or ()):
        where = f"nodes[{k}]"
        if not isinstance(n, Mapping) or not n.get("name"):
            raise SimulationError(f"{where}: needs a name")
        gpus = n.get("gpus")
        if isinstance(gpus, int):
            gpus = [1.0] * gpus
        if not isinstance(gpus, list) or not gpus:
            raise SimulationError(f"{where}: gpus must be a non-empty list of speeds (or a count)")
        vals = []
        for j, g in enumerate(gpus):
            s = g.get("speed", 1.0) if isinstance(g, Mapping) else g
            try:
                s = float(s)
            except (TypeError, ValueError):
                raise SimulationError(f"{where}.gpus[{j}]: speed must be a number") from None
            if not s > 0:
                raise SimulationError(f"{where}.gpus[{j}]: speed must be > 0")
            own = g.get("floorShare") if isinstance(g, Mapping) else None
            vals.append((s, _share(own, share, f"{where}.gpus[{j}]")))
        if str(n["name"]) in speeds:
            raise SimulationError(f"{where}: duplicate node name {n['name']!r}")
        speeds[str(n["name"])] = vals
    gen = data.get("generate")
    if gen:
        if not isinstance(gen, Mapping):
            raise SimulationError("generate: must be a mapping")
        gen_share = _share(gen.get("floorShare"), share, "generate")
        for name, vs in _generate(gen, rng, set(speeds)).items():
            speeds[name] = [(v, gen_share) for v in vs]
    if not speeds:
        raise SimulationError("fleet file: no nodes (give nodes: or generate:)")
    nodes: dict[str, list[SimGPU]] = {}
    for ni, (name, vals) in enumerate(speeds.items()):
        nodes[name] = [
            SimGPU(
                node=name,
                index=i,
                speed=s,
                info=_info(name, i, product),
                rng=np.random.default_rng([seed, ni, i]),
                floor_share=sh,
            )
            for i, (s, sh) in enumerate(vals)
        ]
    first = next(iter(nodes))
    for k, d in enumerate(data.get("drift") or ()):
        where = f"drift[{k}]"
        if not isinstance(d, Mapping):
            raise SimulationError(f"{where}: must be a mapping")
        node = str(d.get("node") or first)
        if node not in nodes:
            raise SimulationError(f"{where}: unknown node {node!r}")
        gpu = int(d.get("gpu", 0))
        if not 0 <= gpu < len(nodes[node]):
            raise SimulationError(f"{where}: node {node!r} has no GPU {gpu}")
        scale = float(d.get("timeScale", 1.0))
        if not scale > 0:
            raise SimulationError(f"{where}: timeScale must be > 0")
        step = DriftStep(
            at=parse_duration(d.get("at", 0), f"{where}.at"),
            node=node,
            gpu=gpu,
            time_scale=scale,
            # A real GPU that turns slower says why (a slowdown reason); a power-capped clock alone is
            # what the agent learns as normal (drift.Baseline.calibrate).
            reason=str(d.get("reason") or ("HwSlowdown" if scale > 1.0 else "")),
            duration=parse_duration(d["for"], f"{where}.for") if d.get("for") is not None else None,
            floor_share=_share(d.get("floorShare"), share, where),
        )
        nodes[node][gpu].steps.append(step)
    for gs in nodes.values():
        for g in gs:
            g.steps.sort(key=lambda s: s.at)
    return Fleet(nodes=nodes, seed=seed)


def _generate(gen: Mapping[str, Any], rng: np.random.Generator, taken: set[str]) -> dict[str, list[float]]:
    """Speeds with SC'22's spread: time factors 1 + |N(0, s)| (mean s, clipped at 22 %), plus outliers."""
    count = int(gen.get("count", 1))
    per = int(gen.get("gpusPerNode", 8))
    pattern = str(gen.get("namePattern") or "sim-node-{i:03d}")
    spread = float(gen.get("spread", 0.08))
    outliers = int(gen.get("outliers", 1))
    if count < 1 or per < 1:
        raise SimulationError("generate: count and gpusPerNode must be >= 1")
    sigma = spread * math.sqrt(math.pi / 2)  # E|N(0, sigma)| = spread
    slow = 1 + np.minimum(np.abs(rng.normal(0, sigma, size=count * per)), MAX_SPREAD)
    if outliers:
        idx = rng.choice(count * per, size=min(outliers, count * per), replace=False)
        slow[idx] = OUTLIER_TIME * float(np.median(slow))
    speeds = np.round(1 / slow, 4)
    out = {}
    for i in range(count):
        name = pattern.format(i=i)
        if name in taken or name in out:
            raise SimulationError(f"generate: node name {name!r} repeats (namePattern needs {{i}})")
        out[name] = [float(s) for s in speeds[i * per : (i + 1) * per]]
    return out


def _info(node: str, index: int, product: str) -> GPUInfo:
    u = uuidlib.uuid5(uuidlib.NAMESPACE_DNS, f"{node}/gpu/{index}.vibe.sim")
    return GPUInfo(
        index=index,
        uuid=f"GPU-{u}",
        pci_bus_id=f"00000000:{0x18 + 0x10 * index:02X}:00.0",
        product=product,
        memory_bytes=80 * 2**30,
        max_sm_clock_hz=MAX_SM_HZ,
        max_mem_clock_hz=MEM_HZ,
        mig_enabled=False,
        fp8=True,
    )


# -- the two interfaces ------------------------------------------------------------------------------


class SimTelemetry:
    """``TelemetrySource`` for one simulated node: a GPU serving flat out under its power cap."""

    available = True
    error = ""

    def __init__(self, gpus: Sequence[SimGPU], clock: Callable[[], float]):
        self._gpus = {g.index: g for g in gpus}
        self._clock = clock  # seconds since the agent started

    def gpus(self) -> list[GPUInfo]:
        return [g.info for g in self._gpus.values()]

    def sample(self, index: int) -> Sample:
        g = self._gpus[index]
        t = self._clock()
        scale, reason = g.drift_at(t)
        dt = 0.0 if g.last_t is None else max(0.0, t - g.last_t)
        g.last_t = t
        g.power_violation_s += dt
        thermal = "Thermal" in reason
        if thermal:
            g.thermal_violation_s += dt
        base = base_clock(g)
        noise = min(0.06, max(-0.06, CLOCK_NOISE * g.normal()))
        sm = round(base / scale * (1 + noise) / 15e6) * 15_000_000  # NVML reports 15 MHz steps
        mask = _mask(reason)
        return Sample(
            time=time.time(),
            sm_clock_hz=sm,
            mem_clock_hz=MEM_HZ,
            power_w=round(POWER_LIMIT_W * (0.99 + 0.003 * g.normal()), 1),
            power_limit_w=POWER_LIMIT_W,
            temperature_c=float(round(58 + 6 * (1 - g.speed) + (8 if thermal else 0) + 0.5 * g.normal())),
            clock_event_reasons=mask,
            power_violation_s=round(g.power_violation_s, 3),
            thermal_violation_s=round(g.thermal_violation_s, 3),
            utilization_pct=100.0,
            energy_j=None,
            ecc_uncorrected=0,
            ecc_corrected=0,
            compute_pids=(SERVING_PID,),
        )


@functools.lru_cache(maxsize=64)
def _mask(reason: str) -> int:
    return reason_mask(["SwPowerCap", *([reason] if reason else [])])


def base_clock(g: SimGPU) -> int:
    """SM clock of a healthy simulated GPU under the cap (a slower chip runs a lower clock: SC'22)."""
    return int(REFERENCE_SM_HZ * g.speed)


class SimProfiler:
    """``Profiler`` for simulated GPUs: reference curves slowed by speed and drift (module doc), 1 % noise."""

    non_intrusive = True  # benchmarking a simulated GPU disturbs nothing, so it may run while "serving"
    source = "simulated"

    def __init__(
        self, gpus: Sequence[SimGPU], clock: Callable[[], float], tokens: Sequence[int] = TOKEN_GRID
    ):
        self._gpus = {g.index: g for g in gpus}
        self._clock = clock
        self.tokens = tuple(tokens)

    def profile(self, index: int, shapes: Sequence[ExpertShape]) -> ProfileOutcome:
        g = self._gpus[index]
        t = self._clock()
        scale, _ = g.drift_at(t)
        curves = []
        for shape in shapes:
            secs = simulated_on_grid(g, shape, self.tokens, t)
            secs = secs * (1 + g.rng.normal(0, 0.01, size=secs.size))
            curves.append(Curve.from_measured(shape, self.tokens, [float(s) for s in secs]))
        base = Baseline(
            sm_clock_hz=int(base_clock(g) / scale), mem_clock_hz=MEM_HZ, power_limit_w=POWER_LIMIT_W
        )
        tel = SimTelemetry([g], self._clock).sample(index)
        return ProfileOutcome(curves=curves, baseline=base, telemetry=tel, duration_s=0.0)

    def canary(self, index: int, shape: ExpertShape, tokens: Sequence[int]) -> tuple[list[float], float]:
        """(seconds per token count, cost in GPU seconds) as the torch canary returns."""
        g = self._gpus[index]
        secs = simulated_on_grid(g, shape, tokens, self._clock())
        secs = secs * (1 + g.rng.normal(0, 0.01, size=secs.size))
        return [float(s) for s in secs], float(secs.sum() * 11)


def simulated_on_grid(
    g: SimGPU, shape: ExpertShape, tokens: Sequence[int], t: float | None = None
) -> np.ndarray:
    """GPU ``g``'s noiseless curve for ``shape`` at ``tokens``, with the drift in force at ``t`` if given:
    the whole reference curve slowed (``SimGPU.slowed``, its floor read off all of it), then resampled."""
    ref_t, ref_s = _reference(shape.key)
    return _on_grid(ref_t, g.slowed(ref_s, t), np.asarray(tokens, dtype=float))


def reference_on_grid(shape: ExpertShape, tokens: Sequence[int]) -> np.ndarray:
    """The reference H100 curve for ``shape`` at ``tokens`` (linear interpolation, as the cost model)."""
    return _reference_on_grid(shape.key, tuple(int(t) for t in tokens)).copy()


@functools.lru_cache(maxsize=64)
def _reference(key: tuple[int, int, str]) -> tuple[np.ndarray, np.ndarray]:
    ref_t, ref_s = reference_curve(*key)
    return np.asarray(ref_t, dtype=float), np.asarray(ref_s, dtype=float)


@functools.lru_cache(maxsize=256)
def _reference_on_grid(key: tuple[int, int, str], tokens: tuple[int, ...]) -> np.ndarray:
    ref_t, ref_s = _reference(key)
    return _on_grid(ref_t, ref_s, np.asarray(tokens, dtype=float))


def _on_grid(ref_t: np.ndarray, ref_s: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The curve (ref_t, ref_s) at ``t``: linear interpolation, extrapolated past its last point."""
    out = np.interp(t, ref_t, ref_s)
    above = t > ref_t[-1]
    if above.any():  # extrapolate along the last segment, as vibe.placement does
        slope = (ref_s[-1] - ref_s[-2]) / (ref_t[-1] - ref_t[-2])
        out[above] = ref_s[-1] + slope * (t[above] - ref_t[-1])
    return out
