"""The driver check: one clear line when the node's driver cannot run the CUDA build of torch we ship."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fakes import FakeNvml

from vibe.agent.cuda import MIN_DRIVER, DriverInfo, driver_problem, torch_cuda
from vibe.agent.node import NodeAgent
from vibe.agent.profiler import TorchProfiler
from vibe.agent.telemetry import NvmlTelemetry

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "images" / "agent" / "Dockerfile"


def test_an_r535_driver_is_too_old_for_a_cuda_13_torch() -> None:
    line = driver_problem(DriverInfo("535.104.05", 12020), "13.2", "torch 2.15.0+cu132")
    assert line is not None and "\n" not in line
    assert line.startswith("NVIDIA driver 535.104.05 supports CUDA up to 12.2")
    assert "torch 2.15.0+cu132 is built for CUDA 13.2" in line
    assert "needs driver 580.65.06 (R580) or newer" in line


@pytest.mark.parametrize(
    ("cuda", "torch_cuda_version"),
    [(13000, "13.2"), (13020, "13.2"), (12080, "12.8"), (12020, "12.8"), (13000, "12.8")],
)
def test_a_driver_of_the_same_or_a_newer_cuda_major_is_fine(cuda: int, torch_cuda_version: str) -> None:
    # Minor-version compatibility: a CUDA 12.2 driver runs a CUDA 12.8 build.
    assert driver_problem(DriverInfo("x", cuda), torch_cuda_version) is None


@pytest.mark.parametrize("info", [DriverInfo(None, None), DriverInfo("580", None)])
def test_nothing_is_said_without_a_cuda_torch_or_nvml(info: DriverInfo) -> None:
    assert driver_problem(info, "13.2") is None
    assert driver_problem(DriverInfo("535", 12020), None) is None  # a CPU build of torch


def test_nvml_reports_the_driver_and_a_failing_call_is_unknown() -> None:
    fake = FakeNvml(gpus=1)
    fake.driver_version, fake.cuda_driver_version = "535.104.05", 12020
    assert NvmlTelemetry.open(lib=fake).driver() == DriverInfo("535.104.05", 12020)
    broken = FakeNvml(gpus=1, unsupported=frozenset({"cuda-driver"}))
    assert NvmlTelemetry.open(lib=broken).driver().cuda is None


def test_a_disabled_profiler_never_benchmarks() -> None:
    fake = FakeNvml(gpus=2)
    tel = NvmlTelemetry.open(lib=fake)
    profiler = TorchProfiler(tel, disabled="driver too old")
    agent = NodeAgent("n", tel, profiler)
    for _ in range(3):
        agent.step()  # would import torch and fail per GPU without the flag
    assert all(not r.curves for r in agent.records.values())
    assert not [e for e in agent.events if e.reason == "BenchmarkFailed"]


def test_the_image_pins_the_torch_ci_tests_and_its_cuda_is_known() -> None:
    """The agent image installs the torch version CI runs, built for the CUDA it declares, whose minimum
    driver the check knows (the check would be silent for a major it does not know)."""
    text = DOCKERFILE.read_text()
    version = re.search(r"^ARG TORCH_VERSION=(\S+)$", text, re.MULTILINE)
    cuda = re.search(r"^ARG TORCH_CUDA=(\d+)\.(\d+)$", text, re.MULTILINE)
    assert version and cuda
    assert int(cuda.group(1)) in MIN_DRIVER
    assert f"R{MIN_DRIVER[int(cuda.group(1))].split('.')[0]}" in (ROOT / "images" / "README.md").read_text()
    have_cuda, have_torch = torch_cuda()
    if not have_torch:
        pytest.skip("torch is not installed here (the bench extra)")
    assert have_torch == f"torch {version.group(1)}+cu{cuda.group(1)}{cuda.group(2)}"
    assert have_cuda == f"{cuda.group(1)}.{cuda.group(2)}"
