"""Test doubles for the agent: a fake ``pynvml`` module, a scriptable telemetry source, simulated agents
and runners run in threads.

Kept as a plain module next to the tests (imported by name: pytest puts this folder on ``sys.path``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

from vibe.agent.node import AgentConfig, NodeAgent
from vibe.agent.runner import Runner
from vibe.agent.simulate import Fleet, SimProfiler, SimTelemetry
from vibe.agent.telemetry import GPUInfo, Sample, reason_mask


def sim_agents(fleet: Fleet, cfg: AgentConfig) -> list[NodeAgent]:
    """One agent per node of ``fleet`` on simulated telemetry and benchmarks, clocked from now."""
    t0 = time.monotonic()

    def clock() -> float:
        return time.monotonic() - t0

    return [
        NodeAgent(name, SimTelemetry(g, clock), SimProfiler(g, clock), cfg, version="test")
        for name, g in fleet.nodes.items()
    ]


@contextmanager
def runner_threads() -> Iterator[Callable[[Runner], Runner]]:
    """``go(runner)`` starts a runner and runs it in a daemon thread; at exit each is stopped and closed."""
    started: list[tuple[Runner, threading.Thread]] = []

    def go(runner: Runner) -> Runner:
        runner.start()
        th = threading.Thread(target=runner.run, daemon=True)
        th.start()
        started.append((runner, th))
        return runner

    try:
        yield go
    finally:
        for runner, th in started:
            runner.stop.set()
            th.join(timeout=10)
            runner.close()


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


class FakeNvml:
    """Enough of ``pynvml`` for ``NvmlTelemetry``: ``gpus`` GPUs; ``unsupported`` names raise NotSupported.

    ``errors`` maps a name (as counted by ``_count``) to another NVML error code it raises instead (a GPU
    fallen off the bus, an unknown error); ``lost_handles`` are GPU indices whose handle cannot be had.
    """

    NVML_ERROR_NOT_SUPPORTED = 3
    NVML_ERROR_TIMEOUT = 10
    NVML_ERROR_LIBRARY_NOT_FOUND = 12
    NVML_ERROR_GPU_IS_LOST = 15
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2
    NVML_TEMPERATURE_GPU = 0
    NVML_PERF_POLICY_POWER = 0
    NVML_PERF_POLICY_THERMAL = 1
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
    NVML_VOLATILE_ECC = 0
    nvmlEventTypeXidCriticalError = 8

    def __init__(
        self,
        gpus: int = 2,
        unsupported: frozenset[str] = frozenset(),
        init_error: int | None = None,
        errors: dict[str, int] | None = None,
        lost_handles: frozenset[int] = frozenset(),
    ):
        self.n = gpus
        self.unsupported = set(unsupported)
        self.errors = dict(errors or {})
        self.lost_handles = set(lost_handles)
        self.init_error = init_error
        self.calls: dict[str, int] = {}
        self.sm_mhz = [1500] * gpus
        self.reasons = [0x4] * gpus
        self.pids: list[list[int]] = [[] for _ in range(gpus)]
        self.xids: list[list[int]] = [[] for _ in range(gpus)]
        self.driver_version = "580.95.05"
        self.cuda_driver_version = 13000

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        if name in self.unsupported:
            raise NVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        if name in self.errors:
            raise NVMLError(self.errors[name])

    # -- life cycle
    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise NVMLError(self.init_error)

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return self.n

    def nvmlSystemGetDriverVersion(self) -> str:
        self._count("driver")
        return self.driver_version

    def nvmlSystemGetCudaDriverVersion_v2(self) -> int:
        self._count("cuda-driver")
        return self.cuda_driver_version

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        if i in self.lost_handles:
            raise NVMLError(self.NVML_ERROR_GPU_IS_LOST)
        return i

    # -- identity
    def nvmlDeviceGetUUID(self, h: int) -> str:
        self._count("uuid")
        return f"GPU-fake-{h}"

    def nvmlDeviceGetPciInfo(self, h: int) -> Any:
        self._count("pci")
        return SimpleNamespace(busId=f"00000000:{0x18 + h:02X}:00.0".encode())

    def nvmlDeviceGetName(self, h: int) -> bytes:
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        return SimpleNamespace(total=80 * 2**30)

    def nvmlDeviceGetMaxClockInfo(self, h: int, which: int) -> int:
        return 1980 if which == self.NVML_CLOCK_SM else 2619

    def nvmlDeviceGetMigMode(self, h: int) -> tuple[int, int]:
        self._count("mig")
        return (0, 0)

    def nvmlDeviceGetCudaComputeCapability(self, h: int) -> tuple[int, int]:
        return (9, 0)

    # -- readings
    def nvmlDeviceGetClockInfo(self, h: int, which: int) -> int:
        self._count("clock")
        return self.sm_mhz[h] if which == self.NVML_CLOCK_SM else 2619

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        self._count("power")
        return 690_000

    def nvmlDeviceGetEnforcedPowerLimit(self, h: int) -> int:
        return 700_000

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        self._count("temperature")
        return 61

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: int) -> int:
        return self.reasons[h]

    def nvmlDeviceGetViolationStatus(self, h: int, policy: int) -> Any:
        self._count("violation")
        return SimpleNamespace(violationTime=2_500_000_000 if policy == self.NVML_PERF_POLICY_POWER else 0)

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        return SimpleNamespace(gpu=97, memory=40)

    def nvmlDeviceGetTotalEnergyConsumption(self, h: int) -> int:
        self._count("energy")
        return 123_456_000

    def nvmlDeviceGetTotalEccErrors(self, h: int, kind: int, counter: int) -> int:
        self._count("ecc")
        return 0

    def nvmlDeviceGetComputeRunningProcesses(self, h: int) -> list[Any]:
        return [SimpleNamespace(pid=p, usedGpuMemory=1) for p in self.pids[h]]

    # -- XID events
    def nvmlEventSetCreate(self) -> list:
        return []

    def nvmlDeviceRegisterEvents(self, h: int, kind: int, es: list) -> None:
        self._count("xid")
        es.append(h)

    def nvmlEventSetWait_v2(self, es: list, timeout_ms: int) -> Any:
        h = es[0]
        if self.xids[h]:
            return SimpleNamespace(eventData=self.xids[h].pop(0), device=h)
        raise NVMLError(self.NVML_ERROR_TIMEOUT)

    def nvmlEventSetFree(self, es: list) -> None:
        pass


class ScriptedTelemetry:
    """A ``TelemetrySource`` whose samples the test sets: ``sm_mhz``, ``reasons``, ``pids`` per GPU."""

    available = True
    error = ""

    def __init__(self, gpus: int = 1, sm_mhz: int = 1500) -> None:
        self.infos = [
            GPUInfo(
                index=i,
                uuid=f"GPU-scripted-{i}",
                product="NVIDIA H100 80GB HBM3",
                max_sm_clock_hz=1_980_000_000,
            )
            for i in range(gpus)
        ]
        self.sm_mhz = [sm_mhz] * gpus
        self.reasons = [["SwPowerCap"] for _ in range(gpus)]
        self.pids: list[tuple[int, ...]] = [() for _ in range(gpus)]
        self.util = [100.0] * gpus

    def gpus(self) -> list[GPUInfo]:
        return list(self.infos)

    def sample(self, index: int) -> Sample:
        return Sample(
            time=time.time(),
            sm_clock_hz=self.sm_mhz[index] * 1_000_000,
            mem_clock_hz=2_619_000_000,
            power_w=690.0,
            power_limit_w=700.0,
            temperature_c=60.0,
            clock_event_reasons=reason_mask(self.reasons[index]),
            utilization_pct=self.util[index],
            compute_pids=self.pids[index],
        )
