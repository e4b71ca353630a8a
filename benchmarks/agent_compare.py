"""Compare the agent's measured H100 curves with the project's reference H100 data.

The reference is ``vibe/placement/data/h100_expert_ffn.json``: the shared H100 measurements of
2026-11-23, "steady" (timed at the power cap) and "burst" (a cold GPU at boost clocks). The agent's
curves come from ``benchmarks/agent_gpu.py`` (the median over its repeated profiles). Prints a markdown
section: per shape, the times at the reference's token counts and their ratios, and the shape of each
curve (floor, knee, slope of the linear part).

    .venv/bin/python benchmarks/agent_compare.py benchmarks/results/gpu-h100-2026-11-23/agent_gpu.json
"""

from __future__ import annotations

import json
import statistics
import sys
from importlib import resources
from pathlib import Path

NAMES = {"deepseek-v3": "deepseek-v3", "qwen3-235b": "qwen3-235b", "mixtral-8x7b": "mixtral-8x7b"}


def knee(tokens: list[int], seconds: list[float], factor: float = 1.25) -> int:
    """First token count whose time exceeds ``factor`` x the time at 1 token (where the flat part ends)."""
    return next((t for t, s in zip(tokens, seconds, strict=True) if s > factor * seconds[0]), tokens[-1])


def slope_us_per_1k(tokens: list[int], seconds: list[float]) -> float:
    """µs per 1000 tokens between 2048 and 8192 tokens (the linear, compute-bound part)."""
    t = dict(zip(tokens, seconds, strict=True))
    return (t[8192] - t[2048]) / (8192 - 2048) * 1e9


def main(path: str) -> None:
    res = json.loads(Path(path).read_text())
    ref = json.loads(resources.files("vibe.placement").joinpath("data/h100_expert_ffn.json").read_text())
    medians: dict[tuple[str, str], tuple[list[int], list[float]]] = {}
    for c in res["profiles"][0]["curves"]:
        key = (c["shape"]["name"], c["shape"]["dtype"])
        toks = [p["tokens"] for p in c["points"]]
        meds = [
            statistics.median(
                pr["curves"][i]["points"][k]["seconds"]
                for pr in res["profiles"]
                for i, cc in enumerate(pr["curves"])
                if (cc["shape"]["name"], cc["shape"]["dtype"]) == key
            )
            for k in range(len(toks))
        ]
        medians[key] = (toks, meds)
    out = ["### Measured (median of the repeated profiles) vs the reference H100 (bf16)", ""]
    out.append(
        "| shape | tokens | measured µs | reference steady µs | measured / steady | reference burst µs |"
    )
    out.append("|---|---:|---:|---:|---:|---:|")
    shape_rows = []
    for name in ("deepseek-v3", "qwen3-235b", "mixtral-8x7b"):
        steady = ref["steady"][name]
        burst = ref["burst"].get(name)
        toks, meds = medians[(name, "bf16")]
        m = dict(zip(toks, meds, strict=True))
        ratios = []
        for t, s in zip(steady["tokens"], steady["measuredSeconds"], strict=True):
            if t not in m:
                continue
            b = dict(zip(burst["tokens"], burst["measuredSeconds"], strict=True)).get(t) if burst else None
            ratios.append(m[t] / s)
            out.append(
                f"| {name} | {t} | {m[t] * 1e6:.1f} | {s * 1e6:.1f} | {m[t] / s:.3f} | "
                + (f"{b * 1e6:.1f} |" if b else "- |")
            )
        st, ss = steady["tokens"], steady["measuredSeconds"]
        shape_rows.append(
            f"| {name} | {meds[0] * 1e6:.1f} / {ss[0] * 1e6:.1f} | {knee(toks, meds)} / {knee(st, ss)} | "
            f"{slope_us_per_1k(toks, meds):.1f} / {slope_us_per_1k(st, ss):.1f} | "
            f"{min(ratios):.2f}-{max(ratios):.2f} (median {statistics.median(ratios):.2f}) |"
        )
    out += [
        "",
        "### Curve shape (measured / reference steady)",
        "",
        "| shape | floor µs (1 token) | knee: first n above 1.25x floor | µs per 1k tokens (2048-8192) | "
        "time ratio range |",
        "|---|---:|---:|---:|---|",
        *shape_rows,
        "",
    ]
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/gpu-h100-2026-11-23/agent_gpu.json")
