"""Builders of the operator tests: GPUProfile and MoEDeployment bodies as the agent and a user write them.

Pure-logic tests use them directly; the cluster tests apply them through the API server.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from vibe import api
from vibe.placement.curves import reference_curve

DSV3 = {
    "layers": 4,
    "experts": 16,
    "topK": 4,
    "hiddenSize": 7168,
    "expertIntermediateSize": 2048,
    "dtype": "fp8",
}


def now_iso(offset_s: float = 0.0) -> str:
    t = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=offset_s)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def profile_body(
    node: str,
    *,
    gpus: int = 8,
    slow: dict[int, float] | None = None,
    shapes: tuple[tuple[int, int, str], ...] = ((7168, 2048, "fp8"),),
    namespace: str = "vibe-system",
    heartbeat: str | None = "now",
    memory_bytes: int | None = None,
) -> dict[str, Any]:
    """A GPUProfile as the agent writes it: every GPU runs the reference curve, ``slow[i]`` times slower."""
    slow = slow or {}
    entries = []
    for i in range(gpus):
        curves = []
        for h, inter, d in shapes:
            tokens, seconds = reference_curve(h, inter, d)
            curves.append(
                {
                    "name": f"{h}x{inter}",
                    "hiddenSize": h,
                    "intermediateSize": inter,
                    "dtype": d,
                    "tokens": [int(t) for t in tokens],
                    "seconds": [float(s) * slow.get(i, 1.0) for s in seconds],
                }
            )
        gpu = {
            "index": i,
            "uuid": f"GPU-{node}-{i}",
            "product": "NVIDIA H100 80GB HBM3",
            "curves": curves,
            "drift": {"state": "Drifted" if i in slow else "Stable", "timeScale": slow.get(i, 1.0)},
        }
        if memory_bytes is not None:
            gpu["memoryBytes"] = memory_bytes
        entries.append(gpu)
    body: dict[str, Any] = {
        "apiVersion": api.API_VERSION,
        "kind": api.GPUPROFILE_KIND,
        "metadata": {"name": node, "namespace": namespace, "labels": {api.LABEL_NODE: node}},
        "spec": {"nodeName": node, "source": "simulated", "agentVersion": "test", "gpus": entries},
    }
    if heartbeat is not None:
        body["status"] = {
            "heartbeatTime": now_iso() if heartbeat == "now" else heartbeat,
            "heartbeatSeconds": 30,
        }
    return body


def deployment_body(
    name: str, *, selector: dict[str, str] | None = None, count: int = 8, slots: int = 3, **spec: Any
) -> dict[str, Any]:
    """A MoEDeployment (a small DeepSeek-V3-shaped model unless ``model=`` says otherwise)."""
    body_spec: dict[str, Any] = {
        "model": dict(DSV3),
        "gpus": {
            "nodeSelector": selector if selector is not None else {"pool": "a"},
            "count": count,
            "slotsPerGPU": slots,
        },
    }
    body_spec.update(spec)
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.MOEDEPLOYMENT_KIND,
        "metadata": {"name": name},
        "spec": body_spec,
    }
