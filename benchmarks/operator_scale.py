"""How the operator scales: 1,000 fake GPU nodes x 8 GPUs, 50 MoEDeployments, one GPU drifting at a time.

Runs against the local control plane (``vibe.cluster``: real kube-apiserver, kwok nodes) with the
operator as its own process, exactly as ``vibe operator`` runs in a cluster. Measures:

* the time from creating 50 MoEDeployments (DeepSeek-V3 and Qwen3-235B shapes, EP 8 to 64, each on its
  own node pool, loads from a ConfigMap) until every one is ``Ready``;
* for several single-GPU drifts (one GPUProfile's spec patched, as the agent does on a persistent
  slowdown): the time until the affected placement ConfigMap holds a new generation, and how many
  deployments were touched at all (status or ConfigMap written) — only the affected one should be;
* the operator's peak resident memory (VmHWM) and the time to start and fill its caches.

Usage::

    .venv/bin/python benchmarks/operator_scale.py   # writes benchmarks/results/operator_scale.{md,json}
    .venv/bin/python benchmarks/operator_scale.py --nodes 200 --deployments 10 --drifts 3 --no-write

The cluster (``--cluster``, default ``vibe-bench``) is started if needed and torn down afterwards unless
``--keep`` is given.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from vibe import api, contract
from vibe.cluster.processes import free_port

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
G, V = api.GROUP, api.VERSION
NS, PROFILE_NS = "vibe-bench", "vibe-system"
POOL = api.PREFIX + "bench-pool"

MODELS = {
    "deepseek-v3": {
        "layers": 58,
        "experts": 256,
        "topK": 8,
        "hiddenSize": 7168,
        "expertIntermediateSize": 2048,
        "dtype": "fp8",
    },
    "qwen3-235b": {
        "layers": 94,
        "experts": 128,
        "topK": 8,
        "hiddenSize": 4096,
        "expertIntermediateSize": 1536,
        "dtype": "bf16",
    },
}
EP_SIZES = (8, 16, 32, 64)
TOKENS_PER_STEP = 16384
#: Expert slots a drift re-placement may change (each one a weight copy onto a serving GPU: 44 MB for
#: a DeepSeek-V3 expert).
MAX_MOVES = 64


def deployments(n: int) -> list[dict[str, Any]]:
    """n deployments alternating DeepSeek-V3 / Qwen3, EP cycling 8..64 (DeepSeek-V3 from 16: 8 GPUs cannot
    hold its experts)."""
    out = []
    for i in range(n):
        model = "deepseek-v3" if i % 2 == 0 else "qwen3-235b"
        ep = EP_SIZES[(i // 2) % len(EP_SIZES)]
        if model == "deepseek-v3" and ep == 8:
            ep = 16
        experts = MODELS[model]["experts"]
        slots = math.ceil(experts / ep) + 1  # every expert once, plus one redundant slot per GPU
        out.append(
            {"name": f"{model}-{i:02d}", "model": model, "ep": ep, "slots": slots, "pool": f"p{i:02d}"}
        )
    return out


def profile_body(node: str, speeds: list[float]) -> dict[str, Any]:
    """A simulated GPUProfile (like the agent's ``source: simulated``): the H100 reference / speed."""
    from vibe.placement.curves import reference_curve

    curves = []
    for name, m in MODELS.items():
        tokens, seconds = reference_curve(m["hiddenSize"], m["expertIntermediateSize"], m["dtype"])
        curves.append((name, m, tokens, seconds))
    gpus = []
    for i, speed in enumerate(speeds):
        gpus.append(
            {
                "index": i,
                "uuid": f"GPU-{node}-{i}",
                "product": "NVIDIA H100 80GB HBM3",
                "memoryBytes": 85520809984,
                "relativeSpeed": round(speed, 4),
                "curves": [
                    {
                        "name": name,
                        "hiddenSize": m["hiddenSize"],
                        "intermediateSize": m["expertIntermediateSize"],
                        "dtype": m["dtype"],
                        "tokens": [int(t) for t in tokens],
                        "seconds": [float(f"{s / speed:.6g}") for s in seconds],
                    }
                    for name, m, tokens, seconds in curves
                ],
                "drift": {"state": "Stable", "timeScale": 1.0, "reason": ""},
            }
        )
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.GPUPROFILE_KIND,
        "metadata": {"name": node, "namespace": PROFILE_NS, "labels": {api.LABEL_NODE: node}},
        "spec": {"nodeName": node, "source": "simulated", "agentVersion": "bench", "gpus": gpus},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cluster", default="vibe-bench")
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--gpus-per-node", type=int, default=8)
    ap.add_argument("--deployments", type=int, default=50)
    ap.add_argument("--drifts", type=int, default=8)
    ap.add_argument("--solve-budget", type=float, default=1.0)
    ap.add_argument("--keep", action="store_true", help="leave the cluster running")
    ap.add_argument("--no-write", action="store_true", help="print the table, do not write results")
    args = ap.parse_args()

    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from vibe.cluster import Cluster, create_gpu_nodes
    from vibe.crds.apply import apply_crds

    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    cluster = Cluster(args.cluster)
    started = cluster.up(progress=say)
    kube = cluster.api_client()
    core, custom = client.CoreV1Api(kube), client.CustomObjectsApi(kube)
    op = None
    try:
        apply_crds(kube)  # and wait until they are served
        for ns in (NS, PROFILE_NS):
            _ignore_conflict(lambda ns=ns: core.create_namespace({"metadata": {"name": ns}}))
        reset(core, custom)  # a kept cluster may hold a previous run's objects

        plan = deployments(args.deployments)
        gpn = args.gpus_per_node
        used = sum(d["ep"] // gpn for d in plan)
        if used > args.nodes:
            raise SystemExit(
                f"{args.deployments} deployments need {used} nodes, more than --nodes {args.nodes}"
            )
        say(f"creating {args.nodes} nodes x {gpn} GPUs ({used} in {len(plan)} pools, the rest spare)")
        t = time.monotonic()
        nodes_of: dict[str, list[str]] = {}
        for d in plan:
            prefix, labels = f"bench-{d['pool']}", {POOL: d["pool"]}
            nodes_of[d["pool"]] = create_gpu_nodes(
                d["ep"] // gpn, gpn, api=kube, prefix=prefix, labels=labels
            )
        spare = create_gpu_nodes(
            args.nodes - used, gpn, api=kube, prefix="bench-spare", labels={POOL: "spare"}
        )
        all_nodes = [n for ns in nodes_of.values() for n in ns] + spare
        t_nodes = time.monotonic() - t

        say(f"writing {len(all_nodes)} GPUProfiles (8 % spread, a few 1.5x outliers)")
        rng = np.random.default_rng(7)
        t = time.monotonic()
        heartbeat = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

        def put(node: str) -> None:
            speeds = [1.0 / (1.0 + 0.08 * abs(float(rng.standard_normal()))) for _ in range(gpn)]
            if rng.random() < 0.01:
                speeds[int(rng.integers(gpn))] /= 1.5
            body = profile_body(node, speeds)
            try:
                custom.create_namespaced_custom_object(
                    G, V, PROFILE_NS, api.GPUPROFILE_PLURAL, body, _preload_content=False
                )
            except ApiException as e:
                if e.status != 409:
                    raise
                custom.patch_namespaced_custom_object(
                    G,
                    V,
                    PROFILE_NS,
                    api.GPUPROFILE_PLURAL,
                    node,
                    {"spec": body["spec"]},
                    _preload_content=False,
                )
            status = {"status": {"heartbeatTime": heartbeat, "heartbeatSeconds": 30}}
            custom.patch_namespaced_custom_object_status(
                G, V, PROFILE_NS, api.GPUPROFILE_PLURAL, node, status, _preload_content=False
            )

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(put, all_nodes))
        t_profiles = time.monotonic() - t

        from vibe.placement.synthetic import skewed_loads

        for model, m in MODELS.items():
            mean = TOKENS_PER_STEP * m["topK"] / m["experts"]
            loads = skewed_loads(m["layers"], m["experts"], mean_tokens=mean, seed=len(model))
            body = {
                "metadata": {"name": f"{model}-loads"},
                "data": {"loads.json": json.dumps({"loads": loads.tolist()})},
            }
            _ignore_conflict(lambda body=body: core.create_namespaced_config_map(NS, body))

        say("starting the operator")
        op = Operator(cluster.env(), args.solve_budget)
        t_start = op.start()

        say(f"creating {len(plan)} MoEDeployments")
        t0 = time.monotonic()
        for d in plan:
            custom.create_namespaced_custom_object(G, V, NS, api.MOEDEPLOYMENT_PLURAL, moed_body(d))
        ready_at = wait_all_ready(custom, [d["name"] for d in plan], t0, timeout=900)
        t_all_ready = max(ready_at.values())
        load_ready = os.getloadavg()[0]
        say(f"all {len(plan)} Ready after {t_all_ready:.1f} s")
        time.sleep(2)

        say(f"{args.drifts} single-GPU drifts")
        drifts = []
        for k in range(args.drifts):
            d = plan[(k * 7) % len(plan)]
            node = nodes_of[d["pool"]][0]
            before = snapshot(core, custom)
            gen, rv = generation(core, f"{d['name']}-placement")
            body = custom.get_namespaced_custom_object(G, V, PROFILE_NS, api.GPUPROFILE_PLURAL, node)
            spec = body["spec"]
            g0 = spec["gpus"][0]
            g0["drift"] = {"state": "Drifted", "timeScale": 1.5, "reason": "benchmark: HwSlowdown"}
            for c in g0["curves"]:
                c["seconds"] = [float(f"{s * 1.5:.6g}") for s in c["seconds"]]
            t = time.monotonic()
            custom.patch_namespaced_custom_object(
                G, V, PROFILE_NS, api.GPUPROFILE_PLURAL, node, {"spec": spec}
            )
            if not watch_generation(core, f"{d['name']}-placement", gen, rv, timeout=60):
                raise SystemExit(f"drift on {node} did not re-place {d['name']} within 60 s")
            latency = time.monotonic() - t
            time.sleep(2.0)  # let anything else the drift set off show up
            after = snapshot(core, custom)
            touched = sorted(n for n in after if after[n] != before.get(n))
            phases = op.phases(d["name"], gen + 1)
            drifts.append(
                {"deployment": d["name"], "ep": d["ep"], "node": node, "latency_s": round(latency, 3),
                 "touched": touched, "operator": phases, "load": round(os.getloadavg()[0], 1)}
            )  # fmt: skip
            say(f"  {d['name']} (EP {d['ep']}): re-placed in {latency:.2f} s ({phases}), touched {touched}")

        peak_mib, peak_all_mib = op.memory_mib()
        reconciles = op.reconciles()
    finally:
        if op is not None:
            op.stop()
        kube.close()
        if started and not args.keep:
            cluster.down()

    lat = [x["latency_s"] for x in drifts]
    touched = [len(x["touched"]) for x in drifts]
    result = {
        "setup": {
            "nodes": args.nodes, "gpusPerNode": gpn, "gpus": args.nodes * gpn, "deployments": len(plan),
            "epSizes": sorted({d["ep"] for d in plan}), "maxMoves": MAX_MOVES,
            "solveBudgetSeconds": args.solve_budget, "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadAverageAtReady": round(load_ready, 1),
        },
        "createNodesSeconds": round(t_nodes, 2),
        "writeProfilesSeconds": round(t_profiles, 2),
        "operatorStartSeconds": round(t_start, 2),
        "allReadySeconds": round(t_all_ready, 2),
        "readySecondsMedian": round(statistics.median(ready_at.values()), 2),
        "drift": drifts,
        "driftLatencySeconds": {"median": round(statistics.median(lat), 3), "max": round(max(lat), 3)},
        "driftTouchedDeploymentsMax": max(touched),
        "peakRssMiB": round(peak_mib, 1),
        "peakRssWithWorkersMiB": round(peak_all_mib, 1),
        "reconciles": reconciles,
    }  # fmt: skip
    table = render(result)
    print(table)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "operator_scale.json").write_text(json.dumps(result, indent=2) + "\n")
        (RESULTS / "operator_scale.md").write_text(table)
    return 0


def reset(core: Any, custom: Any) -> None:
    """Remove a previous run's MoEDeployments (no operator runs now: drop its finalizer) and ConfigMaps."""
    items = json.loads(
        custom.list_namespaced_custom_object(G, V, NS, api.MOEDEPLOYMENT_PLURAL, _preload_content=False).data
    )
    for m in items["items"]:
        name = m["metadata"]["name"]
        custom.patch_namespaced_custom_object(
            G, V, NS, api.MOEDEPLOYMENT_PLURAL, name, {"metadata": {"finalizers": None}}
        )
        custom.delete_namespaced_custom_object(G, V, NS, api.MOEDEPLOYMENT_PLURAL, name)
    core.delete_collection_namespaced_config_map(NS, label_selector="app.kubernetes.io/managed-by=vibe")
    while json.loads(
        custom.list_namespaced_custom_object(G, V, NS, api.MOEDEPLOYMENT_PLURAL, _preload_content=False).data
    )["items"]:
        time.sleep(0.2)


def moed_body(d: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.MOEDEPLOYMENT_KIND,
        "metadata": {"name": d["name"]},
        "spec": {
            "model": dict(MODELS[d["model"]]),
            "gpus": {"nodeSelector": {POOL: d["pool"]}, "count": d["ep"], "slotsPerGPU": d["slots"]},
            "workload": {"configMapRef": {"name": f"{d['model']}-loads"}, "tokensPerStep": TOKENS_PER_STEP},
            "drift": {"minGain": 0.01, "cooldownSeconds": 0, "maxMoves": MAX_MOVES},
        },
    }


def wait_all_ready(custom: Any, names: list[str], t0: float, timeout: float) -> dict[str, float]:
    ready: dict[str, float] = {}
    while len(ready) < len(names):
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"only {len(ready)} of {len(names)} Ready after {timeout:.0f} s")
        rsp = custom.list_namespaced_custom_object(G, V, NS, api.MOEDEPLOYMENT_PLURAL, _preload_content=False)
        now = time.monotonic() - t0
        for item in json.loads(rsp.data)["items"]:
            name = item["metadata"]["name"]
            conds = {c["type"]: c for c in (item.get("status") or {}).get("conditions") or ()}
            if name not in ready and conds.get("Ready", {}).get("status") == "True":
                ready[name] = now
            elif conds.get("Ready", {}).get("status") == "False":
                print(f"  {name}: {conds['Ready']['reason']}: {conds['Ready']['message']}", file=sys.stderr)
        time.sleep(0.2)
    return ready


def snapshot(core: Any, custom: Any) -> dict[str, tuple[str, str]]:
    """deployment -> (its resourceVersion, its placement ConfigMap's): what a reconcile would change."""
    moeds = json.loads(
        custom.list_namespaced_custom_object(G, V, NS, api.MOEDEPLOYMENT_PLURAL, _preload_content=False).data
    )
    cms = json.loads(core.list_namespaced_config_map(NS, _preload_content=False).data)
    cm_rv = {c["metadata"]["name"]: c["metadata"]["resourceVersion"] for c in cms["items"]}
    return {
        m["metadata"]["name"]: (
            m["metadata"]["resourceVersion"],
            cm_rv.get(f"{m['metadata']['name']}-placement", ""),
        )
        for m in moeds["items"]
    }


def generation(core: Any, name: str) -> tuple[int, str]:
    meta = json.loads(core.read_namespaced_config_map(name, NS, _preload_content=False).data)["metadata"]
    return int(meta["annotations"][contract.ANNOTATION_PLACEMENT_GENERATION]), meta["resourceVersion"]


def watch_generation(core: Any, name: str, gen: int, rv: str, timeout: float) -> bool:
    """Block on a watch of one ConfigMap until its placement generation moves past ``gen``."""
    from kubernetes import watch

    w = watch.Watch()
    stream = w.stream(
        core.list_namespaced_config_map, NS, field_selector=f"metadata.name={name}", resource_version=rv,
        timeout_seconds=int(timeout),
    )  # fmt: skip
    for ev in stream:
        ann = ev["object"].metadata.annotations or {}
        if int(ann.get(contract.ANNOTATION_PLACEMENT_GENERATION, gen)) > gen:
            w.stop()
            return True
    return False


class Operator:
    """``python -m vibe.operator`` as a child process; its memory read from /proc."""

    def __init__(self, env: dict[str, str], solve_budget: float) -> None:
        self.env = {**env, "PYTHONUNBUFFERED": "1"}
        self.metrics_port, self.health_port = free_port(), free_port()
        self.solve_budget = solve_budget
        self.log = Path(tempfile.mkstemp(prefix="vibe-operator-bench-", suffix=".log")[1])
        self.proc: subprocess.Popen | None = None

    def start(self) -> float:
        t = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vibe.operator", "--standalone", "--profile-namespace", PROFILE_NS,
             "--metrics-port", str(self.metrics_port), "--liveness", f"http://127.0.0.1:{self.health_port}/healthz",
             "--resync", "600", "--solve-budget", str(self.solve_budget),
             "--profile-ttl", "86400"],  # no agents heartbeat here: the profiles must not go stale
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT, env=self.env, cwd=ROOT,
        )  # fmt: skip
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"operator exited:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=1):
                    return time.monotonic() - t
            except OSError:
                time.sleep(0.1)

    def memory_mib(self) -> tuple[float, float]:
        """(peak RSS of the operator process, peak RSS of it plus its placement workers), MiB."""
        main = _vm(self.proc.pid, "VmHWM")
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return main, main + sum(_vm(int(c), "VmHWM") for c in children)

    def phases(self, name: str, generation: int) -> dict[str, float]:
        """The operator's own account of one write: seconds reading, planning, writing (from its log)."""
        pat = re.compile(
            rf"{NS}/{re.escape(name)}: placement generation {generation} \(\w+\): "
            r"read ([\d.]+) s, plan ([\d.]+) s, write ([\d.]+) s"
        )
        for line in reversed(self.log.read_text(errors="replace").splitlines()):
            m = pat.search(line)
            if m:
                return {"read": float(m[1]), "plan": float(m[2]), "write": float(m[3])}
        return {}

    def reconciles(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line.startswith("vibe_reconcile_duration_seconds_count{"):
                outcome = line.split('outcome="')[1].split('"')[0]
                out[outcome] = float(line.rsplit(" ", 1)[1])
        return out

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def render(r: dict[str, Any]) -> str:
    s = r["setup"]
    n, dl = s["deployments"], r["driftLatencySeconds"]
    lines = [
        "# Operator at scale",
        "",
        f"{s['nodes']} fake GPU nodes x {s['gpusPerNode']} GPUs ({s['gpus']} GPUs with GPUProfiles), {n} "
        f"MoEDeployments (DeepSeek-V3 and Qwen3-235B shapes, EP {s['epSizes']}, loads from ConfigMaps, "
        f"drift maxMoves {s['maxMoves']}) on the local control plane (kube-apiserver on kine, kwok nodes), "
        f"the operator as one process with its placement workers, solve budget {s['solveBudgetSeconds']} s. "
        f"Machine: {s['cpus']} CPUs shared with the control plane and other work (load average "
        f"{s['loadAverageAtReady']} when all were Ready), Python {s['python']}. "
        "Produced by `benchmarks/operator_scale.py`.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| create {s['nodes']} nodes / write their GPUProfiles | {r['createNodesSeconds']} s / "
        f"{r['writeProfilesSeconds']} s |",
        f"| operator start until live (caches filled) | {r['operatorStartSeconds']} s |",
        f"| all {n} MoEDeployments Ready after creation | {r['allReadySeconds']} s "
        f"(median one {r['readySecondsMedian']} s) |",
        f"| one GPUProfile drift -> affected ConfigMap re-placed | median {dl['median']} s, "
        f"max {dl['max']} s (target < 2 s) |",
        f"| deployments touched per drift | at most {r['driftTouchedDeploymentsMax']} of {n} "
        "(target < 10 %) |",
        f"| operator peak memory (VmHWM) | {r['peakRssMiB']} MiB; with its placement workers "
        f"{r['peakRssWithWorkersMiB']} MiB |",
        "",
        "Drifts (one GPU's profile made 1.5x slower), with the operator's own split of the reconcile:",
        "",
        "| drift | EP | ConfigMap re-placed after | read / plan / write | deployments touched | load avg |",
        "|---|---|---|---|---|---|",
    ]
    for d in r["drift"]:
        ph = d.get("operator") or {}
        split = f"{ph.get('read', '?')} / {ph.get('plan', '?')} / {ph.get('write', '?')} s"
        lines.append(
            f"| {d['node']} GPU 0 x1.5 -> {d['deployment']} | {d['ep']} | {d['latency_s']} s | {split} | "
            f"{len(d['touched'])} | {d.get('load', '?')} |"
        )
    lines.append("")
    return "\n".join(lines)


def _ignore_conflict(fn: Any) -> None:
    from kubernetes.client.exceptions import ApiException

    try:
        fn()
    except ApiException as e:
        if e.status != 409:
            raise


def _vm(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


if __name__ == "__main__":
    sys.exit(main())
