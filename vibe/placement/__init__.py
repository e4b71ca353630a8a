"""vibe.placement: where each Mixture-of-Experts expert should live, priced by each GPU's measured speed.

A pure library (numpy; OR-Tools only for the optional ``exact`` policy; nothing Kubernetes, nothing else of
vibe). Engine file formats are ``vibe.engines``; ``vibe plan`` is ``vibe.plan``. Layers of
modules, each importing only those above it:

* ``errors``      the one typed error (``PlacementError``, with a condition ``reason``)
* ``routing``     the step mix and sampled routings of it (the expected objective's input)
* ``curves``      per-GPU time curves t_g(n), the fleet, the H100 reference data, roofline and scaling
* ``dispatch``    how an engine splits an expert's tokens over its replicas (mean and sampled loads)
* ``split``       the replica split: even, or weighted by per-slot shares the planner chooses
* ``cost``        a ``Placement`` and the one evaluator every policy and report uses (mean-load or
                  expected objective)
* ``bounds``      provable lower bounds on the step time
* ``policies``    constructive policies: linear, round-robin, token-balanced (EPLB-style), vibe's start
* ``search``      local search (swaps, replica re-targets), batched over layers
* ``refine``      swaps priced on sampled steps (the expected objective's last stage)
* ``engine``      ``solve`` for every policy, the ``Result``
* ``exact``       CP-SAT per layer for small instances (optional)
* ``incremental`` re-placement that moves few experts
* ``inputs``      reading loads, fleets and placements from JSON
* ``synthetic``   serving-like loads and H100 fleets for benchmarks, tests and simulation

The names below are re-exported lazily (PEP 562), so importing the ``vibe`` CLI does not pay for numpy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "lower_bound": "bounds",
    "Evaluation": "cost",
    "Placement": "cost",
    "bincount_rows": "cost",
    "check_shapes": "cost",
    "evaluate": "cost",
    "gpu_times_of": "cost",
    "DTYPE_BYTES": "curves",
    "CurveTable": "curves",
    "Fleet": "curves",
    "GPUCurve": "curves",
    "reference_curve": "curves",
    "reference_shapes": "curves",
    "roofline_curve": "curves",
    "scale_curve": "curves",
    "COMPARED": "engine",
    "POLICIES": "engine",
    "PolicyName": "engine",
    "Result": "engine",
    "make_result": "engine",
    "with_replica_split": "engine",
    "solve": "engine",
    "token_balanced": "engine",
    "REASONS": "errors",
    "PlacementError": "errors",
    "PlacementReason": "errors",
    "replace_incremental": "incremental",
    "load_json": "inputs",
    "parse_json": "inputs",
    "read_fleet": "inputs",
    "read_loads": "inputs",
    "read_placement": "inputs",
    "DEFAULT_SAMPLES": "routing",
    "DispatchName": "routing",
    "Routing": "routing",
    "StepMix": "routing",
    "routing_from_flags": "routing",
    "sample_routing": "routing",
    "REPLICA_SPLITS": "split",
    "ReplicaSplit": "split",
    "choose_weights": "split",
    "weighted_gpu_times": "split",
    "FLOOR_SHARE": "synthetic",
    "skewed_loads": "synthetic",
    "slowed_curve": "synthetic",
    "unslowed_curve": "synthetic",
}

__all__ = [
    "COMPARED",
    "DEFAULT_SAMPLES",
    "DTYPE_BYTES",
    "FLOOR_SHARE",
    "POLICIES",
    "REASONS",
    "REPLICA_SPLITS",
    "CurveTable",
    "DispatchName",
    "Evaluation",
    "Fleet",
    "GPUCurve",
    "Placement",
    "PlacementError",
    "PlacementReason",
    "PolicyName",
    "ReplicaSplit",
    "Result",
    "Routing",
    "StepMix",
    "bincount_rows",
    "check_shapes",
    "choose_weights",
    "evaluate",
    "gpu_times_of",
    "load_json",
    "lower_bound",
    "make_result",
    "parse_json",
    "read_fleet",
    "read_loads",
    "read_placement",
    "reference_curve",
    "reference_shapes",
    "replace_incremental",
    "roofline_curve",
    "routing_from_flags",
    "sample_routing",
    "scale_curve",
    "skewed_loads",
    "slowed_curve",
    "solve",
    "token_balanced",
    "unslowed_curve",
    "weighted_gpu_times",
    "with_replica_split",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"vibe.placement.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vibe.placement' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # for type checkers and IDEs
    from vibe.placement.bounds import lower_bound
    from vibe.placement.cost import Evaluation, Placement, bincount_rows, check_shapes, evaluate, gpu_times_of
    from vibe.placement.curves import (
        DTYPE_BYTES,
        CurveTable,
        Fleet,
        GPUCurve,
        reference_curve,
        reference_shapes,
        roofline_curve,
        scale_curve,
    )
    from vibe.placement.engine import (
        COMPARED,
        POLICIES,
        PolicyName,
        Result,
        make_result,
        solve,
        token_balanced,
        with_replica_split,
    )
    from vibe.placement.errors import REASONS, PlacementError, PlacementReason
    from vibe.placement.incremental import replace_incremental
    from vibe.placement.inputs import load_json, parse_json, read_fleet, read_loads, read_placement
    from vibe.placement.routing import (
        DEFAULT_SAMPLES,
        DispatchName,
        Routing,
        StepMix,
        routing_from_flags,
        sample_routing,
    )
    from vibe.placement.split import REPLICA_SPLITS, ReplicaSplit, choose_weights, weighted_gpu_times
    from vibe.placement.synthetic import FLOOR_SHARE, skewed_loads, slowed_curve, unslowed_curve
