"""The NVML layer: identity and readings, the no-driver path, unsupported fields reported once."""

from __future__ import annotations

import logging
import os

import pytest
from fakes import FakeNvml

from vibe.agent.telemetry import (
    REASON_BITS,
    NoTelemetry,
    NvmlTelemetry,
    Sample,
    own_pids,
    reason_mask,
    reason_names,
)


def test_no_driver_on_this_machine_is_reported_once_and_nothing_breaks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The real nvidia-ml-py without a driver (CI, laptops): unavailable, a clear message, empty readings."""
    with caplog.at_level(logging.WARNING):
        tel = NvmlTelemetry.open()
    if tel.available:
        pytest.skip("this machine has an NVIDIA driver")
    assert "NVML" in tel.error or "nvidia-ml-py" in tel.error
    assert tel.gpus() == []
    s = tel.sample(0)
    assert s.sm_clock_hz is None and s.reasons == [] and s.compute_processes is None
    assert len(tel.problems) == 1 and "no GPU telemetry" in tel.problems[0]
    assert sum("NVML unavailable" in r.message for r in caplog.records) == 1
    tel.close()


def test_init_error_from_the_library() -> None:
    fake = FakeNvml(init_error=FakeNvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    tel = NvmlTelemetry.open(lib=fake)
    assert not tel.available
    assert "12" in tel.error
    assert tel.gpus() == [] and tel.count() == 0


def test_identity_and_readings() -> None:
    fake = FakeNvml(gpus=2)
    fake.pids[1] = [4242]
    tel = NvmlTelemetry.open(lib=fake)
    gpus = tel.gpus()
    assert [g.uuid for g in gpus] == ["GPU-fake-0", "GPU-fake-1"]
    g = gpus[0]
    assert g.product == "NVIDIA H100 80GB HBM3"
    assert g.pci_bus_id == "00000000:18:00.0"
    assert g.memory_bytes == 80 * 2**30
    assert g.max_sm_clock_hz == 1_980_000_000 and g.max_mem_clock_hz == 2_619_000_000
    assert g.mig_enabled is False and g.fp8 is True
    s = tel.sample(0)
    assert s.sm_clock_hz == 1_500_000_000 and s.mem_clock_hz == 2_619_000_000
    assert s.power_w == 690.0 and s.power_limit_w == 700.0 and s.temperature_c == 61.0
    assert s.reasons == ["SwPowerCap"]
    assert s.power_violation_s == 2.5 and s.thermal_violation_s == 0.0
    assert s.utilization_pct == 97.0 and s.energy_j == 123_456.0
    assert s.ecc_uncorrected == 0 and s.ecc_corrected == 0
    assert s.compute_processes == 0
    assert tel.sample(1).compute_pids == (4242,)
    assert tel.problems == []


def test_unsupported_fields_are_reported_once_and_read_as_none(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeNvml(gpus=2, unsupported=frozenset({"ecc", "violation", "temperature", "mig", "xid"}))
    tel = NvmlTelemetry.open(lib=fake)
    tel.SLOW_EVERY_S = 0.0  # re-read the slow counters on every sample
    with caplog.at_level(logging.WARNING):
        gpus = tel.gpus()
        for _ in range(5):
            for i in range(2):
                s = tel.sample(i)
                assert s.ecc_uncorrected is None and s.ecc_corrected is None
                assert s.power_violation_s is None and s.thermal_violation_s is None
                assert s.temperature_c is None
                assert s.sm_clock_hz == 1_500_000_000  # the rest keeps working
                assert s.power_w == 690.0
    assert all(g.mig_enabled is None for g in gpus)  # MIG is optional: unknown, not an error
    # One message per (GPU, field): ecc, power-violation, thermal-violation, temperature, xid-events.
    assert len(tel.problems) == 2 * 5, tel.problems
    assert len(set(tel.problems)) == len(tel.problems)
    assert all("not supported" in p for p in tel.problems)
    assert len(caplog.records) == len(tel.problems)


def test_failing_fields_and_a_lost_gpu_are_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    """Errors other than NotSupported (a GPU off the bus, an unknown error) read as None, reported once."""
    lost = FakeNvml.NVML_ERROR_GPU_IS_LOST
    fake = FakeNvml(gpus=3, errors={"power": lost, "energy": 999}, lost_handles=frozenset({2}))
    tel = NvmlTelemetry.open(lib=fake)
    tel.SLOW_EVERY_S = 0.0
    with caplog.at_level(logging.WARNING):
        gpus = tel.gpus()
        for _ in range(4):
            for i in range(3):
                s = tel.sample(i)
                if i == 2:  # no handle: an empty sample, not an exception
                    assert s.sm_clock_hz is None and s.power_w is None and s.compute_pids is None
                    continue
                assert s.power_w is None and s.energy_j is None
                assert s.sm_clock_hz == 1_500_000_000 and s.temperature_c == 61.0  # the rest keeps working
                assert s.power_violation_s == 2.5
    assert [g.index for g in gpus] == [0, 1]  # the lost GPU is left out, the others are listed
    # power and energy on GPUs 0 and 1, the handle of GPU 2: each once, naming the GPU and the error.
    assert len(tel.problems) == 5, tel.problems
    assert sum("GPU 2: handle failed" in p and "15" in p for p in tel.problems) == 1
    assert sum(p.startswith("GPU 0: power failed") for p in tel.problems) == 1
    assert sum(p.startswith("GPU 1: energy failed") and "999" in p for p in tel.problems) == 1
    assert len(caplog.records) == len(tel.problems)


def test_slow_counters_are_cached() -> None:
    fake = FakeNvml(gpus=1)
    tel = NvmlTelemetry.open(lib=fake)
    for _ in range(20):
        tel.sample(0)
    assert fake.calls["clock"] == 40  # SM and memory clock, every sample
    assert fake.calls["energy"] == 1  # once per SLOW_EVERY_S
    assert fake.calls["violation"] == 2


def test_xid_events_are_drained_and_counted() -> None:
    fake = FakeNvml(gpus=1)
    tel = NvmlTelemetry.open(lib=fake)
    assert tel.sample(0).xids == ()
    fake.xids[0] = [79, 48]
    assert tel.sample(0).xids == (79, 48)
    assert tel.sample(0).xids == ()


def test_reason_names_and_masks() -> None:
    assert reason_names(None) == []
    assert reason_names(0) == []
    assert reason_names(0x4 | 0x8) == ["SwPowerCap", "HwSlowdown"]
    assert reason_names(0x4 | 0x10000) == ["SwPowerCap", "0x10000"]
    for bit, name in REASON_BITS.items():
        assert reason_mask([name]) == bit
    assert reason_mask(["SwPowerCap", "HwSlowdown", "SwPowerCap"]) == 0xC


def test_own_pids_and_other_processes() -> None:
    own = own_pids()
    assert os.getpid() in own
    s = Sample(time=0.0, compute_pids=(os.getpid(), 999_999_999))
    assert s.compute_processes == 2
    assert s.other_processes(own) == 1
    assert Sample(time=0.0).other_processes(own) is None


def test_no_telemetry_source() -> None:
    src = NoTelemetry()
    assert not src.available and src.gpus() == [] and src.sample(3).sm_clock_hz is None


def test_sample_as_dict_is_json_friendly() -> None:
    import json

    s = Sample(time=1.0, sm_clock_hz=1, clock_event_reasons=0x4, compute_pids=(1,), xids=(79,))
    d = json.loads(json.dumps(s.as_dict()))
    assert d["clockEventReasons"] == ["SwPowerCap"] and d["xids"] == [79] and d["compute_pids"] == [1]
