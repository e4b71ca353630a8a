"""vibe as vLLM's EPLB policy, the decisions: which map every rank returns, and the load window written back.

vLLM (``vllm/distributed/eplb/eplb_state.py``, ``EplbState.rearrange``; the async worker's
``run_rebalance_experts``) asks its EPLB policy, on every EP rank at the same rebalance, for
``physical_to_logical_map[num_moe_layers, num_replicas]`` given the load window all-reduced over the
ranks (``weight[num_moe_layers, num_logical_experts]``, token counts summed over ``window_size`` steps),
and then moves the expert weights itself to match. ``vibe.serving.vllm_plugin`` registers a policy that
answers with vibe's placement; this module is what it decides, free of torch and vLLM:

1. ``read_view``: each rank reads the mounted ``<name>-placement`` ConfigMap as *one* kubelet snapshot
   (``snapshot.read_snapshot``), checks the declared hash (``stamp.stamp_from_data``), takes the map
   from ``vllm-eplb.json`` (format ``vllm``, ``vibe.engines.vllm``; else ``placement.json``, else
   ``eplb.json``) and fits it to what vLLM asked for (``fit``: MoE layer
   count, replica count, EP size, every expert in every layer). A rank never raises here: whatever goes
   wrong is the view's ``reason``, because every rank must reach the collective that follows.
2. The plugin gathers every rank's ``View`` (generation, content hash, reason) over vLLM's EPLB process
   group; ``choose`` then decides from that list alone, so every rank decides the same:

   * every rank sees the same generation and hash, it fits, and it is not older than the map vibe put in
     service: ``APPLY`` that map;
   * the ranks disagree (kubelet swaps a ConfigMap volume on each node at its own time), or the newest
     placement is older than the one in service: ``KEEP`` the map in service (vibe's last applied map,
     held by every rank, else the ``old`` map vLLM passed, identical on every rank; no expert moves) until
     they agree at a later rebalance;
   * the newest placement does not fit (or there is none, or it has no generation): the last vibe map
     that did fit, if vibe applied one (``KEEP``), else vLLM's default policy's answer (``DEFAULT``),
     which is deterministic in inputs every rank shares. Either way with one log line saying why.

3. ``write_window``: rank 0 writes the load window it was given (``vibe.engines.vllm.window_document``:
   counts and the window's steps), atomically, to a file in a shared volume; ``vibe serving export-loads
   --engine vllm --dump FILE --follow`` turns it into tokens per step (the ``vllm`` record's loads
   reader) and ships it to the loads ConfigMap whenever it changes.

Rank order: physical slot ``p`` of the placement lives on vLLM EP rank ``p // (num_replicas /
num_ranks)`` (vLLM's own layout), so placement rank r must be vLLM's EP rank r (see docs/serving.md).
"""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vibe import contract
from vibe.engines import canonical, eplb, vllm
from vibe.serving import rankmap, snapshot, stamp, state
from vibe.serving.errors import ServingError, engine_errors

#: The vLLM releases the plugin is tested with (``vibe.engines.vllm``); others are refused at start.
VLLM_VERSIONS = vllm.VLLM_VERSIONS

#: Environment of the vLLM processes: the mounted placement ConfigMap (turns the plugin on), the file the
#: load window goes to (optional), and vLLM's ``--eplb-config`` ``window_size`` when it is not the default.
ENV_PLACEMENT_DIR = "VIBE_VLLM_PLACEMENT_DIR"
ENV_LOADS_FILE = "VIBE_VLLM_LOADS_FILE"
ENV_WINDOW_SIZE = "VIBE_VLLM_EPLB_WINDOW_SIZE"
#: The engine ranks' GPUs, written by ``vibe serving init --follow-gpus --engine-gpus-out`` (optional).
ENV_ENGINE_GPUS = "VIBE_VLLM_ENGINE_GPUS"
DEFAULT_WINDOW_SIZE = vllm.DEFAULT_WINDOW_SIZE


class Action(str, enum.Enum):
    APPLY = "apply"  # return the placement every rank read
    KEEP = "keep"  # return the map in service (vibe's last, or whatever vLLM runs)
    DEFAULT = "default"  # return vLLM's default policy's answer


@dataclass(frozen=True)
class Request:
    """What vLLM asked for at this rebalance (``rebalance_experts``' arguments)."""

    num_layers: int  # weight.shape[0]: vLLM's MoE layers
    num_logical: int  # weight.shape[1]
    num_replicas: int  # physical experts (slots) per layer, all ranks
    num_ranks: int  # EP size


@dataclass(frozen=True)
class View:
    """What one rank read: picklable and small, gathered from every rank.

    Attributes:
        generation: the placement generation (None: none declared, or nothing readable).
        data_hash: ``contract.content_hash`` of the whole snapshot ("" when unreadable), as the sidecar
            records it (``state.Applied.data_hash``).
        reason: why this rank cannot use it ("" when it fits).
        uid: the MoEDeployment UID its generation counts in (``placement-meta.json``), if written.
    """

    generation: int | None
    data_hash: str
    reason: str = ""
    uid: str | None = None


@dataclass(frozen=True)
class Decision:
    """What every rank returns; ``applied`` is the state after it (the sidecar's ``state.Applied``)."""

    action: Action
    applied: state.Applied | None
    why: str


def fit(rows: Any, request: Request, where: str, gpus: int | None = None) -> np.ndarray:
    """The placement's ``[layers, slots]`` map if it fits what vLLM asked for, else ServingError.

    Args:
        rows: the map as read (nested lists).
        gpus: the number of GPUs the placement lists (``placement.json`` ``gpus``), if it lists them.
    """
    try:
        arr = np.asarray(rows)
    except (TypeError, ValueError):
        raise ServingError("PlacementMismatch", f"{where}: the map is not a [layers][slots] list") from None
    if arr.ndim != 2 or arr.size == 0 or arr.dtype.kind not in "iu":
        raise ServingError("PlacementMismatch", f"{where}: the map is not a [layers][slots] integer list")
    layers, slots = arr.shape
    if layers != request.num_layers:
        raise ServingError(
            "PlacementMismatch",
            f"{where}: placement has {layers} MoE layers but vLLM's model has {request.num_layers}",
        )
    if slots != request.num_replicas:
        raise ServingError(
            "PlacementMismatch",
            f"{where}: placement has {slots} physical experts per layer but vLLM has {request.num_replicas}"
            f" ({request.num_logical} experts + {request.num_replicas - request.num_logical} redundant:"
            f" --eplb-config num_redundant_experts)",
        )
    ranks = gpus if gpus is not None else request.num_ranks
    if ranks != request.num_ranks or slots % request.num_ranks:
        raise ServingError(
            "PlacementMismatch",
            f"{where}: placement is for {ranks} GPUs but vLLM's EP size is {request.num_ranks}",
        )
    if arr.min() < 0 or arr.max() >= request.num_logical:
        raise ServingError(
            "PlacementMismatch",
            f"{where}: names expert {int(arr.max() if arr.max() >= request.num_logical else arr.min())},"
            f" outside 0..{request.num_logical - 1}",
        )
    present = np.zeros((layers, request.num_logical), dtype=bool)
    np.put_along_axis(present, arr.astype(np.int64), True, axis=1)
    if not present.all():
        layer, expert = (int(x[0]) for x in np.nonzero(~present))
        raise ServingError(
            "PlacementMismatch", f"{where}: layer {layer} leaves expert {expert} without a slot"
        )
    return arr.astype(np.int64)


def _map_from(data: dict[str, str]) -> tuple[Any, int | None, str]:
    """The ``[layers][slots]`` rows, the GPU count the placement names, and the key the rows came from.

    The GPU count comes from ``placement.json`` whichever key gives the rows: a map for 4 GPUs x 2 slots
    has the shape of one for 2 x 4, and only the GPU list tells them apart.
    """
    placement = json.loads(data[canonical.KEY]) if canonical.KEY in data else None
    listed = placement.get("gpus") if isinstance(placement, dict) else None
    gpus = len(listed) if isinstance(listed, list) else None
    if vllm.KEY in data:
        doc = json.loads(data[vllm.KEY])
        return (doc.get(vllm.MAP) if isinstance(doc, dict) else None), gpus, vllm.KEY
    if placement is not None:
        layers = placement.get("layers") if isinstance(placement, dict) else None
        if not isinstance(layers, list):
            raise ServingError("PlacementMismatch", f"{canonical.KEY}: no layers")
        if placement.get("replicaSplit", "even") != "even":  # vLLM would run it evenly: not as planned
            raise ServingError(
                "PlacementMismatch",
                f"{canonical.KEY} was planned with the {placement.get('replicaSplit')} replica split, "
                "which vLLM's dispatch cannot run (replica = position % count): plan with replicaSplit even",
            )
        rows = [layer.get("physicalToLogical") if isinstance(layer, dict) else None for layer in layers]
        return rows, gpus, canonical.KEY
    if eplb.KEY in data:
        doc = json.loads(data[eplb.KEY])
        return (doc.get("phy2log") if isinstance(doc, dict) else None), gpus, eplb.KEY
    raise ServingError(
        "MissingPlacement",
        f"the placement ConfigMap has none of {vllm.KEY}, {canonical.KEY}, {eplb.KEY}"
        f" (keys: {', '.join(sorted(data)) or 'none'}); add 'vllm' to spec.output.formats",
    )


def write_engine_gpus(path: str | os.PathLike[str], gpus: Sequence[tuple[str, int]]) -> None:
    """Record the engine ranks' GPUs (``rankmap.engine_gpus``) for the plugin, atomically."""
    write_window(path, json.dumps({"engineGpus": [[node, index] for node, index in gpus]}))


def read_engine_gpus(path: str | os.PathLike[str]) -> list[tuple[str, int]]:
    """The engine ranks' GPUs ``write_engine_gpus`` recorded, or ServingError."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        gpus = [(str(node), int(index)) for node, index in doc["engineGpus"]]
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ServingError("UnreadableVolume", f"engine GPU list {path}: {e}") from None
    return gpus


def follow_gpus(arr: np.ndarray, data: dict[str, str], engine: list[tuple[str, int]]) -> np.ndarray:
    """Move each GPU's slots to the vLLM EP rank that runs on it (``rankmap.slot_permutation``)."""
    if canonical.KEY not in data:
        raise ServingError(
            "MissingPlacement", f"following GPUs needs {canonical.KEY}: keep 'vibe' in formats"
        )
    placed = rankmap.placement_gpus(json.loads(data[canonical.KEY]))
    perm = rankmap.slot_permutation(placed, engine, arr.shape[1] // len(placed))
    return arr[:, perm]


def read_view(
    mount: str | os.PathLike[str], request: Request, engine_gpus: str | os.PathLike[str] | None = None
) -> tuple[View, np.ndarray | None]:
    """This rank's view of the mounted placement, and the fitted map (None unless it fits). Never raises
    ServingError: a failure is the view's reason.

    Args:
        engine_gpus: the file ``write_engine_gpus`` wrote for this pod, to follow GPUs; its content is
            part of the view's hash, so ranks agree on the rank order too.
    """
    try:
        snap = snapshot.read_snapshot(mount, attempts=5, pause=0.02)
        seen = stamp.stamp_from_data(snap.data)
        digest = contract.content_hash(snap.data)
    except ServingError as e:
        return View(None, "", f"{e.reason}: {e}"), None
    try:
        rows, gpus, key = _map_from(snap.data)
        arr = fit(rows, request, key, gpus)
        if engine_gpus is not None:
            engine = read_engine_gpus(engine_gpus)
            arr = follow_gpus(arr, snap.data, engine)
            digest = contract.content_hash({"data": digest, "engineGpus": json.dumps(engine)})
    except json.JSONDecodeError as e:
        return View(seen.generation, digest, f"UnreadableVolume: not JSON: {e}", seen.uid), None
    except ServingError as e:
        return View(seen.generation, digest, f"{e.reason}: {e}", seen.uid), None
    if seen.generation is None:
        return View(None, digest, "UnreadableVolume: the placement declares no generation"), None
    return View(seen.generation, digest, "", seen.uid), arr


def choose(views: Sequence[View], applied: state.Applied | None) -> Decision:
    """The decision every rank makes from every rank's view (the same list on every rank).

    Args:
        views: one per EP rank, in rank order.
        applied: the vibe map vLLM runs now, as the sidecar records one (None: vibe applied none yet).
            Newer or not is the sidecar's own rule, ``state.decide`` (generations, and the MoEDeployment's
            UID: a re-created object's first placement supersedes the old object's generations).
    """
    in_service = None if applied is None else applied.generation
    fallback = Action.KEEP if applied is not None else Action.DEFAULT
    keeps = f"keeping generation {in_service}" if applied is not None else "using vLLM's default policy"
    for rank, view in enumerate(views):
        if view.reason:
            return Decision(fallback, applied, f"rank {rank}: {view.reason}; {keeps}")
    if len({(v.generation, v.data_hash, v.uid) for v in views}) > 1:
        gens = sorted({str(v.generation) for v in views})
        return Decision(
            Action.KEEP,
            applied,
            f"EP ranks see different placements (generations {', '.join(gens)}: volumes not all updated"
            f" yet); keeping the map in service until they agree",
        )
    view = views[0]
    seen = stamp.Stamp(view.generation, None, False, view.uid)
    verdict = state.decide(applied, seen, view.data_hash)
    if verdict is state.Verdict.APPLY:
        after = state.successor(applied, seen, view.data_hash, "")
        return Decision(Action.APPLY, after, f"applying placement generation {view.generation}")
    if verdict is state.Verdict.SAME:
        return Decision(Action.KEEP, applied, f"placement generation {view.generation} is in service")
    why = {
        state.Verdict.OLDER: f"placement generation {view.generation} is older than {in_service} in service",
        state.Verdict.CONFLICT: f"placement generation {view.generation} is the one in service with other"
        " bytes (two writers, or a hand edit)",
    }.get(verdict, f"placement generation {view.generation} cannot be ordered")
    return Decision(Action.KEEP, applied, f"{why}; keeping the map in service")


def window_size(configured: int | None) -> int:
    """vLLM's EPLB window (steps the load counts are summed over): vLLM's config, else the env, else 1000."""
    if configured:
        return int(configured)
    raw = os.environ.get(ENV_WINDOW_SIZE, "")
    return int(raw) if raw.strip().isdigit() and int(raw) > 0 else DEFAULT_WINDOW_SIZE


def window(weight: Any, steps: int) -> str | None:
    """The window file's text (``vibe.engines.vllm.window_document``); None for an empty window."""
    with engine_errors():
        return vllm.window_document(weight, steps)


def write_window(path: str | os.PathLike[str], document: str) -> None:
    """Replace the window file atomically (the exporter never reads half a file)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    state.write_atomic(target, document + "\n")
