"""Does the node agent mistake a busy GPU for a slow one? The agent on a real GPU, idle, then serving-like
load, then idle again.

The agent (``vibe agent run``, real NVML and torch, profiles written to files: no cluster needed)
benchmarks the idle GPU at its first step (pre-heated to the power cap, as every profile is), then polls
telemetry every second. A second process then drives the same GPU flat out with bf16 GEMMs, as a
serving engine does: the SM clock falls to what the power cap allows. A right agent reads that as the
clock its profile was measured at, not as drift; a real slowdown (a lower power limit, a thermal or
hardware brake) would move the clock below it. The table compares the three phases by the agent's own
metrics: SM clock, power, drift events, and what its GPUProfile says afterwards.

Usage (on a GPU machine, from the repository root)::

    PYTHONPATH=. python3 benchmarks/agent_under_load.py --out OUT_DIR [--idle 20 --load 30 --after 15]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from vibe.cluster.processes import free_port

ROOT = Path(__file__).resolve().parents[1]
NODE = "gpu-under-load"

LOAD = """
import sys, time, torch
secs = float(sys.argv[1])
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
t0, n = time.time(), 0
while time.time() - t0 < secs:
    for _ in range(20):
        a @ b
    torch.cuda.synchronize()
    n += 20
print(f"load: {n} GEMMs of 8192^3 bf16 in {time.time() - t0:.1f} s", flush=True)
"""


def scrape(port: int) -> dict[str, float]:
    """GPU 0's samples of the agent's /metrics, by metric name (labels dropped)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.labels.get("gpu", "0") != "0" or "reason" in s.labels or "shape" in s.labels:
                continue
            if s.name == "vibe_gpu_drift_events_total":  # one series per state entered: add them up
                out[s.name] = out.get(s.name, 0.0) + s.value
            else:
                out.setdefault(s.name, s.value)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--idle", type=float, default=20.0, help="seconds idle after the first profile")
    ap.add_argument("--load", type=float, default=30.0, help="seconds of GEMM load")
    ap.add_argument("--after", type=float, default=15.0, help="seconds idle after the load")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NODE_NAME": NODE}
    log = (args.out / "agent.log").open("w")
    agent = subprocess.Popen(
        [sys.executable, "-m", "vibe.agent", "run", "--out-dir", str(args.out / "profiles"),
         "--metrics-port", str(port), "--metrics-addr", "127.0.0.1", "--poll-seconds", "1",
         "--no-curve-metrics", "--telemetry-metrics", "--duration", "600"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
    )  # fmt: skip
    samples: list[dict] = []
    t0 = time.monotonic()
    try:
        # The first step benchmarks the idle GPU; the profile lands when it is done.
        while not list((args.out / "profiles").glob(f"*/{NODE}.json")):
            if agent.poll() is not None:
                raise SystemExit(f"the agent exited:\n{(args.out / 'agent.log').read_text()[-3000:]}")
            if time.monotonic() - t0 > 180:
                raise SystemExit("no profile after 180 s")
            time.sleep(0.5)
        print(f"profile written after {time.monotonic() - t0:.1f} s", flush=True)

        def sample_for(phase: str, seconds: float) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                m = scrape(port)
                samples.append({"phase": phase, "t": round(time.monotonic() - t0, 2), **m})
                time.sleep(1.0)

        sample_for("idle", args.idle)
        load = subprocess.Popen(
            [sys.executable, "-c", LOAD, str(args.load)], stdout=subprocess.PIPE, text=True
        )
        sample_for("load", args.load)
        load_out = load.communicate(timeout=60)[0].strip()
        print(load_out, flush=True)
        sample_for("after", args.after)
    finally:
        agent.terminate()
        agent.wait(30)
    profile = json.loads(next((args.out / "profiles").glob(f"*/{NODE}.json")).read_text())
    (args.out / "samples.json").write_text(json.dumps(samples, indent=1) + "\n")

    rows = []
    for phase in ("idle", "load", "after"):
        ss = [s for s in samples if s["phase"] == phase]
        med = lambda k, ss=ss: statistics.median(s[k] for s in ss if k in s)  # noqa: E731
        rows.append(
            f"| {phase} | {len(ss)} | {med('vibe_gpu_sm_clock_hertz') / 1e6:.0f} MHz "
            f"| {med('vibe_gpu_power_watts'):.0f} W | {med('vibe_gpu_utilization_ratio'):.2f} "
            f"| {max(s.get('vibe_gpu_drift_events_total', 0) for s in ss):.0f} "
            f"| {max(s.get('vibe_gpu_drifted', 0) for s in ss):.0f} |"
        )
    gpu0 = profile["spec"]["gpus"][0]
    table = "\n".join(
        [
            "| phase | samples | SM clock (median) | power (median) | utilization | drift events (total) "
            "| drifted |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"GPUProfile afterwards: GPU 0 drift {json.dumps(gpu0.get('drift'))}; telemetry at the "
            f"benchmark: SM clock {gpu0['telemetry']['smClockHz'] / 1e6:.0f} MHz, "
            f"{gpu0['telemetry']['powerW']:.0f} W, {gpu0['telemetry']['clockEventReasons']}.",
            f"{load_out}",
        ]
    )
    print(table)
    (args.out / "under_load.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
