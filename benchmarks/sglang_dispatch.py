"""What SGLang's static dispatch does to vibe's predictions, on the examples in ``examples/plan/``.

vibe's cost model (and every solver) splits an expert's tokens evenly over its replicas; SGLang's
``--ep-dispatch-algorithm static`` sends each rank's tokens of an expert to the replica on its own GPU,
else on its own node, else a fair pick (``vibe.placement.dispatch``). This prices the placements of the
two policies under both, on the DeepSeek-V3 example (58 layers x 256 experts, 32 H100s x 9 slots, 32
redundant; the measured SC'22 spread, and the same fleet with GPU 19 throttled), for 8 and 4 GPUs per
node, and prints the table of step times and ratios (all measured in this one run).

    .venv/bin/python benchmarks/sglang_dispatch.py --out benchmarks/results/sglang_dispatch.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vibe.placement.cost import Placement, evaluate
from vibe.placement.engine import solve
from vibe.placement.inputs import load_json, read_fleet, read_loads

ROOT = Path(__file__).resolve().parents[1]
PLAN = ROOT / "examples" / "plan"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="also write the table (markdown) here")
    args = ap.parse_args()
    loads = read_loads(load_json(PLAN / "deepseek-v3-loads.json", "loads"))
    rows = []
    for fleet_name in ("fleet-32xh100.json", "fleet-32xh100-drifted.json"):
        fleet = read_fleet(load_json(PLAN / fleet_name, "fleet"))
        base = None
        for policy in ("token-balanced", "vibe"):
            result = solve(loads, fleet, 9, policy)
            placement = Placement(result.placement.phy2log, 9, loads.shape[1])
            even = evaluate(placement, loads, fleet).step_time_s
            statics = [
                evaluate(placement, loads, fleet, dispatch="sglang-static", gpus_per_node=n).step_time_s
                for n in (8, 4)
            ]
            if policy == "token-balanced":
                base = statics
            gains = [b / s for b, s in zip(base or statics, statics, strict=True)]
            rows.append((fleet_name, policy, even, *statics, *gains))
    head = (
        "| fleet | policy | even split ms | SGLang static, 8 GPUs/node ms | static / even | "
        "static, 4 GPUs/node ms | static / even | speedup vs token-balanced (static, 8 / 4 per node) |"
    )
    lines = [head, "|" + "---|" * 8]
    for fleet_name, policy, even, s8, s4, g8, g4 in rows:
        lines.append(
            f"| {fleet_name} | {policy} | {even * 1e3:.3f} | {s8 * 1e3:.3f} | {s8 / even:.3f} | "
            f"{s4 * 1e3:.3f} | {s4 / even:.3f} | {g8:.3f}x / {g4:.3f}x |"
        )
    text = "\n".join(lines)
    print(text)
    if args.out:
        cmd = "    .venv/bin/python benchmarks/sglang_dispatch.py --out " + str(args.out)
        args.out.write_text(f"# SGLang static dispatch vs vibe's even split\n\n{cmd}\n\n{text}\n")


if __name__ == "__main__":
    sys.exit(main())
