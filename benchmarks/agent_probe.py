"""Probe of the benchmark's method on a GPU: NVML call costs, CPU vs GPU time per expert call, re-heat.

Why it exists: the first H100 runs of ``vibe agent bench`` showed flat ~200 µs fp8 points and noisy bf16
points at 16-256 tokens. This probe showed the cause (the CPU needs ~200 µs to launch one fp8 call and
~70 µs for a bf16 one, more than the GPU's 60-90 / 46-50 µs, so any gap in the queue makes the timed
calls measure the CPU) and that two NVML counters are slow (energy ~4 ms, violation ~0.8 ms). Its
output is ``benchmarks/results/gpu-h100-2026-11-23/probe.json``; see the README there.

    PYTHONPATH=. OUT=<dir> python3 benchmarks/agent_probe.py      # on the GPU machine
"""

# ruff: noqa: B023, E402, SIM115

import json
import os
import statistics
import time

import pynvml as nv
import torch

from vibe.agent.bench import BenchConfig, ExpertBank, Heater, Timer, measure_point
from vibe.agent.shapes import ExpertShape
from vibe.agent.telemetry import NvmlTelemetry

out = {}
tel = NvmlTelemetry.open()
h = nv.nvmlDeviceGetHandleByIndex(0)


def t(name, fn, n=200):
    try:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        out.setdefault("nvml", {})[name] = round((time.perf_counter() - t0) / n * 1e6, 2)
    except Exception as e:
        out.setdefault("nvml", {})[name] = repr(e)


t("sm", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM))
t("power", lambda: nv.nvmlDeviceGetPowerUsage(h))
t("limit", lambda: nv.nvmlDeviceGetEnforcedPowerLimit(h))
t("temp", lambda: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))
t("reasons", lambda: nv.nvmlDeviceGetCurrentClocksEventReasons(h))
t("viol", lambda: nv.nvmlDeviceGetViolationStatus(h, nv.NVML_PERF_POLICY_POWER))
t("util", lambda: nv.nvmlDeviceGetUtilizationRates(h))
t("energy", lambda: nv.nvmlDeviceGetTotalEnergyConsumption(h))
t(
    "ecc",
    lambda: nv.nvmlDeviceGetTotalEccErrors(h, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_VOLATILE_ECC),
)
t("procs", lambda: nv.nvmlDeviceGetComputeRunningProcesses(h), 50)
tel.sample(0)
t("sample", lambda: tel.sample(0), 50)
print(out["nvml"], flush=True)
dev = torch.device("cuda:0")
timer = Timer(torch, dev)
# fp8 cpu enqueue cost and syncs
for dtype in ("fp8", "bf16"):
    bank = ExpertBank(torch, ExpertShape(7168, 2048, dtype), dev, experts=4, max_tokens=512, seed=0)
    res = {}
    for n in (1, 2, 16, 128):
        x = bank.inputs(n)
        for k in range(3):
            bank(k % 4, x)
        torch.cuda.synchronize()
        torch.cuda._sleep(200_000_000)  # ~100+ ms hold
        t0 = time.perf_counter()
        for k in range(20):
            bank(k % 4, x)
        cpu = (time.perf_counter() - t0) / 20
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode(1)
        bank(0, x)
        torch.cuda.set_sync_debug_mode(0)
        torch.cuda.synchronize()
        # GPU time with a long lead
        times = timer.time_calls(lambda k: bank(k % 4, x), 25, lambda: torch.cuda._sleep(100_000_000))
        times2 = timer.time_calls(lambda k: bank(k % 4, x), 25)
        res[n] = {
            "cpuUsPerCall": round(cpu * 1e6, 1),
            "gpuUsLongLead": round(statistics.median(times) * 1e6, 1),
            "gpuUsShortLead": round(statistics.median(times2) * 1e6, 1),
            "cvLong": round(statistics.pstdev(times) / statistics.fmean(times), 3),
            "padded": bank.padded,
        }
    out[dtype] = res
    print(dtype, res, flush=True)
    if dtype == "fp8":
        from torch.profiler import ProfilerActivity, profile

        x = bank.inputs(16)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for k in range(8):
                bank(k % 4, x)
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14), flush=True)
    del bank
# bf16 16..512 with/without reheat after preheat
heater = Heater(torch, dev, 8192)
from vibe.agent.bench import preheat

cfg0 = BenchConfig()
ph = preheat(heater, timer, cfg0, tel, 0)
print("preheat", {k: v for k, v in ph.items() if k != "trace"}, flush=True)
bank = ExpertBank(torch, ExpertShape(7168, 2048, "bf16"), dev, experts=4, max_tokens=8192, seed=0)
for reheat in (0.05, 0.0, 0.2, 0.01):
    cfg = BenchConfig(reheat_s=reheat)
    row = []
    for n in (1, 16, 64, 256, 1024, 8192):
        p = measure_point(bank, timer, n, cfg, tel, 0, heater)
        row.append(
            (n, round(p.seconds * 1e6, 1), round(p.cv, 3), p.sm_clock_hz // 10**6 if p.sm_clock_hz else None)
        )
    print("reheat", reheat, row, flush=True)
    out.setdefault("reheat", {})[reheat] = row
json.dump(out, open(os.path.join(os.environ.get("OUT", "."), "probe.json"), "w"), indent=1, default=str)
