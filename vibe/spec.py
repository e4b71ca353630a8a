"""A MoEDeployment's spec as typed, defaulted values, and the fingerprint of what shapes its placement.

Role: the one reader of ``spec`` that both sides use: the operator parses the whole spec at the start of
each reconcile (``parse_spec``), the agent reads only the expert shape of each model (``model_shape``), so
the spec's field names are spelled here once. The API server has already validated the spec against the
CRD's schema and CEL rules and filled its defaults, so this only converts; it applies the same defaults
(the ``DEFAULT_*`` names below, each once) so that an object created before a default existed, or a unit
test's hand-written dict, reads the same. ``tests/test_api.py`` fills the CRD's own defaults into a
minimal spec and checks that it parses to the same values, so a default cannot differ from the CRD's.

``placement_key`` covers exactly the fields that change the placement (model, GPUs, slots, policy,
output formats, workload source): a change to any of them re-solves from scratch, while a change to the
drift settings only changes future decisions.

Layer: bottom (standard library only), beside ``vibe.contract``; no Kubernetes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# ---- the CRD's defaults (``tests/test_api.py::test_the_spec_parser_defaults_are_the_crds``)

#: ``spec.output.formats``: the engine formats written when the spec names none.
DEFAULT_FORMATS = ("vibe", "sglang")
#: ``spec.workload.configMapRef.key``.
DEFAULT_LOADS_KEY = "loads.json"
#: ``spec.model.dtype``.
DEFAULT_DTYPE = "bf16"
#: ``spec.policy``.
DEFAULT_POLICY = "vibe"
#: ``spec.workload.dispatch`` and ``spec.workload.stepMix[].weight``.
DEFAULT_DISPATCH = "round-robin"
DEFAULT_STEP_WEIGHT = 1.0
#: ``spec.workload.replicaSplit``: how an expert's tokens split over its replicas (``even``: as every
#: engine does; ``weighted``: per-slot shares the planner chooses, for vibe's own dispatch only).
DEFAULT_REPLICA_SPLIT = "even"
#: ``spec.drift``: minGain, cooldownSeconds, holdingSeconds.
DEFAULT_MIN_GAIN = 0.03
DEFAULT_COOLDOWN_SECONDS = 300
DEFAULT_HOLDING_SECONDS = 3600
#: ``spec.gpus.gpusPerPod`` (podSelector mode; no schema default: one GPU per pod unless said).
DEFAULT_GPUS_PER_POD = 1
#: Tokens per step assumed for uniform loads (no load profile given).
DEFAULT_TOKENS_PER_STEP = 4096
#: ``spec.workload.routingSamples``: sampled routings per kind of step.
DEFAULT_ROUTING_SAMPLES = 16


@dataclass(frozen=True)
class Model:
    layers: int
    experts: int
    top_k: int
    hidden_size: int
    intermediate_size: int
    dtype: str = DEFAULT_DTYPE
    name: str = ""

    @property
    def shape(self) -> tuple[int, int, str]:
        """The expert shape (hidden, intermediate, dtype) that selects a GPU's curve."""
        return (self.hidden_size, self.intermediate_size, self.dtype)


@dataclass(frozen=True)
class GPUs:
    count: int
    slots_per_gpu: int
    node_selector: Mapping[str, str] | None = None
    pod_selector: Mapping[str, Any] | None = None
    gpus_per_pod: int = DEFAULT_GPUS_PER_POD


@dataclass(frozen=True)
class Workload:
    """``spec.workload``. ``step_mix`` is ``stepMix`` as (tokens, weight) pairs, in the spec's order;
    ``tokensPerStep`` alone is the one-entry mix (``planning.step_mix_of`` decides)."""

    config_map: str | None = None
    key: str = DEFAULT_LOADS_KEY
    tokens_per_step: int | None = None
    step_mix: tuple[tuple[int, float], ...] = ()
    dispatch: str = DEFAULT_DISPATCH
    routing_samples: int = DEFAULT_ROUTING_SAMPLES
    replica_split: str = DEFAULT_REPLICA_SPLIT


#: Serving seconds one re-placement costs, by ``spec.serving.onUpdate`` (when
#: ``spec.drift.replacementCostSeconds`` is unset): a restart rolls the serving group (minutes for a
#: DeepSeek-V3-sized model), a live reload moves a few experts, ``report`` changes nothing by itself.
#: ``eplb`` is vLLM moving the expert weights itself at its next EPLB rebalance (vibe's policy plugin):
#: the weight copy, not a restart. 15 s is the upstream figure for one rearrangement at wide EP ("can
#: take 15s during wide EP (EP=32) setups", vllm-project/vllm#24116, sync EPLB, which blocks serving for
#: that time); async EPLB (vLLM 0.33.0's default) moves a layer per step beside serving, so 15 s is the
#: upper end. Not measured here: no GPU cluster; set ``replacementCostSeconds`` from vLLM's own
#: "Rearranged experts in X s" log line.
DEFAULT_REPLACEMENT_COST_S = {"restart": 300, "eplb": 15, "http": 10, "report": 0, None: 0}


@dataclass(frozen=True)
class Drift:
    min_gain: float = DEFAULT_MIN_GAIN
    cooldown_seconds: int = DEFAULT_COOLDOWN_SECONDS
    max_moves: int | None = None
    replacement_cost_seconds: int | None = None
    holding_seconds: int = DEFAULT_HOLDING_SECONDS


@dataclass(frozen=True)
class DeploymentSpec:
    model: Model
    gpus: GPUs
    workload: Workload = field(default_factory=Workload)
    policy: str = DEFAULT_POLICY
    drift: Drift = field(default_factory=Drift)
    formats: tuple[str, ...] = DEFAULT_FORMATS
    on_update: str | None = None  # spec.serving.onUpdate

    @property
    def replacement_cost_s(self) -> float:
        """Serving seconds one re-placement costs: the spec's, else the default for ``onUpdate``."""
        if self.drift.replacement_cost_seconds is not None:
            return float(self.drift.replacement_cost_seconds)
        return float(DEFAULT_REPLACEMENT_COST_S.get(self.on_update, 0))

    @property
    def placement_key(self) -> str:
        """sha256 over the fields that shape the placement (not the drift settings)."""
        return fingerprint(
            {
                "model": [self.model.layers, self.model.experts, self.model.top_k, *self.model.shape],
                "gpus": [
                    self.gpus.count,
                    self.gpus.slots_per_gpu,
                    dict(self.gpus.node_selector or {}),
                    self.gpus.pod_selector,
                    self.gpus.gpus_per_pod,
                ],
                "workload": [self.workload.config_map, self.workload.key, self.workload.tokens_per_step],
                "policy": self.policy,
                "formats": sorted(self.formats),
                # only when set: a spec written before the step mix existed keeps its key (no re-solve
                # on an operator upgrade)
                **({"steps": self._steps_key} if self._steps_key != _DEFAULT_STEPS_KEY else {}),
                **(
                    {"replicaSplit": self.workload.replica_split}
                    if self.workload.replica_split != DEFAULT_REPLICA_SPLIT
                    else {}
                ),
            }
        )

    @property
    def _steps_key(self) -> list[Any]:
        w = self.workload
        return [[list(e) for e in w.step_mix], w.dispatch, w.routing_samples]


_DEFAULT_STEPS_KEY: list[Any] = [[], DEFAULT_DISPATCH, DEFAULT_ROUTING_SAMPLES]


def parse_spec(spec: Mapping[str, Any]) -> DeploymentSpec:
    """The typed spec; raises ``KeyError``/``TypeError``/``ValueError`` only for specs the CRD refuses."""
    m = spec["model"]
    g = spec["gpus"]
    w = spec.get("workload") or {}
    d = spec.get("drift") or {}
    ref = w.get("configMapRef") or {}
    formats = tuple(dict.fromkeys(spec.get("output", {}).get("formats") or DEFAULT_FORMATS))
    layers, experts, top_k = int(m["layers"]), int(m["experts"]), int(m["topK"])
    hidden, intermediate, dtype = model_shape(m)
    return DeploymentSpec(
        model=Model(
            layers=layers,
            experts=experts,
            top_k=top_k,
            hidden_size=hidden,
            intermediate_size=intermediate,
            dtype=dtype,
            name=str(m.get("name") or ""),
        ),
        gpus=GPUs(
            count=int(g["count"]),
            slots_per_gpu=int(g["slotsPerGPU"]),
            node_selector=dict(g["nodeSelector"]) if g.get("nodeSelector") is not None else None,
            pod_selector=plain(g["podSelector"]) if g.get("podSelector") is not None else None,
            gpus_per_pod=int(g.get("gpusPerPod") or DEFAULT_GPUS_PER_POD),
        ),
        workload=Workload(
            config_map=str(ref["name"]) if ref.get("name") else None,
            key=str(ref.get("key") or DEFAULT_LOADS_KEY),
            tokens_per_step=int(w["tokensPerStep"]) if w.get("tokensPerStep") is not None else None,
            step_mix=tuple(
                (int(e["tokens"]), float(e.get("weight", DEFAULT_STEP_WEIGHT)))
                for e in w.get("stepMix") or ()
            ),
            dispatch=str(w.get("dispatch") or DEFAULT_DISPATCH),
            routing_samples=int(w.get("routingSamples") or DEFAULT_ROUTING_SAMPLES),
            replica_split=str(w.get("replicaSplit") or DEFAULT_REPLICA_SPLIT),
        ),
        policy=str(spec.get("policy") or DEFAULT_POLICY),
        drift=Drift(
            min_gain=float(d.get("minGain", DEFAULT_MIN_GAIN)),
            cooldown_seconds=int(d.get("cooldownSeconds", DEFAULT_COOLDOWN_SECONDS)),
            max_moves=int(d["maxMoves"]) if d.get("maxMoves") is not None else None,
            replacement_cost_seconds=(
                int(d["replacementCostSeconds"]) if d.get("replacementCostSeconds") is not None else None
            ),
            holding_seconds=int(d.get("holdingSeconds") or DEFAULT_HOLDING_SECONDS),
        ),
        formats=formats,
        on_update=str((spec.get("serving") or {}).get("onUpdate") or "") or None,
    )


def model_shape(model: Mapping[str, Any]) -> tuple[int, int, str]:
    """``spec.model``'s expert shape (hiddenSize, expertIntermediateSize, dtype): what selects a GPU's
    curve (the operator) and what the agent benchmarks. Raises ``KeyError``/``TypeError``/``ValueError``
    for a model the CRD refuses."""
    return (
        int(model["hiddenSize"]),
        int(model["expertIntermediateSize"]),
        str(model.get("dtype") or DEFAULT_DTYPE),
    )


def fingerprint(obj: Any) -> str:
    """sha256 hex of an object's canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_default)
    return hashlib.sha256(text.encode()).hexdigest()


def _default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        return obj.tolist()
    if isinstance(obj, Mapping):
        return dict(obj)
    raise TypeError(f"cannot fingerprint {type(obj).__name__}")


def plain(obj: Any) -> Any:
    """Kopf's dict views and lists as plain dicts and lists (hashable to the same JSON)."""
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj
