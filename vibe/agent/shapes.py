"""Which expert shapes the agent benchmarks, and at which token counts.

Role in the data flow: the first input of a benchmark. The agent measures the expert FFN of every model
a MoEDeployment selecting its node serves (read from ``spec.model``), plus the defaults below so a
profile is useful before any MoEDeployment exists, at most as many as a GPUProfile holds per GPU
(``shapes_for_node``): shapes nobody on this node uses any more are pruned. The operator matches a curve
to a model by (hiddenSize, intermediateSize, dtype), so that triple is the identity of a shape; ``name``
is a label.

Token counts are log-spaced powers of two from 1 to 8192: the curve is flat (weight streaming) up to a
knee near 256 tokens and linear after, and the placement cost model interpolates between points, so
powers of two put points on both sides of the knee and enough on the line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from vibe.spec import DEFAULT_DTYPE, model_shape

#: Token counts of a full profile: 1, 2, 4, ..., 8192 (14 points).
TOKEN_GRID: tuple[int, ...] = tuple(2**k for k in range(14))

#: Dtypes an expert can be benchmarked in (fp8 only where the GPU has fp8 tensor cores); the CRDs' enum.
DTYPES = ("bf16", "fp16", "fp8")

#: Dtypes every shape is measured in by default (fp16 runs at bf16's speed; measured when a model asks).
DEFAULT_DTYPES = ("bf16", "fp8")


@dataclass(frozen=True, order=True)
class ExpertShape:
    """One expert's FFN shape: SwiGLU, gate/up [hidden -> intermediate], down [intermediate -> hidden]."""

    hidden_size: int
    intermediate_size: int
    dtype: str = "bf16"
    name: str = ""

    @property
    def key(self) -> tuple[int, int, str]:
        """What the operator matches on."""
        return (self.hidden_size, self.intermediate_size, self.dtype)

    @property
    def label(self) -> str:
        """Stable text for metrics labels and logs, e.g. ``deepseek-v3/7168x2048/bf16``."""
        return f"{self.name or 'expert'}/{self.hidden_size}x{self.intermediate_size}/{self.dtype}"

    def weight_bytes(self) -> int:
        """Bytes of one expert's three weight matrices in this dtype."""
        per = 1 if self.dtype == "fp8" else 2  # bf16, fp16
        return 3 * self.hidden_size * self.intermediate_size * per

    def with_dtype(self, dtype: str) -> ExpertShape:
        return ExpertShape(self.hidden_size, self.intermediate_size, dtype, self.name)


#: Defaults measured on every GPU (bf16 and, where supported, fp8): the three models of the examples.
DEFAULT_MODELS: tuple[ExpertShape, ...] = (
    ExpertShape(7168, 2048, "bf16", "deepseek-v3"),
    ExpertShape(4096, 1536, "bf16", "qwen3-235b"),
    ExpertShape(4096, 14336, "bf16", "mixtral-8x7b"),
)

_SHAPE_RE = re.compile(r"^(?:(?P<name>[\w.-]+)=)?(?P<h>\d+)x(?P<i>\d+)(?::(?P<dtype>\w+))?$")


def parse_shape(text: str) -> list[ExpertShape]:
    """Parse ``[name=]HIDDENxINTERMEDIATE[:dtype]`` (dtype bf16, fp16, fp8 or ``all``; default all).

    ``all`` expands to one shape per entry of ``DEFAULT_DTYPES``; the benchmark skips fp8 where unsupported.
    """
    m = _SHAPE_RE.match(text.strip())
    if not m:
        raise ValueError(f"bad shape {text!r}: want [name=]HIDDENxINTERMEDIATE[:bf16|fp16|fp8|all]")
    h, i = int(m["h"]), int(m["i"])
    if h <= 0 or i <= 0:
        raise ValueError(f"bad shape {text!r}: sizes must be positive")
    dtype = (m["dtype"] or "all").lower()
    dtypes = DEFAULT_DTYPES if dtype == "all" else (dtype,)
    for d in dtypes:
        if d not in DTYPES:
            raise ValueError(f"bad shape {text!r}: dtype {d!r} is not one of {', '.join(DTYPES)} or all")
    return [ExpertShape(h, i, d, m["name"] or "") for d in dtypes]


def with_all_dtypes(shapes: Iterable[ExpertShape]) -> list[ExpertShape]:
    """Each shape in its own dtype and every default dtype (a served fp8 model is worth a bf16 curve too)."""
    return dedupe(x for s in shapes for x in (s, *(s.with_dtype(d) for d in DEFAULT_DTYPES)))


def dedupe(shapes: Iterable[ExpertShape]) -> list[ExpertShape]:
    """Unique by ``key`` keeping the first name seen, in first-seen order."""
    seen: dict[tuple[int, int, str], ExpertShape] = {}
    for s in shapes:
        seen.setdefault(s.key, s)
    return list(seen.values())


def shapes_from_moedeployments(bodies: Iterable[Mapping[str, Any]]) -> list[ExpertShape]:
    """Expert shapes served by MoEDeployments (their ``spec.model``, read by ``vibe.spec.model_shape``, the
    operator's reader), in the model's dtype.

    Bodies that lack a model shape are skipped: the API server validates them, and a half-written object
    must not stop the agent.
    """
    out = []
    for body in bodies:
        model = ((body.get("spec") or {}).get("model")) or {}
        try:
            h, i, dtype = model_shape(model)
        except (KeyError, TypeError, ValueError):
            continue
        dtype = dtype.lower()
        if dtype not in DTYPES:
            dtype = DEFAULT_DTYPE
        name = str((body.get("metadata") or {}).get("name") or "")
        if h > 0 and i > 0:
            out.append(ExpertShape(h, i, dtype, name))
    return dedupe(out)


def selects_node(body: Mapping[str, Any], node: str, labels: Mapping[str, str] | None) -> bool:
    """Whether a MoEDeployment uses (or may use) ``node``: its ``status.nodes`` name it, or its
    ``spec.gpus.nodeSelector`` matches the node's labels. ``labels`` None (the Node could not be read):
    every deployment counts, as before the agent could tell. A podSelector deployment counts once the
    operator has placed it on the node (its pods' nodes are in ``status.nodes``)."""
    if node in ((body.get("status") or {}).get("nodes") or ()):
        return True
    if labels is None:
        return True
    selector = ((body.get("spec") or {}).get("gpus") or {}).get("nodeSelector")
    if not isinstance(selector, Mapping):
        return False
    return all(labels.get(str(k)) == str(v) for k, v in selector.items())


def shapes_for_node(
    bodies: Iterable[Mapping[str, Any]],
    node: str,
    labels: Mapping[str, str] | None,
    base: Iterable[ExpertShape],
    cap: int,
) -> tuple[list[ExpertShape], list[ExpertShape]]:
    """(shapes to benchmark, shapes in use that did not fit): ``base`` first, then every shape of the
    deployments selecting ``node`` in each default dtype (deployments in name order, so the cut is
    stable), at most ``cap`` in all (the CRD's curves per GPU)."""
    mine = sorted(
        (b for b in bodies if selects_node(b, node, labels)),
        key=lambda b: (
            str((b.get("metadata") or {}).get("namespace")),
            str((b.get("metadata") or {}).get("name")),
        ),
    )
    wanted = dedupe([*base, *with_all_dtypes(shapes_from_moedeployments(mine))])
    return wanted[:cap], wanted[cap:]


def default_shapes() -> list[ExpertShape]:
    """The default models in every dtype."""
    return with_all_dtypes(DEFAULT_MODELS)
