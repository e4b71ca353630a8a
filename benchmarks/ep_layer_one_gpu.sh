#!/usr/bin/env bash
# The reference expert-parallel layer on ONE GPU, end to end (world size 1), idle and with a noisy
# neighbour on the same GPU: agent curves -> fleet -> placements -> serving reader -> measured layer.
#
#   PYTHONPATH=. bash benchmarks/ep_layer_one_gpu.sh OUT_DIR
#
# Writes everything under OUT_DIR (and OUT_DIR.tar.gz). Never changes clocks or power limits; NVLink
# multicast off in every process. Steps continue after a failure so one broken step loses only itself.
set -u
O=${1:?usage: ep_layer_one_gpu.sh OUT_DIR}
mkdir -p "$O"
export PYTHONPATH=${PYTHONPATH:-.} PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
B=benchmarks/ep_layer.py
PY=${PY:-python3}
SHAPE=${SHAPE:-7168x2048:bf16}  # DeepSeek-V3 expert, bf16
DIMS=${SHAPE%%:*} H=${DIMS%%x*} I=${DIMS##*x}
E=32 S=36 L=4                    # 32 experts in 36 slots (4 replicas), 4 layers
DUTY=${DUTY:-0.5} NBSIZE=${NBSIZE:-4096} PERIOD=${PERIOD:-0.02}  # the neighbour: GEMM size, duty cycle
NB="--duty $DUTY --period $PERIOD"
DEV=${DEV:-cuda:0}               # DEV=cpu: a dry run of every step (no timing: gloo)
NBGPU=${DEV#cuda:}
run() { echo "+ $*" >&2; "$@"; }

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit,temperature.gpu \
  --format=csv >"$O/gpu.csv" 2>&1
# SM clock and power every 200 ms through the whole run (read-only)
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,utilization.gpu --format=csv -lms 200 >"$O/clocks.csv" 2>&1 &
SMI=$!

# 1. the agent measures the idle GPU, then the GPU with the neighbour running
run $PY -m vibe.agent bench --device $DEV --no-default-shapes --shape ds=$SHAPE --node h200 -q \
  -o "$O/bench-idle.json" --profile-out "$O/profile-idle.json"
$PY $B neighbour --device $DEV $NB --size $NBSIZE >"$O/neighbour-bench.log" 2>&1 &
NBPID=$!
sleep 3
run $PY -m vibe.agent bench --device $DEV --no-default-shapes --shape ds=$SHAPE --node h200 -q \
  -o "$O/bench-neighbour.json" --profile-out "$O/profile-neighbour.json"
kill -TERM $NBPID; wait $NBPID

# 2. fleet files from the agent's GPUProfiles; loads; placements as the operator writes them
run $PY $B fleet --profile "$O/profile-idle.json" --shape $SHAPE -o "$O/fleet-idle.json"
run $PY $B fleet --profile "$O/profile-neighbour.json" --shape $SHAPE -o "$O/fleet-neighbour.json"
for regime in decode:32 prefill:512; do
  name=${regime%%:*} mean=${regime##*:}
  run $PY $B loads --layers $L --experts $E --mean-tokens "$mean" --seed 1 -o "$O/loads-$name.json"
  for policy in round-robin token-balanced vibe; do
    run $PY $B volume --loads "$O/loads-$name.json" --fleet "$O/fleet-idle.json" --slots-per-gpu $S \
      --policy $policy -o "$O/vol-$name/$policy"
  done
done

# 3. the layer: bf16 outputs against the dense reference once, then timed idle and with the neighbour
P="--placement rr=$O/vol-decode/round-robin --placement tb=$O/vol-decode/token-balanced --placement vibe=$O/vol-decode/vibe"
run $PY $B run --world-size 1 --slots-per-gpu $S --hidden $H --intermediate $I --loads "$O/loads-decode.json" $P --check --steps 1 \
  --out "$O/check-decode.json"
for name in decode prefill; do
  P="--placement rr=$O/vol-$name/round-robin --placement tb=$O/vol-$name/token-balanced --placement vibe=$O/vol-$name/vibe"
  run $PY $B run --world-size 1 --slots-per-gpu $S --hidden $H --intermediate $I --loads "$O/loads-$name.json" $P \
    --fleet "$O/fleet-idle.json" --steps 40 --warmup 5 --out "$O/run-$name-idle.json"
  run $PY $B run --world-size 1 --slots-per-gpu $S --hidden $H --intermediate $I --loads "$O/loads-$name.json" $P \
    --fleet "$O/fleet-neighbour.json" --neighbour-gpu $NBGPU $NB --neighbour-size $NBSIZE --steps 40 --warmup 5 \
    --out "$O/run-$name-neighbour.json"
done
nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu --format=csv >>"$O/gpu.csv" 2>&1
kill $SMI 2>/dev/null
tar -czf "$O.tar.gz" -C "$(dirname "$O")" "$(basename "$O")"
