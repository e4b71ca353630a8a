"""Expert loads for a MoEDeployment: from its load ConfigMap, or uniform until one is given.

Role: turns ``spec.workload`` plus the referenced ConfigMap's data into the [layers, experts] token
matrix the placement engine prices. The file formats (our ``{"loads": ...}`` and SGLang's expert
distribution recorder ``{"logical_count": ...}``) are parsed by ``vibe.placement.read_loads``; this module
adds what only the operator knows: which ConfigMap and key, and the model's shape to check against.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from vibe.operator.problems import Problem
from vibe.operator.spec import DEFAULT_TOKENS_PER_STEP, DeploymentSpec, fingerprint
from vibe.placement.errors import PlacementError

#: A load ConfigMap's key is at most what the API server stores in one object (~1.5 MiB); anything
#: larger is refused before it is parsed.
MAX_LOADS_BYTES = 3 << 20


@dataclass(frozen=True, eq=False)
class Loads:
    """[layers, experts] tokens per expert per forward step, and where they came from."""

    tokens: np.ndarray
    source: str  # "namespace/name:key" or "uniform"
    note: str = ""

    @property
    def key(self) -> str:
        return fingerprint(self.tokens)

    @property
    def uniform(self) -> bool:
        return self.source == "uniform"


def uniform(spec: DeploymentSpec) -> Loads:
    """Every expert gets tokensPerStep x topK / experts tokens (what a router does on average)."""
    m = spec.model
    per_step = spec.workload.tokens_per_step or DEFAULT_TOKENS_PER_STEP
    tokens = np.full((m.layers, m.experts), per_step * m.top_k / m.experts, dtype=np.float64)
    return Loads(
        tokens, "uniform", f"uniform loads ({per_step} tokens per step; no spec.workload.configMapRef)"
    )


def from_config_map(
    spec: DeploymentSpec,
    namespace: str,
    data: Mapping[str, str] | None,
    binary: Mapping[str, str] | None = None,
) -> Loads:
    """Loads from the ConfigMap's data (None: the ConfigMap does not exist), or a ``Problem``."""
    name, key = spec.workload.config_map, spec.workload.key
    where = f"ConfigMap {namespace}/{name}"
    if data is None:
        raise Problem("ConfigMapNotFound", f"{where} (spec.workload.configMapRef) does not exist")
    if key not in data:
        if binary and key in binary:
            raise Problem("InvalidLoads", f"{where} key {key!r} is binaryData; loads must be JSON text")
        have = ", ".join(sorted(data)) or "none"
        raise Problem("ConfigMapKeyNotFound", f"{where} has no key {key!r} (keys: {have})")
    from vibe.placement import read_loads
    from vibe.placement.inputs import parse_json

    try:
        obj = parse_json(data[key], f"{where} key {key!r}", reason="InvalidLoads", max_bytes=MAX_LOADS_BYTES)
    except PlacementError as e:
        raise Problem(e.reason, str(e)) from None
    try:
        tokens = read_loads(obj, tokens_per_step=spec.workload.tokens_per_step, top_k=spec.model.top_k)
    except PlacementError as e:
        raise Problem(e.reason, f"{where} key {key!r}: {e}") from None
    tokens = np.asarray(tokens, dtype=np.float64)
    idle = np.flatnonzero(tokens.sum(axis=1) <= 0) if tokens.ndim == 2 else np.zeros(0, dtype=int)
    if tokens.size and idle.size:
        which = "every layer" if idle.size == tokens.shape[0] else f"layer(s) {_few(idle.tolist())}"
        raise Problem(
            "InvalidLoads",
            f"{where} key {key!r}: {which} received no tokens (all loads zero); a MoE layer routes "
            "every token to topK experts, so these loads were recorded while no traffic was served",
        )
    want = (spec.model.layers, spec.model.experts)
    if tokens.shape != want:
        got = "x".join(str(n) for n in tokens.shape)
        raise Problem(
            "ShapeMismatch",
            f"{where} key {key!r} has loads for {got} (layers x experts); the model has {want[0]}x{want[1]}",
        )
    return Loads(tokens, f"{namespace}/{name}:{key}")


def _few(items: list[int], n: int = 5) -> str:
    return ", ".join(map(str, items[:n])) + (f" and {len(items) - n} more" if len(items) > n else "")
