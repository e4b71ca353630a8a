"""Format ``eplb``: DeepSeek EPLB's arrays, for engines and tools that load tensors.

``phy2log`` [L, P], ``log2phy`` [L, E, P-E+1] padded with -1, ``logcnt`` [L, E], over MoE layers only, as
DeepSeek's ``rebalance_experts`` returns them. ``fit`` checks the shapes against the engine's settings;
``files`` writes JSON, or a torch ``.pt`` of int64 tensors when the path ends in ``.pt`` (torch needed).
EPLB assumes an even split of an expert's tokens over its replicas.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vibe.engines._common import check_rows, check_slots, dump, int_matrix, permute_rows
from vibe.engines.errors import EngineError
from vibe.engines.settings import EngineSettings
from vibe.placement import Placement, read_placement

if TYPE_CHECKING:
    from vibe.placement import Fleet, Result

NAME = "eplb"
KEY = "eplb.json"
DISPATCH = "even"
#: DeepSeek's EPLB tensors say where replicas are, not how to split tokens over them (its model: evenly).
REPLICA_WEIGHTS = False
DISPATCH_SOURCE = "deepseek-ai/EPLB eplb.py: rebalance_experts (phy2log, log2phy, logcnt; even split assumed)"


def write(result: Result, fleet: Fleet, baseline: Result | None = None) -> bytes:
    """``phy2log`` [L, P], ``log2phy`` [L, E, P-E+1] (-1 pads), ``logcnt`` [L, E]."""
    pl = result.placement
    return dump(
        {"phy2log": pl.phy2log.tolist(), "log2phy": pl.log2phy().tolist(), "logcnt": pl.logcnt().tolist()}
    )


def parse(text: str) -> Any:
    """The document from the ConfigMap key's text (``ValueError`` when it is not JSON)."""
    return json.loads(text)


def read(doc: Any, *, slots_per_gpu: int | None, num_experts: int | None) -> Placement:
    """The placement an EPLB document holds."""
    return read_placement(doc, slots_per_gpu=slots_per_gpu, num_experts=num_experts)


def fit(doc: Any, settings: EngineSettings, where: str = KEY) -> dict[str, Any]:
    """Check DeepSeek-EPLB-shaped tensors (``phy2log``, ``log2phy``, ``logcnt``) against the engine.

    Returns:
        The three arrays (as lists), unchanged; MoE layers only, as EPLB produces them.
    """
    if not isinstance(doc, dict) or "phy2log" not in doc:
        raise EngineError("PlacementMismatch", f"{where}: no phy2log")
    phy2log = int_matrix(doc["phy2log"], "phy2log", where)
    layers, physical = len(phy2log), len(phy2log[0])
    logical = check_slots(physical, settings, where, "the redundant-expert count")
    check_rows(phy2log, logical, where)
    moe_layers = None if settings.num_layers is None else settings.num_layers - settings.first_moe_layer
    if moe_layers is not None and layers != moe_layers:
        raise EngineError(
            "PlacementMismatch",
            f"{where}: phy2log has {layers} layers but the engine has {moe_layers} MoE layers",
        )
    out: dict[str, Any] = {"phy2log": phy2log}
    if "logcnt" in doc:
        logcnt = int_matrix(doc["logcnt"], "logcnt", where)
        if len(logcnt) != layers or len(logcnt[0]) != logical:
            raise EngineError(
                "PlacementMismatch",
                f"{where}: logcnt is {len(logcnt)}x{len(logcnt[0])}, expected {layers}x{logical}",
            )
        for i, (cnt, row) in enumerate(zip(logcnt, phy2log, strict=True)):
            if any(cnt[e] != row.count(e) for e in range(logical)):
                raise EngineError("PlacementMismatch", f"{where}: logcnt disagrees with phy2log in layer {i}")
        out["logcnt"] = logcnt
    if "log2phy" in doc:
        log2phy = doc["log2phy"]
        if not isinstance(log2phy, list) or len(log2phy) != layers:
            raise EngineError("PlacementMismatch", f"{where}: log2phy must have {layers} layers")
        for i, (per_layer, row) in enumerate(zip(log2phy, phy2log, strict=True)):
            if not isinstance(per_layer, list) or len(per_layer) != logical:
                raise EngineError(
                    "PlacementMismatch", f"{where}: log2phy layer {i} must list {logical} experts"
                )
            for e, slots in enumerate(per_layer):
                real = sorted(s for s in slots if s != -1)
                if real != [p for p, x in enumerate(row) if x == e]:
                    raise EngineError(
                        "PlacementMismatch",
                        f"{where}: log2phy disagrees with phy2log (layer {i}, expert {e})",
                    )
        out["log2phy"] = log2phy
    return out


def width(doc: dict[str, Any]) -> int:
    """Physical slots per layer of a fitted document."""
    return len(doc["phy2log"][0])


def permute(doc: dict[str, Any], perm: list[int]) -> dict[str, Any]:
    """Apply ``perm`` to ``phy2log`` and renumber the slots in ``log2phy``; ``logcnt`` is unchanged."""
    new_of_old = {old: new for new, old in enumerate(perm)}
    out = dict(doc)
    out["phy2log"] = permute_rows(doc["phy2log"], perm)
    if "log2phy" in doc:
        out["log2phy"] = [
            [
                sorted(new_of_old[s] for s in slots if s != -1) + [-1] * sum(1 for s in slots if s == -1)
                for slots in layer
            ]
            for layer in doc["log2phy"]
        ]
    return out


def files(doc: dict[str, Any], path: Path, settings: EngineSettings) -> dict[Path, bytes]:
    """JSON, or int64 torch tensors when ``path`` ends in ``.pt`` (torch imported lazily)."""
    if path.suffix != ".pt":
        return {path: (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode()}
    try:
        import torch
    except ImportError:
        raise EngineError("MissingDependency", f"writing {path} needs torch; write .json instead") from None
    buffer = io.BytesIO()
    torch.save({k: torch.tensor(v, dtype=torch.int64) for k, v in doc.items()}, buffer)
    return {path: buffer.getvalue()}
