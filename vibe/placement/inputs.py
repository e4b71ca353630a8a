"""Reading the planner's inputs: expert loads, fleets and a current placement, from parsed JSON.

Role: the CLI reads files, the operator reads ConfigMaps and GPUProfiles; both hand the parsed JSON to
these functions, which turn it into validated arrays or raise one ``PlacementError`` naming the problem.

Loads mean *tokens per expert per forward step*. The curves are flat then linear, so absolute numbers
matter: ~100 tokens per expert (decode) and thousands (prefill) fall in different regimes.

* ``{"loads": [[...], ...]}`` (ours) or a bare ``[[...], ...]``: [layers][experts] tokens per step.
* SGLang's expert-distribution recorder: ``{"logical_count": ...}`` as [layers][experts] or
  [steps][layers][experts]. A per-step buffer is averaged over its steps (= summed, then divided by the
  number of steps). A [layers][experts] window total is divided by ``"num_steps"`` when the file says it.
* ``tokens_per_step`` rescales a profile of relative frequencies so that each layer routes
  ``tokens_per_step * top_k`` tokens (every token goes to top_k experts); ``top_k`` may come from the
  argument or a ``"top_k"`` / ``"topK"`` key.

Fleet: ``{"gpus": [{"id", "node", "tokens": [...], "seconds": [...]}, ...]}`` in expert-parallel rank
order. Instead of measured points a GPU may give ``"roofline": {"floorSeconds", "secondsPerToken"}`` or
``"reference": {"hiddenSize", "intermediateSize", "dtype"}`` (the H100 reference curve for that shape);
a top-level ``"curve"`` / ``"roofline"`` / ``"reference"`` is the default for GPUs that give none.
``"timeScale"`` (default 1) makes a GPU that many times slower: its compute region (the curve above its
floor) x timeScale and its memory-bound floor by ``"floorShare"`` (default 1: the whole curve) of that,
as ``synthetic.slowed_curve`` (0: a power-capped GPU, measured; 0.3: a clock held down, as the agent
publishes a GPUProfile's drift, whose curves already carry it); ``"uuid"`` is carried into the placement
file.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np

from vibe.placement.cost import Placement, check_loads
from vibe.placement.curves import (
    Fleet,
    GPUCurve,
    as_vector,
    numbers_array,
    reference_curve,
    roofline_curve,
)
from vibe.placement.errors import PlacementError, PlacementReason
from vibe.placement.synthetic import slowed_curve

#: Bounds of a JSON document read from a file or from an object a tenant or a node controls. Every
#: input vibe reads is a few levels deep ({"loads": [steps][layers][experts]} is 4); a ConfigMap holds at
#: most ~1 MiB, a recorder file for a long window tens of MiB.
MAX_JSON_DEPTH = 16
MAX_JSON_FILE_BYTES = 256 << 20


def parse_json(
    text: str | bytes,
    what: str,
    *,
    reason: PlacementReason = "UnreadableFile",
    max_bytes: int = MAX_JSON_FILE_BYTES,
    max_depth: int = MAX_JSON_DEPTH,
) -> Any:
    """Parse JSON text within size and depth bounds, or raise ``PlacementError(reason)`` naming ``what``.

    Every way the decoder can fail is the input's problem, not a bug: invalid JSON, nesting deep enough
    to exhaust the recursion limit (RecursionError), an integer of more than 4300 digits (ValueError).
    """
    if len(text) > max_bytes:
        raise PlacementError(reason, f"{what} is {len(text)} bytes; at most {max_bytes} are read")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise PlacementError(reason, f"{what} is not valid JSON (line {e.lineno}: {e.msg})") from None
    except RecursionError:
        raise PlacementError(reason, f"{what} is nested deeper than {max_depth} levels") from None
    except ValueError as e:  # e.g. "Exceeds the limit (4300 digits) for integer string conversion"
        raise PlacementError(reason, f"{what} cannot be read as JSON numbers: {e}") from None
    if json_depth(obj, max_depth) > max_depth:
        raise PlacementError(reason, f"{what} is nested deeper than {max_depth} levels")
    return obj


def json_depth(obj: Any, limit: int) -> int:
    """Nesting depth of parsed JSON (a scalar is 0, ``[1]`` is 1), counted up to ``limit + 1``."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(obj, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (list, dict)):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            items = node.values() if isinstance(node, dict) else node
            stack.extend((v, depth) for v in items if isinstance(v, (list, dict)))
    return deepest


def load_json(path: str | Path, what: str, *, max_bytes: int = MAX_JSON_FILE_BYTES) -> Any:
    """Parse a JSON file (at most ``max_bytes``), or raise ``UnreadableFile`` naming the file and why."""
    where = f"{what} file {str(path)!r}"
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or a device: no end to wait for
            raise PlacementError("UnreadableFile", f"{where} is not a regular file")
        with open(path, "rb") as fh:
            blob = fh.read(max_bytes + 1)
    except OSError as e:
        raise PlacementError("UnreadableFile", f"cannot read {where}: {e.strerror or e}") from None
    if len(blob) > max_bytes:
        raise PlacementError("UnreadableFile", f"{where} is larger than {max_bytes} bytes")
    try:
        text = blob.decode()
    except UnicodeDecodeError:
        raise PlacementError("UnreadableFile", f"{where} is not UTF-8 text") from None
    return parse_json(text, where, max_bytes=max_bytes)


def read_loads(
    obj: dict[str, Any] | list[Any], *, tokens_per_step: float | None = None, top_k: int | None = None
) -> np.ndarray:
    """[L, E] float64 tokens per expert per forward step, from our JSON or SGLang's recorder output."""
    steps = None
    if isinstance(obj, dict):
        keys = [k for k in ("loads", "logical_count", "logicalCount") if k in obj]
        if not keys:
            raise PlacementError(
                "InvalidLoads", "loads JSON needs a 'loads' or 'logical_count' array of [layers][experts]"
            )
        data = obj[keys[0]]
        steps = obj.get("num_steps", obj.get("numSteps"))
        if top_k is None:
            top_k = obj.get("top_k", obj.get("topK"))
    elif isinstance(obj, list):
        data = obj
    else:
        raise PlacementError("InvalidLoads", "loads must be a JSON object or a [layers][experts] array")
    arr = numbers_array(data)
    if arr is None:
        raise PlacementError(
            "InvalidLoads",
            "loads must be a rectangular [layers][experts] (or [steps][layers][experts]) array of numbers",
        )
    if arr.ndim == 3:
        if arr.shape[0] == 0:
            raise PlacementError("InvalidLoads", "the recorder output has no steps")
        check_loads(arr.reshape(-1, arr.shape[-1]) if arr.size else arr.reshape(0, 0))
        arr = arr.sum(axis=0) / arr.shape[0]
    elif arr.ndim == 2 and steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, (int, float)) or not steps > 0:
            raise PlacementError("InvalidLoads", f"num_steps must be a positive number, not {steps!r}")
        arr = arr / float(steps)
    elif arr.ndim != 2:
        raise PlacementError(
            "InvalidLoads",
            f"loads must be [layers][experts] or [steps][layers][experts], got {arr.ndim} dimensions",
        )
    loads = check_loads(arr)
    if tokens_per_step is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
            raise PlacementError(
                "InvalidLoads",
                "rescaling to --tokens-per-step needs --top-k, the experts each token is routed to",
            )
        if not (np.isfinite(tokens_per_step) and tokens_per_step > 0):
            raise PlacementError("InvalidLoads", f"tokens per step must be > 0, not {tokens_per_step!r}")
        sums = loads.sum(axis=1, keepdims=True)
        if (sums <= 0).any():
            layer = int(np.flatnonzero(sums[:, 0] <= 0)[0])
            raise PlacementError("InvalidLoads", f"layer {layer} has no load to rescale")
        loads = loads / sums * (float(tokens_per_step) * int(top_k))
    return loads


def read_fleet(obj: dict[str, Any]) -> Fleet:
    """A Fleet (rank order) from ``{"gpus": [...]}``; see the module docstring for the GPU entries."""
    if not isinstance(obj, dict) or not isinstance(obj.get("gpus"), list):
        raise PlacementError("InvalidFleet", "fleet JSON needs a 'gpus' list in expert-parallel rank order")
    if not obj["gpus"]:
        raise PlacementError("InvalidFleet", "the fleet has no GPUs")
    default: dict[str, Any] = {k: obj[k] for k in ("curve", "roofline", "reference") if k in obj}
    gpus = []
    for rank, entry in enumerate(obj["gpus"]):
        if not isinstance(entry, dict):
            raise PlacementError("InvalidFleet", f"GPU at rank {rank} must be an object")
        gid = entry.get("id")
        if not isinstance(gid, str) or not gid:
            raise PlacementError("InvalidFleet", f"GPU at rank {rank} needs a string 'id'")
        node = entry.get("node", "")
        if not isinstance(node, str):
            raise PlacementError("InvalidFleet", f"GPU {gid!r}: 'node' must be a string")
        tokens, seconds = _curve_of(entry, default, gid)
        scale = entry.get("timeScale", 1.0)
        if (
            isinstance(scale, bool)
            or not isinstance(scale, (int, float))
            or not (np.isfinite(scale) and scale > 0)
        ):
            raise PlacementError("InvalidCurve", f"GPU {gid!r}: timeScale must be a positive number")
        share = entry.get("floorShare", 1.0)
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
            raise PlacementError("InvalidCurve", f"GPU {gid!r}: floorShare must be a number in [0, 1]")
        uuid = entry.get("uuid", "")
        curve = as_vector(seconds, f"GPU {gid!r}: seconds")
        gpus.append(
            GPUCurve(
                gid,
                node,
                tokens,
                curve * float(scale) if share == 1 else slowed_curve(curve, float(scale), float(share)),
                uuid=uuid if isinstance(uuid, str) else "",
            )
        )
    return Fleet(tuple(gpus))


def _curve_of(entry: dict[str, Any], default: dict[str, Any], gid: str) -> tuple[Any, Any]:
    if "tokens" in entry or "seconds" in entry:
        if "tokens" not in entry or "seconds" not in entry:
            raise PlacementError("InvalidCurve", f"GPU {gid!r} needs both 'tokens' and 'seconds'")
        return entry["tokens"], entry["seconds"]
    src = {k: entry[k] for k in ("curve", "roofline", "reference") if k in entry} or default
    if "curve" in src:
        c = src["curve"]
        if not isinstance(c, dict) or "tokens" not in c or "seconds" not in c:
            raise PlacementError("InvalidCurve", f"GPU {gid!r}: 'curve' needs 'tokens' and 'seconds'")
        return c["tokens"], c["seconds"]
    if "roofline" in src:
        r = src["roofline"]
        try:
            floor, per_token = float(r["floorSeconds"]), float(r["secondsPerToken"])
            sharpness = float(r.get("sharpness", 4.0))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise PlacementError(
                "InvalidCurve", f"GPU {gid!r}: 'roofline' needs numbers floorSeconds and secondsPerToken"
            ) from None
        return _for_gpu(gid, roofline_curve, floor, per_token, sharpness=sharpness)
    if "reference" in src:
        r = src["reference"]
        try:
            h, i = int(r["hiddenSize"]), int(r["intermediateSize"])
            dtype = str(r.get("dtype", "bf16"))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise PlacementError(
                "InvalidCurve", f"GPU {gid!r}: 'reference' needs hiddenSize and intermediateSize"
            ) from None
        return _for_gpu(gid, reference_curve, h, i, dtype)
    raise PlacementError(
        "InvalidCurve", f"GPU {gid!r} has no curve: give tokens and seconds, a roofline or a reference shape"
    )


def _for_gpu(gid: str, make: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``make(*args, **kwargs)``, its PlacementError prefixed with the GPU it is about."""
    try:
        return make(*args, **kwargs)
    except PlacementError as e:
        raise PlacementError(e.reason, f"GPU {gid!r}: {e}") from None


def read_placement(
    obj: dict[str, Any], *, slots_per_gpu: int | None = None, num_experts: int | None = None
) -> Placement:
    """A Placement from our placement.json, an SGLang expert-location file or an EPLB file.

    A placement.json with ``replicaSplit: weighted`` carries each slot's share of its expert's tokens
    (``layers[].replicaWeights``); the Placement then has them as ``weights``.

    SGLang's and EPLB's files do not say the slots per GPU or the expert count: pass them (the expert
    count defaults to the largest id + 1).
    """
    if not isinstance(obj, dict):
        raise PlacementError("InvalidPlacement", "a placement file must be a JSON object")
    weights = None
    if "layers" in obj:
        try:
            phy = [layer["physicalToLogical"] for layer in obj["layers"]]
            s = int(obj["slotsPerGPU"])
            e = int(obj["numLogicalExperts"])
            if obj.get("replicaSplit", "even") == "weighted":  # format 1.1: per-slot shares
                weights = [layer["replicaWeights"] for layer in obj["layers"]]
        except (KeyError, TypeError, ValueError):
            raise PlacementError(
                "InvalidPlacement",
                "placement.json needs slotsPerGPU, numLogicalExperts and layers[].physicalToLogical "
                "(and layers[].replicaWeights with replicaSplit weighted)",
            ) from None
    else:
        key = "physical_to_logical_map" if "physical_to_logical_map" in obj else "phy2log"
        if key not in obj:
            raise PlacementError(
                "InvalidPlacement",
                "unknown placement file: expected layers, physical_to_logical_map or phy2log",
            )
        phy = obj[key]
        if slots_per_gpu is None:
            raise PlacementError("InvalidPlacement", f"a {key!r} placement needs the slots per GPU given")
        s = slots_per_gpu
        try:
            e = num_experts if num_experts is not None else int(np.max(np.array(phy, dtype=np.int64))) + 1
        except (TypeError, ValueError):
            raise PlacementError("InvalidPlacement", f"{key} must hold integers") from None
    if slots_per_gpu is not None and s != slots_per_gpu:
        raise PlacementError(
            "ShapeMismatch", f"the current placement has {s} slots per GPU, not {slots_per_gpu}"
        )
    return Placement(np.asarray(phy), s, e, cast("np.ndarray | None", weights))
