"""Does this node's NVIDIA driver run the CUDA build of torch the agent ships? One line when it does not.

Role: the agent's first check before any benchmark. The agent image pins torch and its CUDA variant
together (images/agent/Dockerfile: the PyPI wheel of ``TORCH_VERSION``, built for CUDA ``TORCH_CUDA``);
the CUDA user-space libraries come from that wheel, the driver from the node. A driver runs every CUDA
release of the major version it supports, from that major's minimum driver on (CUDA's minor-version
compatibility), so the rule is: the driver's CUDA major (NVML ``nvmlSystemGetCudaDriverVersion``) must be
at least torch's. When it is not, torch would fail later with a long traceback per GPU; the agent says so
once, keeps exporting telemetry (NVML needs no CUDA) and benchmarks nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: The oldest Linux driver of each CUDA major (CUDA release notes, "CUDA Toolkit and minimum driver").
MIN_DRIVER = {12: "525.60.13", 13: "580.65.06"}


@dataclass(frozen=True)
class DriverInfo:
    """What NVML says about the driver: its version text and the CUDA version it supports (e.g. 12020)."""

    version: str | None
    cuda: int | None  # major * 1000 + minor * 10, as NVML reports it


def cuda_major_minor(text: str | None) -> tuple[int, int] | None:
    """``"13.2"`` -> (13, 2); None for None or junk."""
    try:
        major, minor = str(text).split(".")[:2]
        return int(major), int(minor)
    except (TypeError, ValueError):
        return None


def driver_problem(driver: DriverInfo, torch_cuda: str | None, torch_version: str = "torch") -> str | None:
    """One line saying why the driver cannot run this torch, or None when it can (or cannot be told)."""
    want = cuda_major_minor(torch_cuda)
    if want is None or driver.cuda is None:
        return None  # a CPU build of torch, or no NVML: other messages say so
    have = (driver.cuda // 1000, (driver.cuda % 1000) // 10)
    if have[0] >= want[0]:
        return None
    need = MIN_DRIVER.get(want[0])
    return (
        f"NVIDIA driver {driver.version or '?'} supports CUDA up to {have[0]}.{have[1]}, but this agent's "
        f"{torch_version} is built for CUDA {want[0]}.{want[1]}: it needs driver "
        + (f"{need} (R{need.split('.')[0]}) or newer" if need else f"for CUDA {want[0]}")
        + "; benchmarks are off until the driver is upgraded (or use an agent image built for "
        f"CUDA {have[0]}: images/README.md)"
    )


def nvml_driver(lib: Any) -> DriverInfo:
    """The driver's version and CUDA version from an initialised ``pynvml`` module (None where unknown)."""
    version: str | None
    try:
        v = lib.nvmlSystemGetDriverVersion()
        version = v.decode() if isinstance(v, bytes) else str(v)
    except Exception:
        version = None
    cuda: int | None
    try:
        fn = getattr(lib, "nvmlSystemGetCudaDriverVersion_v2", None) or lib.nvmlSystemGetCudaDriverVersion
        cuda = int(fn())
    except Exception:
        cuda = None
    return DriverInfo(version, cuda)


def torch_cuda() -> tuple[str | None, str]:
    """(torch.version.cuda, torch.__version__), or (None, "") without torch."""
    try:
        import torch
    except ImportError:
        return None, ""
    return getattr(torch.version, "cuda", None), f"torch {torch.__version__}"
