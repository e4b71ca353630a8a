"""What the engine modules share: deterministic bytes, and the shape checks every engine's fit runs.

Role: private helpers of ``vibe.engines``. ``dump`` gives the same bytes for the same document (sorted
keys, compact separators, a trailing newline), ``num`` rounds floats to 9 significant digits; the checks
raise ``EngineError(PlacementMismatch)`` naming both numbers.
"""

from __future__ import annotations

import json
from typing import Any

from vibe.engines.errors import EngineError
from vibe.engines.settings import EngineSettings


def num(x: float) -> float:
    """A float rounded to 9 significant digits (stable text across platforms' last-bit noise)."""
    return float(f"{float(x):.9g}")


def dump(obj: Any) -> bytes:
    """Deterministic JSON bytes: sorted keys, ``,``/``:`` separators, no NaN, a trailing newline."""
    return (json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False) + "\n").encode()


def int_matrix(value: Any, name: str, where: str) -> list[list[int]]:
    """``value`` as a non-empty rectangular list of integer rows, or ``EngineError(PlacementMismatch)``."""
    if not isinstance(value, list) or not value or not all(isinstance(r, list) and r for r in value):
        raise EngineError("PlacementMismatch", f"{where}: {name} must be a non-empty [layers][slots] list")
    width = len(value[0])
    for i, row in enumerate(value):
        if len(row) != width:
            raise EngineError(
                "PlacementMismatch", f"{where}: {name} row {i} has {len(row)} entries, row 0 {width}"
            )
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in row):
            raise EngineError("PlacementMismatch", f"{where}: {name} row {i} holds a non-integer")
    return value


def check_slots(physical: int, settings: EngineSettings, where: str, flag: str) -> int:
    """Check the physical slot count against the engine; return the number of logical experts.

    Args:
        flag: how the engine spells its redundant-slot setting (named in the message).
    """
    logical = physical - settings.redundant_experts
    if settings.num_experts is not None and physical != settings.num_experts + settings.redundant_experts:
        raise EngineError(
            "PlacementMismatch",
            f"{where}: placement has {physical} physical slots per layer but the engine has"
            f" {settings.num_experts} experts + {settings.redundant_experts} redundant ="
            f" {settings.num_experts + settings.redundant_experts}; set {flag}"
            f" {physical - settings.num_experts} or re-place with slotsPerGPU*count ="
            f" {settings.num_experts + settings.redundant_experts}",
        )
    if logical < 1:
        raise EngineError(
            "PlacementMismatch",
            f"{where}: {physical} physical slots cannot hold {settings.redundant_experts} redundant experts",
        )
    if physical % settings.ep_size:
        raise EngineError(
            "PlacementMismatch",
            f"{where}: {physical} physical slots do not split over EP size {settings.ep_size}"
            f" (placement is for another GPU count)",
        )
    return logical


def check_rows(rows: list[list[int]], logical: int, where: str, first_layer: int = 0) -> None:
    """Every row names experts 0..logical-1 only, and each of them at least once."""
    for i, row in enumerate(rows):
        bad = [x for x in row if x < 0 or x >= logical]
        if bad:
            raise EngineError(
                "PlacementMismatch",
                f"{where}: layer {i + first_layer} names expert {bad[0]}, outside 0..{logical - 1}",
            )
        missing = set(range(logical)).difference(row)
        if missing:
            raise EngineError(
                "PlacementMismatch",
                f"{where}: layer {i + first_layer} leaves expert {min(missing)} without a slot",
            )


def check_gpu_count(placement_doc: Any, settings: EngineSettings, where: str = "placement.json") -> None:
    """If the canonical placement lists its GPUs, their number must be the engine's EP size."""
    if isinstance(placement_doc, dict) and isinstance(placement_doc.get("gpus"), list):
        n = len(placement_doc["gpus"])
        if n != settings.ep_size:
            raise EngineError(
                "PlacementMismatch",
                f"{where}: placement is for {n} GPUs but the engine's EP size is {settings.ep_size}",
            )


def permute_rows(rows: list[list[int]], perm: list[int]) -> list[list[int]]:
    """Apply a slot permutation to every row (slot ``j`` of the result is slot ``perm[j]`` of the input)."""
    return [[row[p] for p in perm] for row in rows]
