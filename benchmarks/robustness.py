"""The operator under hostile sizes and churn (issue 15): solver memory at the admission limit, small
deployments' latency while large ones solve, and operator CPU under churn of unrelated pods.

Three parts, each printing a table with its baseline run in the same process:

* ``solver`` — one ``compute`` (the operator's placement work: plan, render, size check) per instance,
  each in a fresh process, from DeepSeek-V3 on 64 GPUs up to the largest instances the CRD admits
  (``instance_units`` <= ``MAX_UNITS``): peak resident memory, wall time, and the memory predicted
  from the units (``BYTES_PER_UNIT``), which is what the CRD's bound is sized from.
* ``fairness`` — in-process, the operator's ``Computer``: two of the largest admissible solves are
  submitted, then small placements one after another; the small ones' latency with the size lanes
  (now) against one shared pool of the same number of workers (the operator before issue 15).
* ``cluster`` — on the local control plane, the real operator process: its CPU seconds while 300
  unrelated pods are created and deleted (baseline: the operator source given by ``--baseline-src``,
  which watched every Pod and ConfigMap), and a small deployment's loads-change -> new placement
  ConfigMap latency while a deployment at the admission limit is being placed.

Usage::

    .venv/bin/python benchmarks/robustness.py solver fairness          # no cluster
    git archive <commit-before> vibe | tar -x -C /tmp/vibe-base         # the baseline's source
    .venv/bin/python benchmarks/robustness.py cluster --baseline-src /tmp/vibe-base

Prints markdown tables (``--json FILE`` also writes the figures).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: (label, layers, experts, GPUs, slots per GPU); the last ones are at the CRD's limit.
SHAPES = [
    ("DeepSeek-V3, EP 64 x 5 slots", 58, 256, 64, 5),
    ("DeepSeek-V3, EP 256 x 2 slots", 58, 256, 256, 2),
    ("512 layers x 128 experts, EP 128 x 1", 512, 128, 128, 1),
    ("Kimi-K2-sized, EP 384 x 2 (limit)", 61, 384, 384, 2),
    ("32 layers x 1024 experts, EP 64 x 32 (limit)", 32, 1024, 64, 32),
]
#: The issue's hostile spec (1024 x 4096 on 64 x 64: 22 GB, the host OOM-killed), refused now.
HOSTILE = ("issue 15's 1024 x 4096, EP 64 x 64", 1024, 4096, 64, 64)
SMALL = ("DeepSeek-V3, EP 32 x 9 slots", 58, 256, 32, 9)
LIMIT = SHAPES[3]


def inputs(layers: int, experts: int, gpus: int, slots: int, seed: int = 1) -> Any:
    """The operator's ``Inputs`` for an instance: measured-H100-shaped curves (one GPU 1.3x slower),
    skewed loads, the sglang format only (the smallest output)."""
    from vibe.operator.gpus import Curve, ProfileGPU, ProfileSnapshot, resolve
    from vibe.operator.planning import Inputs
    from vibe.operator.workload import Loads
    from vibe.placement.curves import reference_curve
    from vibe.placement.synthetic import skewed_loads
    from vibe.spec import parse_spec

    shape = (64, 16, "fp8")  # tiny experts: the CRD admits them, and no GPU memory check stops them
    tokens, seconds = reference_curve(*shape)
    now = dt.datetime.now(dt.timezone.utc)
    nodes = {f"n{i:04d}": {"pool": "a"} for i in range((gpus + 7) // 8)}
    profiles = {}
    for n in nodes:
        gs = tuple(
            ProfileGPU(i, f"GPU-{n}-{i}", "H100", None,
                       (Curve(*shape, tokens, seconds * (1.3 if (n, i) == ("n0000", 1) else 1.0)),))
            for i in range(8)
        )  # fmt: skip
        profiles[n] = ProfileSnapshot(n, gs, "measured", now, n)
    spec = parse_spec(
        {"model": {"layers": layers, "experts": experts, "topK": 8, "hiddenSize": shape[0],
                   "expertIntermediateSize": shape[1], "dtype": shape[2]},
         "gpus": {"nodeSelector": {"pool": "a"}, "count": gpus, "slotsPerGPU": slots},
         "output": {"formats": ["sglang"]}}
    )  # fmt: skip
    res = resolve(spec, namespace="ns", nodes=nodes, profiles=profiles, now=now, profile_ttl_s=1e9)
    return Inputs(spec, res, Loads(skewed_loads(layers, experts, mean_tokens=512, seed=seed), "bench"))


# --------------------------------------------------------------------------------------------------
# solver


_CHILD = """
import json, resource, sys, time, datetime as dt
sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r})
from robustness import inputs
from vibe.operator.compute import compute
inp = inputs({l}, {e}, {g}, {s})
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
try:
    plan, core = compute(inp, None, None, dt.datetime.now(dt.timezone.utc), 1.0)
    out = plan.reason + f" ({{sum(len(v) for v in core.values()) / 1e3:.0f}} kB)"
except Exception as exc:
    out = f"{{type(exc).__name__}}: {{getattr(exc, 'reason', '')}}"
print(json.dumps({{"seconds": time.perf_counter() - t, "baseMiB": base / 1024,
                  "peakMiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "outcome": out}}))
"""


def solver() -> dict[str, Any]:
    from vibe.operator.compute import BYTES_PER_UNIT, LARGE_UNITS, MAX_UNITS, instance_units

    rows = []
    for label, layers, e, g, s in [*SHAPES, HOSTILE]:
        units = instance_units(layers, e, g, s)
        row: dict[str, Any] = {"instance": label, "shape": f"{layers}x{e} on {g}x{s}", "unitsM": units / 1e6,
                               "predictedMiB": units * BYTES_PER_UNIT / 2**20,
                               "lane": "large" if units > LARGE_UNITS else "small"}  # fmt: skip
        if units > MAX_UNITS:
            row.update(outcome="refused at admission (CEL)", seconds=None, peakMiB=None, solverMiB=None)
        else:
            code = _CHILD.format(root=str(ROOT), bench=str(ROOT / "benchmarks"), l=layers, e=e, g=g, s=s)
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            got = json.loads(out.stdout.strip().splitlines()[-1])
            row.update(got, solverMiB=got["peakMiB"] - got["baseMiB"])
        rows.append(row)
        print(f"  {label}: {row.get('outcome')}", file=sys.stderr, flush=True)
    lines = [
        "| instance | layers x experts on GPUs x slots | units (M) | lane | predicted (MiB) | "
        "peak RSS (MiB) | solver (MiB) | time (s) | outcome |",
        "|---|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['instance']} | {r['shape']} | {r['unitsM']:.1f} | {r['lane']} | {r['predictedMiB']:.0f} | "
            f"{_num(r, 'peakMiB', '.0f')} | {_num(r, 'solverMiB', '.0f')} | {_num(r, 'seconds', '.1f')} | "
            f"{r['outcome']} |"
        )
    return {"rows": rows, "table": "\n".join(lines)}


def _num(row: dict[str, Any], key: str, fmt: str) -> str:
    return "—" if row.get(key) is None else format(row[key], fmt)


# --------------------------------------------------------------------------------------------------
# fairness


class OnePool:
    """The operator's placement pool before issue 15: one pool, every size in it."""

    def __init__(self, processes: int) -> None:
        import concurrent.futures
        import multiprocessing

        self.pool = concurrent.futures.ProcessPoolExecutor(
            processes, mp_context=multiprocessing.get_context("spawn")
        )
        self.slots = asyncio.Semaphore(processes)
        self.processes = processes

    async def warm(self) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self.pool, os.getpid) for _ in range(self.processes)))

    async def run(self, *args: Any) -> Any:
        from vibe.operator.compute import compute

        async with self.slots:
            return await asyncio.get_running_loop().run_in_executor(self.pool, compute, *args)

    def close(self) -> None:
        self.pool.shutdown(wait=True)


async def _fairness_once(computer: Any, smalls: int) -> dict[str, Any]:
    now = dt.datetime.now(dt.timezone.utc)
    big = [inputs(*LIMIT[1:], seed=s) for s in (1, 2)]
    small = [inputs(*SMALL[1:], seed=10 + i) for i in range(smalls)]
    await computer.warm()
    t0 = time.perf_counter()
    large_done: list[float] = []

    async def large(inp: Any) -> None:
        await computer.run(inp, None, None, now, 1.0)
        large_done.append(time.perf_counter() - t0)

    tasks = [asyncio.create_task(large(b)) for b in big]
    latency: list[float] = []

    async def one_small(inp: Any, at: float) -> None:  # a drift arriving at ``at`` seconds
        await asyncio.sleep(at)
        t = time.perf_counter()
        await computer.run(inp, None, None, now, 1.0)
        latency.append(time.perf_counter() - t)

    await asyncio.gather(*(one_small(inp, 0.5 + 2.0 * i) for i, inp in enumerate(small)), *tasks)
    return {"smallSeconds": latency, "largeDoneSeconds": sorted(large_done)}


def fairness(processes: int = 2, smalls: int = 5) -> dict[str, Any]:
    from vibe.operator.compute import Computer

    out = {}
    for name, make in (("one shared pool (before)", lambda: OnePool(processes)),
                       ("size lanes (now)", lambda: Computer(processes))):  # fmt: skip
        c = make()
        try:
            out[name] = asyncio.run(_fairness_once(c, smalls))
        finally:
            c.close()
        print(f"  {name}: {out[name]}", file=sys.stderr, flush=True)
    before = out["one shared pool (before)"]
    lines = [
        f"{processes} placement workers; 2 solves at the limit ({LIMIT[0]}) submitted at 0 s, then {smalls} "
        f"small placements ({SMALL[0]}) arriving every 2 s from 0.5 s, as drift would.",
        "",
        "| pool | small placement latency, median (s) | max (s) | large ones done at (s) | vs before |",
        "|---|---:|---:|---|---:|",
    ]
    base = statistics.median(before["smallSeconds"])
    for name, r in out.items():
        med = statistics.median(r["smallSeconds"])
        done = ", ".join(f"{x:.1f}" for x in r["largeDoneSeconds"])
        lines.append(f"| {name} | {med:.2f} | {max(r['smallSeconds']):.2f} | {done} | x{base / med:.1f} |")
    return {"runs": out, "table": "\n".join(lines)}


# --------------------------------------------------------------------------------------------------
# cluster


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class OperatorRun:
    def __init__(self, env: dict[str, str], src: Path, profile_ns: str) -> None:
        self.log = Path(tempfile.mkstemp(prefix="vibe-robustness-", suffix=".log")[1])
        env = {**env, "PYTHONPATH": str(src), "PYTHONUNBUFFERED": "1"}
        args = [sys.executable, "-m", "vibe.operator", "--standalone", "--metrics-port", "0",
                "--profile-namespace", profile_ns, "--compute-processes", "2",
                "--solve-budget", "1.0"]  # fmt: skip
        self.proc = subprocess.Popen(args, env=env, cwd=tempfile.gettempdir(), stdout=self.log.open("wb"),
                                     stderr=subprocess.STDOUT)  # fmt: skip

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _loads(layers: int, experts: int, seed: int) -> str:
    from vibe.placement.synthetic import skewed_loads

    return json.dumps({"loads": skewed_loads(layers, experts, mean_tokens=512, seed=seed).tolist()})


def _moed(name: str, model: dict[str, Any], gpus: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "vibe.dev/v1alpha1", "kind": "MoEDeployment", "metadata": {"name": name},
            "spec": {"model": model, "gpus": gpus, **spec}}  # fmt: skip


def _one_operator(
    core: Any, custom: Any, op: OperatorRun, ns: str, churn_ns: str, pool: str, pods: int
) -> dict:
    """CPU under pod churn, then a small deployment's latency while one at the limit is placed."""
    from vibe.cluster.waiting import wait_for

    time.sleep(8)  # started, caches filled
    cpu0, t0 = _cpu_seconds(op.proc.pid), time.monotonic()
    for i in range(pods):
        pod = {"metadata": {"name": f"churn-{i}", "labels": {"app": "unrelated"}},
               "spec": {"containers": [{"name": "c", "image": "x"}]}}  # fmt: skip
        core.create_namespaced_pod(churn_ns, pod)
    for i in range(pods):
        core.delete_namespaced_pod(f"churn-{i}", churn_ns, grace_period_seconds=0)
    wait_for(lambda: not core.list_namespaced_pod(churn_ns).items, timeout=120, what="churn gone")
    time.sleep(3)
    churn_cpu, churn_s = _cpu_seconds(op.proc.pid) - cpu0, time.monotonic() - t0

    tag = uuid.uuid4().hex[:4]
    small_model = {"layers": 4, "experts": 16, "topK": 4, "hiddenSize": 7168, "expertIntermediateSize": 2048,
                   "dtype": "fp8"}  # fmt: skip
    loads_cm, small_cm, big_cm = f"l-{tag}", f"small-{tag}-placement", f"big-{tag}-placement"
    core.create_namespaced_config_map(
        ns, {"metadata": {"name": loads_cm}, "data": {"loads.json": _loads(4, 16, 1)}}
    )
    small = _moed(f"small-{tag}", small_model, {"nodeSelector": {"rb": pool}, "count": 8, "slotsPerGPU": 3},
                  workload={"configMapRef": {"name": loads_cm}},
                  drift={"minGain": 0.0, "cooldownSeconds": 0})  # fmt: skip
    custom.create_namespaced_custom_object("vibe.dev", "v1alpha1", ns, "moedeployments", small)
    wait_for(lambda: _gen(core, ns, small_cm) >= 1, timeout=60, what="small placed")
    layers, experts, gpus, slots = LIMIT[1:]
    big_model = {"layers": layers, "experts": experts, "topK": 8, "hiddenSize": 64,
                 "expertIntermediateSize": 16, "dtype": "fp8"}  # fmt: skip
    big = _moed(f"big-{tag}", big_model, {"nodeSelector": {"rb": pool}, "count": gpus, "slotsPerGPU": slots},
                output={"formats": ["sglang"]})  # fmt: skip
    t_big = time.monotonic()
    custom.create_namespaced_custom_object("vibe.dev", "v1alpha1", ns, "moedeployments", big)
    time.sleep(2.0)  # the large solve is running
    latency = []
    for k in range(3):
        before = _gen(core, ns, small_cm)
        t = time.monotonic()
        core.patch_namespaced_config_map(loads_cm, ns, {"data": {"loads.json": _loads(4, 16, 2 + k)}})
        wait_for(lambda b=before: _gen(core, ns, small_cm) > b, timeout=120, interval=0.05, what="re-placed")
        latency.append(time.monotonic() - t)
    wait_for(lambda: _gen(core, ns, big_cm) >= 1, timeout=300, what="big placed")
    return {"churnPods": pods, "churnCpuSeconds": churn_cpu, "churnWallSeconds": churn_s,
            "smallLatencySeconds": latency, "largePlacedSeconds": time.monotonic() - t_big}  # fmt: skip


def cluster_part(baseline_src: Path, pods: int, name: str) -> dict[str, Any]:
    from kubernetes import client

    from vibe.cluster import Cluster, create_gpu_nodes
    from vibe.crds.apply import apply_crds

    sys.path.insert(0, str(ROOT / "tests" / "operator"))
    from operator_builders import profile_body

    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    cl = Cluster(name)
    started = cl.up(progress=say)
    api = cl.api_client()
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    results: dict[str, Any] = {}
    try:
        apply_crds(api)
        run = uuid.uuid4().hex[:6]
        prof_ns = f"rb-prof-{run}"
        for n in (prof_ns, f"rb-{run}", f"rb-churn-{run}"):
            core.create_namespace({"metadata": {"name": n}})
        gpus = LIMIT[3]
        for node in create_gpu_nodes((gpus + 7) // 8, 8, api=api, prefix=f"rb-{run}", labels={"rb": run}):
            body = profile_body(
                node, gpus=8, namespace=prof_ns, shapes=((64, 16, "fp8"), (7168, 2048, "fp8"))
            )
            status = {"status": body.pop("status")}
            custom.create_namespaced_custom_object("vibe.dev", "v1alpha1", prof_ns, "gpuprofiles", body)
            custom.patch_namespaced_custom_object_status(
                "vibe.dev", "v1alpha1", prof_ns, "gpuprofiles", node, status
            )
        for label, src in (("before (watches every Pod and ConfigMap)", baseline_src), ("now", ROOT)):
            say(f"operator: {label}")
            op = OperatorRun(cl.env(), src, prof_ns)
            try:
                results[label] = _one_operator(core, custom, op, f"rb-{run}", f"rb-churn-{run}", run, pods)
            finally:
                op.stop()
            say(f"  {results[label]}")
    finally:
        api.close()
        if started:
            cl.down()
    b, n = results.values()
    lines = [
        f"| operator | CPU s while {pods} unrelated pods come and go | CPU share | small deployment: loads "
        "change -> new ConfigMap (s, 3 tries) | deployment at the limit placed in (s) |",
        "|---|---:|---:|---|---:|",
    ]
    for label, r in results.items():
        share = r["churnCpuSeconds"] / r["churnWallSeconds"]
        lats = ", ".join(f"{x:.2f}" for x in r["smallLatencySeconds"])
        lines.append(
            f"| {label} | {r['churnCpuSeconds']:.2f} | {share:.1%} | {lats} | {r['largePlacedSeconds']:.1f} |"
        )
    lines.append(
        f"\nCPU under unrelated pod churn: {b['churnCpuSeconds']:.2f} s before, {n['churnCpuSeconds']:.2f} s "
        "now (CPU time is counted in 0.01 s ticks)."
    )
    return {"runs": results, "table": "\n".join(lines)}


def _gen(core: Any, ns: str, name: str) -> int:
    from kubernetes.client.exceptions import ApiException

    try:
        cm = core.read_namespaced_config_map(name, ns)
    except ApiException as e:
        if e.status == 404:
            return 0
        raise
    return int(json.loads(cm.data["placement-meta.json"])["placementGeneration"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("parts", nargs="+", choices=["solver", "fairness", "cluster"])
    ap.add_argument("--baseline-src", type=Path, help="the operator source before issue 15 (cluster part)")
    ap.add_argument("--pods", type=int, default=300)
    ap.add_argument("--cluster-name", default="vibe-robustness")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    out: dict[str, Any] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    for part in args.parts:
        print(f"== {part}", file=sys.stderr, flush=True)
        if part == "solver":
            out[part] = solver()
        elif part == "fairness":
            out[part] = fairness()
        else:
            if args.baseline_src is None:
                ap.error("cluster needs --baseline-src")
            out[part] = cluster_part(args.baseline_src, args.pods, args.cluster_name)
        print(f"\n### {part}\n\n{out[part]['table']}\n", flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
