#!/usr/bin/env bash
# Does the agent see a co-tenant? `vibe agent bench` on one GPU idle, then with a noisy neighbour (a
# second process running GEMMs at a duty cycle: benchmarks/ep_layer.py neighbour) at 50 % and 90 %.
# Prints each point's time under the neighbour over its idle time: the median of the calls (what the
# agent published before the contention window) and the published time (the window's where shared).
#
#   PYTHONPATH=. bash benchmarks/agent_shared_gpu.sh OUT_DIR
#
# Never changes clocks or power limits; NVLink multicast off.
set -u
O=${1:?usage: agent_shared_gpu.sh OUT_DIR}
mkdir -p "$O"
export PYTHONPATH=${PYTHONPATH:-.} PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
PY=${PY:-python3}
DEV=${DEV:-cuda:0}
SHAPE=${SHAPE:-ds=7168x2048:bf16}
run() { echo "+ $*" >&2; "$@"; }
bench() { run $PY -m vibe.agent bench --device $DEV --no-default-shapes --shape $SHAPE -q -o "$O/bench-$1.json"; }

# The default profile once, idle: what the contention window costs a full profile.
[ "$DEV" = cpu ] || run $PY -m vibe.agent bench --device $DEV -q -o "$O/bench-default-idle.json"
bench idle
for nb in 50:4096 90:8192; do
  duty=${nb%%:*} size=${nb##*:}
  $PY benchmarks/ep_layer.py neighbour --device $DEV --duty 0.$duty --period 0.05 --size $size \
    >"$O/neighbour-$duty.log" 2>&1 &
  pid=$!
  sleep 3
  bench "neighbour-$duty"
  kill -TERM $pid; wait $pid
done
bench idle-again
$PY - "$O" <<'PY'
import json, sys
from pathlib import Path
o = Path(sys.argv[1])
def pts(name):
    res = next(iter(json.loads((o / f"bench-{name}.json").read_text())["devices"].values()))["profiles"][-1]
    return {p["tokens"]: p for p in res["curves"][0]["points"]}, res
idle, r0 = pts("idle")
if (o / "bench-default-idle.json").exists():
    d = json.loads((o / "bench-default-idle.json").read_text())["devices"]
    print(f"default profile, idle: {next(iter(d.values()))['profiles'][-1]['duration_s']} s")
for name in ("idle-again", "neighbour-50", "neighbour-90"):
    p, r = pts(name)
    print(f"\n{name}: duration {r['duration_s']} s; notes: {r['notes']}")
    print(f"{'tokens':>7} {'idle us':>9} {'median x':>9} {'published x':>12} shared")
    for n in sorted(p):
        b = idle[n]["seconds"]
        print(f"{n:>7} {b * 1e6:>9.1f} {p[n]['median_s'] / b:>9.2f} {p[n]['seconds'] / b:>12.2f} {p[n]['shared']}")
PY
