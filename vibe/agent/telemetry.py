"""NVML telemetry: what each GPU is and how it is running right now.

Role in the data flow: the agent's eyes. ``GPUInfo`` (identity, read once) labels the GPUProfile and the
metrics; ``Sample`` (read every second, ~µs per call) feeds the drift detector, the exporter and the
benchmark's before/after checks. ``NvmlTelemetry`` is the real source (nvidia-ml-py); the simulator
provides the same interface (``TelemetrySource``), so everything downstream runs one code path.

Every NVML call is wrapped: a missing library or driver makes the source report "no GPUs" with one clear
message; a field a GPU does not support (ECC on a consumer card, MIG on pre-Ampere, violation counters in
a VM) is reported once per (GPU, field) and reads as ``None`` from then on, while everything else keeps
working. ``pynvml`` is imported inside ``NvmlTelemetry.open`` so the package imports without it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger("vibe.agent.telemetry")

#: NVML clock-event (formerly "throttle") reason bits, named as NVML and dcgm-exporter name them.
REASON_BITS: dict[int, str] = {
    0x1: "GpuIdle",
    0x2: "ApplicationsClocksSetting",
    0x4: "SwPowerCap",
    0x8: "HwSlowdown",
    0x10: "SyncBoost",
    0x20: "SwThermalSlowdown",
    0x40: "HwThermalSlowdown",
    0x80: "HwPowerBrakeSlowdown",
    0x100: "DisplayClockSetting",
}
REASON_NAMES: tuple[str, ...] = tuple(REASON_BITS.values())

#: Reasons that mean the GPU is slowed by something other than its own power budget (hardware, thermal).
SLOWDOWN_REASONS = frozenset({"HwSlowdown", "SwThermalSlowdown", "HwThermalSlowdown", "HwPowerBrakeSlowdown"})

#: Reasons ignored when the benchmark compares telemetry before and after a point: GpuIdle flickers
#: between kernel launches and says nothing about the clock the kernels ran at.
BENIGN_REASONS = frozenset({"GpuIdle"})


def own_pids() -> frozenset[int]:
    """This process's PIDs in every PID namespace it sits in (NVML reports host-namespace PIDs).

    ``/proc/self/status``'s ``NSpid`` lists the PID from the outermost namespace inwards, so an agent in a
    container recognises its own CUDA context in NVML's process list and does not take it for serving.
    """
    import os

    pids = {os.getpid()}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    pids.update(int(p) for p in line.split()[1:])
    except (OSError, ValueError):
        pass
    return frozenset(pids)


def reason_names(mask: int | None) -> list[str]:
    """Names of the bits set in a clock-event reason mask (unknown bits as hex)."""
    if mask is None:
        return []
    names = [name for bit, name in REASON_BITS.items() if mask & bit]
    rest = mask & ~sum(REASON_BITS)
    if rest:
        names.append(f"0x{rest:x}")
    return names


def reason_mask(names: list[str] | tuple[str, ...] | frozenset[str]) -> int:
    """Inverse of ``reason_names`` for known names (used by the simulator)."""
    by_name = {v: k for k, v in REASON_BITS.items()}
    return sum(by_name.get(n, 0) for n in set(names))


@dataclass(frozen=True)
class GPUInfo:
    """A GPU's identity and fixed limits (read once). Unknown values are None or empty."""

    index: int
    uuid: str
    pci_bus_id: str = ""
    product: str = ""
    memory_bytes: int | None = None
    max_sm_clock_hz: int | None = None
    max_mem_clock_hz: int | None = None
    mig_enabled: bool | None = None
    mig_devices: tuple[str, ...] = ()  # UUIDs of the MIG slices when MIG is on
    fp8: bool | None = None  # fp8 tensor cores (compute capability >= 8.9); None = unknown


@dataclass(frozen=True)
class Sample:
    """One telemetry reading of one GPU. Fields a GPU or driver does not report are None."""

    time: float  # wall clock, seconds since the epoch
    sm_clock_hz: int | None = None
    mem_clock_hz: int | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    temperature_c: float | None = None
    clock_event_reasons: int | None = None  # NVML bit mask, see REASON_BITS
    power_violation_s: float | None = None  # cumulative time clocks were held below max by power
    thermal_violation_s: float | None = None  # ... by temperature
    utilization_pct: float | None = None
    energy_j: float | None = None  # cumulative energy since driver load
    ecc_uncorrected: int | None = None  # volatile (since boot) uncorrected ECC errors
    ecc_corrected: int | None = None
    compute_pids: tuple[int, ...] | None = None  # processes holding a compute context (serving, us, ...)
    xids: tuple[int, ...] = ()  # XID critical errors seen since the previous sample
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def reasons(self) -> list[str]:
        return reason_names(self.clock_event_reasons)

    @property
    def compute_processes(self) -> int | None:
        return None if self.compute_pids is None else len(self.compute_pids)

    def other_processes(self, own: frozenset[int] = frozenset()) -> int | None:
        """Compute processes on the GPU other than ``own`` PIDs (the agent's own CUDA context)."""
        return None if self.compute_pids is None else len(set(self.compute_pids) - own)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly, with reason names (for results files and logs)."""
        d = {k: v for k, v in self.__dict__.items() if k != "extra" and v is not None}
        d["xids"] = list(self.xids)
        if self.compute_pids is not None:
            d["compute_pids"] = list(self.compute_pids)
        d["clockEventReasons"] = self.reasons
        return d


class TelemetrySource(Protocol):
    """What the agent needs from telemetry; NVML and the simulator implement it."""

    @property
    def available(self) -> bool: ...

    def gpus(self) -> list[GPUInfo]: ...

    def sample(self, index: int) -> Sample: ...


class NvmlTelemetry:
    """Telemetry from NVML (nvidia-ml-py), every call guarded.

    Use ``NvmlTelemetry.open()``; ``available`` is False (with ``error`` saying why) when the library or
    driver is missing, and then ``gpus()`` is empty and ``sample()`` returns empty samples.
    """

    #: Counters that cost far more than the rest (H100, driver 580: energy ~4 ms, each violation counter
    #: ~0.8 ms, against ~2-20 µs for clocks, power, reasons) are re-read at most this often.
    SLOW_EVERY_S = 10.0

    def __init__(self, lib: Any | None, error: str = "") -> None:
        self._nvml: Any = lib  # the pynvml module (untyped), or None without NVML
        self.error = error
        self._slow: dict[int, tuple[float, dict[str, Any]]] = {}
        self._handles: dict[int, Any] = {}
        self._reported: set[tuple[Any, ...]] = set()
        self._event_sets: dict[int, Any] = {}
        self.problems: list[str] = []  # every distinct problem reported, for `vibe agent telemetry`
        if lib is None and error:
            self._report(("init",), f"NVML unavailable, no GPU telemetry: {error}")

    @classmethod
    def open(cls, lib: Any | None = None) -> NvmlTelemetry:
        """Initialise NVML; never raises. ``lib`` replaces the ``pynvml`` module (tests)."""
        try:
            if lib is None:
                import pynvml  # nvidia-ml-py

                lib = pynvml
            lib.nvmlInit()
        except ImportError as e:
            return cls(None, f"nvidia-ml-py is not installed ({e})")
        except Exception as e:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...
            return cls(None, _describe(e))
        return cls(lib)

    @property
    def available(self) -> bool:
        return self._nvml is not None

    def driver(self) -> Any:
        """The driver's version and CUDA version (``vibe.agent.cuda.DriverInfo``; None without NVML)."""
        from vibe.agent.cuda import DriverInfo, nvml_driver

        return DriverInfo(None, None) if self._nvml is None else nvml_driver(self._nvml)

    def close(self) -> None:
        if self._nvml is None:
            return
        for es in self._event_sets.values():
            self._call(("event-free",), self._nvml.nvmlEventSetFree, es)
        self._event_sets.clear()
        self._call(("shutdown",), self._nvml.nvmlShutdown)
        self._nvml = None

    # -- identity -----------------------------------------------------------------------------------

    def count(self) -> int:
        if self._nvml is None:
            return 0
        return self._call(("count",), self._nvml.nvmlDeviceGetCount) or 0

    def gpus(self) -> list[GPUInfo]:
        return [info for i in range(self.count()) if (info := self.info(i)) is not None]

    def info(self, index: int) -> GPUInfo | None:
        nv = self._nvml
        h = self._handle(index)
        if nv is None or h is None:
            return None
        uuid = _text(self._call((index, "uuid"), nv.nvmlDeviceGetUUID, h)) or f"GPU-unknown-{index}"
        pci = self._call((index, "pci"), nv.nvmlDeviceGetPciInfo, h)
        mem = self._call((index, "memory"), nv.nvmlDeviceGetMemoryInfo, h)
        sm_max = self._call((index, "max-sm-clock"), nv.nvmlDeviceGetMaxClockInfo, h, nv.NVML_CLOCK_SM)
        mem_max = self._call((index, "max-mem-clock"), nv.nvmlDeviceGetMaxClockInfo, h, nv.NVML_CLOCK_MEM)
        mig = self._call((index, "mig-mode"), nv.nvmlDeviceGetMigMode, h, quiet_unsupported=True)
        mig_on = None if mig is None else bool(mig[0])
        slices: list[str] = []
        if mig_on:
            n = self._call((index, "mig-count"), nv.nvmlDeviceGetMaxMigDeviceCount, h) or 0
            for k in range(n):
                mh = self._call((index, "mig", k), nv.nvmlDeviceGetMigDeviceHandleByIndex, h, k, quiet=True)
                if mh is not None:
                    slices.append(_text(self._call((index, "mig-uuid"), nv.nvmlDeviceGetUUID, mh)))
        cc = self._call((index, "cuda-capability"), nv.nvmlDeviceGetCudaComputeCapability, h)
        return GPUInfo(
            index=index,
            uuid=uuid,
            pci_bus_id=_text(getattr(pci, "busId", "")) if pci is not None else "",
            product=_text(self._call((index, "name"), nv.nvmlDeviceGetName, h)),
            memory_bytes=int(mem.total) if mem is not None else None,
            max_sm_clock_hz=_mhz(sm_max),
            max_mem_clock_hz=_mhz(mem_max),
            mig_enabled=mig_on,
            mig_devices=tuple(s for s in slices if s),
            fp8=None if cc is None else tuple(cc) >= (8, 9),
        )

    # -- readings -----------------------------------------------------------------------------------

    def sample(self, index: int) -> Sample:
        nv = self._nvml
        h = self._handle(index)
        now = time.time()
        if nv is None or h is None:
            return Sample(time=now)

        def get(what: str, fn: Callable[..., Any], *args: Any) -> Any:
            return self._call((index, what), fn, h, *args)

        reasons_fn = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
            nv, "nvmlDeviceGetCurrentClocksThrottleReasons", None
        )
        power = get("power", nv.nvmlDeviceGetPowerUsage)
        limit = get("power-limit", nv.nvmlDeviceGetEnforcedPowerLimit)
        util = get("utilization", nv.nvmlDeviceGetUtilizationRates)
        procs = get("processes", nv.nvmlDeviceGetComputeRunningProcesses)
        return Sample(
            time=now,
            sm_clock_hz=_mhz(get("sm-clock", nv.nvmlDeviceGetClockInfo, nv.NVML_CLOCK_SM)),
            mem_clock_hz=_mhz(get("mem-clock", nv.nvmlDeviceGetClockInfo, nv.NVML_CLOCK_MEM)),
            power_w=None if power is None else power / 1000.0,
            power_limit_w=None if limit is None else limit / 1000.0,
            temperature_c=_float(get("temperature", nv.nvmlDeviceGetTemperature, nv.NVML_TEMPERATURE_GPU)),
            clock_event_reasons=None if reasons_fn is None else get("clock-event-reasons", reasons_fn),
            utilization_pct=None if util is None else float(util.gpu),
            compute_pids=None if procs is None else tuple(int(p.pid) for p in procs),
            xids=self._xids(index, h),
            **self._slow_fields(index, h),
        )

    def _slow_fields(self, index: int, h: Any) -> dict[str, Any]:
        """Violation counters, energy and ECC: cumulative, so a reading ``SLOW_EVERY_S`` old is fine."""
        t, cached = self._slow.get(index, (None, {}))
        if t is not None and time.monotonic() - t < self.SLOW_EVERY_S:
            return cached
        nv = self._nvml

        def get(what: str, fn: Callable[..., Any], *args: Any) -> Any:
            return self._call((index, what), fn, h, *args)

        ecc = nv.nvmlDeviceGetTotalEccErrors
        ecc_u = get("ecc", ecc, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_VOLATILE_ECC)
        ecc_c = (
            None
            if ecc_u is None
            else get("ecc", ecc, nv.NVML_MEMORY_ERROR_TYPE_CORRECTED, nv.NVML_VOLATILE_ECC)
        )
        energy = get("energy", nv.nvmlDeviceGetTotalEnergyConsumption)
        violation = nv.nvmlDeviceGetViolationStatus
        fields = {
            "power_violation_s": _violation_s(get("power-violation", violation, nv.NVML_PERF_POLICY_POWER)),
            "thermal_violation_s": _violation_s(
                get("thermal-violation", violation, nv.NVML_PERF_POLICY_THERMAL)
            ),
            "energy_j": None if energy is None else energy / 1000.0,
            "ecc_uncorrected": None if ecc_u is None else int(ecc_u),
            "ecc_corrected": None if ecc_c is None else int(ecc_c),
        }
        self._slow[index] = (time.monotonic(), fields)
        return fields

    # -- internals ----------------------------------------------------------------------------------

    def _handle(self, index: int) -> Any | None:
        if self._nvml is None:
            return None
        if index not in self._handles:
            h = self._call((index, "handle"), self._nvml.nvmlDeviceGetHandleByIndex, index)
            if h is None:
                return None
            self._handles[index] = h
        return self._handles[index]

    def _xids(self, index: int, h: Any) -> tuple[int, ...]:
        """Drain XID critical-error events registered for this GPU (non-blocking)."""
        nv = self._nvml
        if index not in self._event_sets:
            es = self._call((index, "xid-events"), nv.nvmlEventSetCreate)
            ok = es is not None and self._call(
                (index, "xid-events"), _register, nv, h, es, quiet_unsupported=False
            )
            self._event_sets[index] = es if ok else None
        es = self._event_sets[index]
        if es is None:
            return ()
        out = []
        for _ in range(64):
            try:
                data = nv.nvmlEventSetWait_v2(es, 0)
            except Exception as e:
                if not _is_timeout(nv, e):
                    key = (index, "xid-wait", type(e).__name__)
                    self._report(key, f"GPU {index}: XID events: {_describe(e)}")
                break
            out.append(int(getattr(data, "eventData", 0)))
        return tuple(out)

    def _call(
        self,
        key: tuple[Any, ...],
        fn: Callable[..., Any],
        *args: Any,
        quiet: bool = False,
        quiet_unsupported: bool = False,
    ) -> Any:
        """Call an NVML function; on error report once per ``key`` and return None."""
        try:
            return fn(*args)
        except Exception as e:
            if quiet:
                return None
            unsupported = _is_not_supported(self._nvml, e)
            if unsupported and quiet_unsupported:
                return None
            what = "-".join(str(k) for k in key[1:]) if isinstance(key[0], int) else "-".join(map(str, key))
            where = f"GPU {key[0]}: " if isinstance(key[0], int) else ""
            if unsupported:
                self._report(key, f"{where}{what} not supported here; reported as unknown from now on")
            else:
                self._report(key, f"{where}{what} failed: {_describe(e)}; reported as unknown")
            return None

    def _report(self, key: tuple[Any, ...], message: str) -> None:
        if key in self._reported:
            return
        self._reported.add(key)
        self.problems.append(message)
        log.warning("%s", message)


class NoTelemetry:
    """A source with no GPUs (used where NVML is absent and no simulation is asked)."""

    available = False
    error = "no telemetry source"

    def gpus(self) -> list[GPUInfo]:
        return []

    def sample(self, index: int) -> Sample:
        return Sample(time=time.time())


def _register(nv: Any, h: Any, es: Any) -> bool:
    nv.nvmlDeviceRegisterEvents(h, nv.nvmlEventTypeXidCriticalError, es)
    return True


def _is_not_supported(nv: Any, e: Exception) -> bool:
    code = getattr(e, "value", None)
    return code is not None and nv is not None and code == getattr(nv, "NVML_ERROR_NOT_SUPPORTED", object())


def _is_timeout(nv: Any, e: Exception) -> bool:
    code = getattr(e, "value", None)
    return code is not None and code == getattr(nv, "NVML_ERROR_TIMEOUT", object())


def _describe(e: Exception) -> str:
    text = str(e) or type(e).__name__
    return f"{type(e).__name__}: {text}" if type(e).__name__ not in text else text


def _text(v: Any) -> str:
    if v is None:
        return ""
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def _mhz(v: Any) -> int | None:
    return None if v is None else int(v) * 1_000_000


def _float(v: Any) -> float | None:
    return None if v is None else float(v)


def _violation_s(v: Any) -> float | None:
    t = getattr(v, "violationTime", None)
    return None if t is None else float(t) / 1e9
