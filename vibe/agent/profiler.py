"""Profilers: who measures a GPU's curves for the node agent (torch on a GPU, or the simulator).

Role in the data flow: the node agent asks a ``Profiler`` for a full profile of one GPU (by NVML index)
or for a canary (a few points of one shape), and gets back curves and the telemetry baseline in a form
that does not depend on where they came from. ``TorchProfiler`` adapts ``vibe.agent.bench``;
``vibe.agent.simulate.SimProfiler`` implements the same protocol without a GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from vibe.agent.drift import Baseline
from vibe.agent.profile import Curve
from vibe.agent.shapes import ExpertShape
from vibe.agent.telemetry import Sample, TelemetrySource


@dataclass
class ProfileOutcome:
    """One GPU's full profile."""

    curves: list[Curve]
    baseline: Baseline  # telemetry while benchmarking: what the drift detector compares against
    telemetry: Sample | None  # at the end of the benchmark (published as spec.gpus[].telemetry)
    duration_s: float
    notes: list[str] = field(default_factory=list)
    raw: dict[str, Any] | None = None  # the full benchmark record (real GPUs; results files)


class Profiler(Protocol):
    #: True when profiling cannot disturb serving (simulation), so it may run on a busy GPU.
    non_intrusive: bool
    #: "measured" or "simulated": the profile's spec.source and the metrics' source label.
    source: str

    def profile(self, index: int, shapes: Sequence[ExpertShape]) -> ProfileOutcome: ...

    def canary(self, index: int, shape: ExpertShape, tokens: Sequence[int]) -> tuple[list[float], float]:
        """(median seconds per token count, device seconds the canary cost)."""
        ...


class TorchProfiler:
    """Profiles real GPUs with ``vibe.agent.bench`` (imports torch on first use)."""

    non_intrusive = False
    source = "measured"

    def __init__(
        self,
        telemetry: TelemetrySource,
        cfg: Any = None,
        progress: Any = None,
        devices: dict[int, str] | None = None,
        disabled: str = "",
    ) -> None:
        #: Why this profiler cannot benchmark (a driver too old for torch's CUDA); the agent then waits.
        self.disabled = disabled
        self.telemetry = telemetry
        self.cfg = cfg
        self.progress = progress
        # NVML index -> torch device; found by UUID when not given ({0: "cpu"} runs the path on a CPU).
        self._devices: dict[int, str] | None = devices

    def device_for(self, index: int) -> str:
        """The torch device of NVML GPU ``index`` (CUDA may number GPUs differently from NVML)."""
        if self._devices is None:
            import torch

            from vibe.agent.bench import nvml_index_for

            self._devices = {}
            for k in range(torch.cuda.device_count()):
                dev = torch.device(f"cuda:{k}")
                nv = nvml_index_for(torch, dev, self.telemetry)
                self._devices[k if nv is None else nv] = str(dev)
        if index not in self._devices:
            raise RuntimeError(f"GPU {index} is not visible to torch (CUDA_VISIBLE_DEVICES?)")
        return self._devices[index]

    def profile(self, index: int, shapes: Sequence[ExpertShape]) -> ProfileOutcome:
        from vibe.agent.bench import BenchConfig, profile_device

        res = profile_device(
            shapes,
            device=self.device_for(index),
            cfg=self.cfg or BenchConfig(),
            telemetry=self.telemetry,
            progress=self.progress,
        )
        return outcome_from_bench(res, self.telemetry.sample(index) if self.telemetry.available else None)

    def canary(self, index: int, shape: ExpertShape, tokens: Sequence[int]) -> tuple[list[float], float]:
        from vibe.agent.bench import canary

        r = canary(shape, device=self.device_for(index), tokens=tokens, telemetry=self.telemetry)
        return r.seconds, r.gpu_s


def outcome_from_bench(res: Any, telemetry: Sample | None) -> ProfileOutcome:
    """A ``bench.BenchResult`` as a ``ProfileOutcome`` (isotonic curves; skipped shapes left out)."""
    curves = [Curve.from_measured(c.shape, c.tokens, c.seconds) for c in res.curves if len(c.points) >= 2]
    notes = list(res.notes) + [f"{c.shape.label}: {c.skipped}" for c in res.curves if c.skipped]
    return ProfileOutcome(
        curves=curves,
        baseline=Baseline(res.sm_clock_hz, res.mem_clock_hz, res.power_limit_w),
        telemetry=telemetry,
        duration_s=res.duration_s,
        notes=notes,
        raw=res.as_dict(),
    )
