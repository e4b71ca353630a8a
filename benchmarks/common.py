"""What the CPU benchmarks share: the MoE model shapes they place and pinning the run to one CPU core.

The benchmarks are scripts run from the repository root (``.venv/bin/python benchmarks/<name>.py``); the
script's own folder is then first on ``sys.path``, so they import this as ``common``.
"""

from __future__ import annotations

import os

#: model -> MoE layers, routed experts per layer, and one expert's (hidden, intermediate) size
MODELS = {
    "DeepSeek-V3": dict(layers=58, experts=256, shape=(7168, 2048)),
    "Qwen3-235B": dict(layers=94, experts=128, shape=(4096, 1536)),
}


def pin_one_core() -> str:
    """Pin this process to its lowest allowed CPU; says which (or why not) for the report."""
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return f"pinned to CPU {cpu}"
    return "not pinned (no sched_setaffinity)"
