"""``vibe simulate --plot``: attainment vs rate, the TTFT CDF per policy, and TTFT over time after drift.

matplotlib is an optional extra (``pip install 'vibe-operator[plot]'``); without it the command says so
in one line. Draws from the ``--output`` document only, so a saved result can be re-drawn.
"""

from __future__ import annotations

from typing import Any


def draw(doc: dict[str, Any], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("--plot needs matplotlib: pip install 'vibe-operator[plot]'") from None
    timeline = doc.get("ttft_over_time")
    panels = 3 if timeline else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.0))
    runs = doc["runs"]
    policies = list(dict.fromkeys(r["policy"] for r in runs))
    ax = axes[0]
    for p in policies:
        rows = sorted((r for r in runs if r["policy"] == p), key=lambda r: r["rate"])
        ax.plot([r["rate"] for r in rows], [r["slo_attainment"] * 100 for r in rows], marker="o", label=p)
    ax.axhline(doc["slo"]["goodput_attainment"] * 100, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("requests / s")
    ax.set_ylabel("SLO attainment (%)")
    ax.set_title("SLO attainment")
    ax.legend()
    ax = axes[1]
    for p in policies:  # P50 / P90 / P99 of TTFT at the highest rate each policy ran, as a step CDF
        rows = sorted((r for r in runs if r["policy"] == p), key=lambda r: r["rate"])
        r = rows[len(rows) // 2]
        xs = [r["ttft_p50_s"], r["ttft_p90_s"], r["ttft_p99_s"]]
        ax.plot(xs, [50, 90, 99], marker="o", label=f"{p} @ {r['rate']:g}/s")
    ax.set_xlabel("TTFT (s)")
    ax.set_ylabel("percentile")
    ax.set_title("TTFT distribution (middle rate)")
    ax.legend()
    if timeline:
        ax = axes[2]
        for p, by_rate in timeline.items():
            rate = max(by_rate, key=float)
            ax.plot(by_rate[rate]["t_s"], by_rate[rate]["ttft_p90_s"], label=f"{p} @ {rate}/s")
        for d in doc["settings"].get("drift", []):
            ax.axvline(d["at_s"], color="red", lw=0.8, ls="--")
        ax.set_xlabel("arrival time (s)")
        ax.set_ylabel("P90 TTFT (s)")
        ax.set_title("TTFT over time (drift)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
