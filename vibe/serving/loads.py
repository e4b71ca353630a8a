"""Expert loads back in: SGLang's expert-distribution dump -> the load ConfigMap the MoEDeployment reads.

SGLang records expert choices when launched with ``--expert-distribution-recorder-mode stat``
(``python/sglang/srt/eplb/expert_distribution.py`` in sgl-project/sglang). ``POST
/start_expert_distribution_record`` starts it, ``POST /dump_expert_distribution_record`` makes rank 0
``torch.save`` a dict into ``$SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR`` (file
``expert_distribution_recorder_<unix time>.pt``) and clears the buffer while recording goes on:

* ``logical_count``: int tensor ``[passes, num_layers, num_logical_experts]`` -- per forward pass, per
  layer, how many (token, top-k choice) pairs went to each logical expert, summed over all ranks. The
  buffer is circular (``--expert-distribution-recorder-buffer-size``, default 1000 passes): rows never
  filled stay zero. ``num_layers`` is the model's ``num_hidden_layers`` (dense layers included, their
  rows zero);
* ``rank``, ``average_utilization_rate_over_window``: not needed here.

``to_loads`` turns that into what the placement solver wants, tokens per forward step per expert over
the MoE layers only: sum over passes / number of passes that recorded anything (a pass with no tokens
is an idle DP step or an unfilled buffer row, neither of which is load), then drop the dense layers. A
``[layers, experts]`` count (already summed, e.g. a JSON export) is divided by ``--steps`` when given.

The result is written with server-side apply (field manager ``vibe-loads``) as ``{"loads": [[...]]}``
under the key the MoEDeployment's ``spec.workload.configMapRef`` names.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vibe import api
from vibe.serving import torchfile
from vibe.serving.errors import ServingError

log = logging.getLogger(__name__)

FIELD_MANAGER = api.FIELD_MANAGER_LOADS
DUMP_GLOB = "expert_distribution_recorder_*.pt"
ANNOTATION_PASSES = api.ANNOTATION_LOADS_FORWARD_PASSES
ANNOTATION_SOURCE = api.ANNOTATION_LOADS_SOURCE


def read_dump(path: str | os.PathLike[str]) -> np.ndarray:
    """``logical_count`` from an SGLang dump (``.pt``) or a JSON export.

    ``.pt`` files are read with torch when it is installed, else with ``torchfile`` (no torch needed).

    JSON may be ``{"logical_count": [...]}`` or the bare nested list.

    Returns:
        float64 array, ``[passes, layers, experts]`` or ``[layers, experts]``.
    """
    path = Path(path)
    if path.suffix == ".pt":
        obj = _load_pt(path)
        count = obj.get("logical_count") if isinstance(obj, dict) else obj
        if count is None:
            keys = sorted(obj) if isinstance(obj, dict) else []
            raise ServingError("InvalidDump", f"{path} has no logical_count (keys: {keys})")
        count = count.cpu().numpy() if hasattr(count, "cpu") else count
    else:
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ServingError("InvalidDump", f"cannot read {path}: {e}") from None
        count = obj.get("logical_count") if isinstance(obj, dict) else obj
        if count is None:
            raise ServingError("InvalidDump", f"{path} has no logical_count (keys: {sorted(obj)})")
    try:
        arr = np.asarray(count, dtype=np.float64)
    except (TypeError, ValueError):
        raise ServingError("InvalidDump", f"{path}: logical_count is not a numeric array") from None
    if arr.ndim not in (2, 3) or 0 in arr.shape:
        raise ServingError(
            "InvalidDump", f"{path}: logical_count has shape {arr.shape}, expected 2 or 3 dims"
        )
    if not np.all(np.isfinite(arr)) or arr.min() < 0:
        raise ServingError("InvalidDump", f"{path}: logical_count holds negative or non-finite counts")
    return arr


def _load_pt(path: Path) -> object:
    try:
        import torch
    except ImportError:
        return torchfile.load(path)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        raise ServingError("InvalidDump", f"cannot load {path}: {e}") from None


@dataclass(frozen=True)
class Loads:
    """Tokens per forward step, per MoE layer and expert.

    Attributes:
        loads: [moe_layers, experts] float64.
        passes: forward passes the counts were divided by (None: raw counts, divided by nothing).
        dropped_layers: leading layers dropped as dense.
    """

    loads: np.ndarray
    passes: int | None
    dropped_layers: int


def to_loads(
    count: np.ndarray,
    steps: int | None = None,
    first_moe_layer: int | None = None,
    moe_layers: int | None = None,
) -> Loads:
    """Normalise a ``logical_count`` to tokens per step over the MoE layers.

    Args:
        count: ``[passes, layers, experts]`` or ``[layers, experts]``.
        steps: forward passes to divide by; default: the passes that recorded any token (3-D input),
            or none (2-D input: the counts stay raw totals).
        first_moe_layer: drop this many leading layers (``first_k_dense_replace``);
        moe_layers: or keep this many trailing layers; with neither, leading all-zero layers are dropped.
    """
    if steps is not None and steps < 1:
        raise ServingError("InvalidArgument", f"--steps must be >= 1, got {steps}")
    if count.ndim == 3:
        active = int(np.count_nonzero(count.reshape(count.shape[0], -1).sum(axis=1)))
        if active == 0:
            raise ServingError(
                "InvalidDump", "the dump recorded no forward pass with tokens (was the engine idle?)"
            )
        total = count.sum(axis=0)
        passes: int | None = steps or active
    else:
        total = count
        passes = steps
    layers = total.shape[0]
    if first_moe_layer is not None and moe_layers is not None:
        raise ServingError("InvalidArgument", "give --first-moe-layer or --moe-layers, not both")
    if first_moe_layer is not None:
        drop = first_moe_layer
    elif moe_layers is not None:
        drop = layers - moe_layers
    else:
        per_layer = total.sum(axis=1)
        nonzero = np.flatnonzero(per_layer)
        if nonzero.size == 0:
            raise ServingError("InvalidDump", "every layer of the dump is zero")
        drop = int(nonzero[0])
    if drop < 0 or drop >= layers:
        raise ServingError(
            "InvalidArgument", f"the dump has {layers} layers; cannot drop {drop} leading dense layers"
        )
    moe = total[drop:]
    empty = np.flatnonzero(moe.sum(axis=1) == 0)
    if empty.size:
        raise ServingError(
            "InvalidDump",
            f"MoE layer {int(empty[0]) + drop} of the dump has no tokens; is the dense-layer count right?",
        )
    return Loads(moe / (passes or 1), passes, drop)


def loads_document(loads: Loads, decimals: int = 3) -> str:
    """``{"loads": [[...]]}``, deterministic bytes (sorted keys, fixed rounding)."""
    rows = [[round(float(x), decimals) for x in row] for row in loads.loads]
    return json.dumps({"loads": rows}, sort_keys=True, separators=(",", ":"))


# ---------------------------------------------------------------- the engine's recorder, over HTTP


def _post(url: str, timeout: float) -> None:
    request = urllib.request.Request(url, data=b"", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as e:
        raise ServingError("ApplyFailed", f"POST {url} answered HTTP {e.code}") from None
    except (urllib.error.URLError, OSError) as e:
        raise ServingError("ApplyFailed", f"POST {url} failed: {getattr(e, 'reason', e)}") from None


def start_recording(engine_url: str, timeout: float = 60.0) -> None:
    """``POST /start_expert_distribution_record`` (clears what was recorded so far)."""
    _post(engine_url.rstrip("/") + "/start_expert_distribution_record", timeout)


def dump_recording(engine_url: str, recorder_dir: str, timeout: float = 120.0, poll: float = 1.0) -> Path:
    """``POST /dump_expert_distribution_record`` and wait for the new ``.pt`` file rank 0 writes.

    Returns:
        The path of the new dump file (in ``recorder_dir``, the engine's
        ``SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR``, shared through an emptyDir).
    """
    before = set(glob.glob(os.path.join(recorder_dir, DUMP_GLOB)))
    _post(engine_url.rstrip("/") + "/dump_expert_distribution_record", timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = sorted(set(glob.glob(os.path.join(recorder_dir, DUMP_GLOB))) - before, key=os.path.getmtime)
        if new:
            path = Path(new[-1])
            # torch.save writes in place: wait until the size stops changing
            size = -1
            while size != path.stat().st_size:
                size = path.stat().st_size
                time.sleep(poll / 4)
            return path
        time.sleep(poll)
    raise ServingError(
        "ApplyFailed",
        f"no new {DUMP_GLOB} in {recorder_dir} within {timeout:.0f}s; is it the engine's"
        " SGLANG_EXPERT_DISTRIBUTION_RECORDER_DIR, and is this the rank-0 pod?",
    )
