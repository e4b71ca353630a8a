"""The init container's job: mounted ``<name>-placement`` ConfigMap in, the engine's own files out.

Runs before the engine starts (``vibe serving init``), so the engine reads a placement that was checked
against its own launch settings, from a path it can be pointed at with a flag:

1. read every key from one kubelet snapshot (``snapshot.read_snapshot``);
2. check the declared content hash, if the operator declared one (``contract.stamp_from_data``);
3. fit each requested engine file (``engine_fit.fit_sglang``, ``engine_fit.fit_eplb``): any mismatch stops
   here, with the init container's exit code and one log line, instead of inside the engine's model loader;
4. write the files atomically and record the applied generation for the sidecar (``state``).

``prepare`` is pure (data in, documents out) so the sidecar runs the very same checks before it asks
anyone to restart.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vibe.serving import contract, engine_fit, rankmap, snapshot, state
from vibe.serving.errors import ServingError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outputs:
    """Engine documents fitted to the engine's settings (None where not requested)."""

    sglang: dict | None = None
    eplb: dict | None = None


def _load_key(data: dict[str, str], key: str, hint: str) -> Any:
    if key not in data:
        raise ServingError(
            "MissingPlacement",
            f"the placement ConfigMap has no {key} (keys: {', '.join(sorted(data)) or 'none'}); {hint}",
        )
    try:
        return json.loads(data[key])
    except json.JSONDecodeError as e:
        raise ServingError("UnreadableVolume", f"{key} is not JSON: {e}") from None


def prepare(
    data: dict[str, str],
    settings: engine_fit.EngineSettings,
    sglang: bool = False,
    eplb: bool = False,
    engine_gpus: list[tuple[str, int]] | None = None,
) -> Outputs:
    """Fit the requested engine documents from ConfigMap ``data``; raise on any mismatch.

    Args:
        engine_gpus: ``(node, gpu index)`` per engine rank (``rankmap.engine_gpus``); when given, each
            GPU's slots move to the engine rank that has that GPU (``rankmap``), instead of trusting
            that the engine numbers its ranks the way the placement does.
    """
    if not (sglang or eplb):
        raise ServingError("InvalidArgument", "ask for at least one engine file (--sglang-out or --eplb-out)")
    if contract.KEY_PLACEMENT in data:
        engine_fit.check_gpu_count(_load_key(data, contract.KEY_PLACEMENT, ""), settings)
    if engine_gpus is not None:
        placed = rankmap.placement_gpus(
            _load_key(data, contract.KEY_PLACEMENT, "add 'vibe' to spec.output.formats")
        )
    out_sglang = out_eplb = None
    if sglang:
        doc = _load_key(data, contract.KEY_SGLANG, "add 'sglang' to the MoEDeployment's spec.output.formats")
        out_sglang = engine_fit.fit_sglang(doc, settings)
        if engine_gpus is not None:
            slots = len(out_sglang["physical_to_logical_map"][0]) // settings.ep_size
            perm = rankmap.slot_permutation(placed, engine_gpus, slots)
            out_sglang = rankmap.permute_sglang(out_sglang, perm)
    if eplb:
        doc = _load_key(data, contract.KEY_EPLB, "add 'eplb' to the MoEDeployment's spec.output.formats")
        out_eplb = engine_fit.fit_eplb(doc, settings)
        if engine_gpus is not None:
            slots = len(out_eplb["phy2log"][0]) // settings.ep_size
            perm = rankmap.slot_permutation(placed, engine_gpus, slots)
            out_eplb = rankmap.permute_eplb(out_eplb, perm)
    return Outputs(out_sglang, out_eplb)


def _dump_json(doc: dict) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n"


def write_outputs(outputs: Outputs, sglang_out: str | None = None, eplb_out: str | None = None) -> list[str]:
    """Write the fitted documents; ``.pt`` for EPLB saves int64 torch tensors (torch imported lazily)."""
    written = []
    if sglang_out and outputs.sglang is not None:
        path = Path(sglang_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        state.write_atomic(path, _dump_json(outputs.sglang))
        written.append(str(path))
    if eplb_out and outputs.eplb is not None:
        path = Path(eplb_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".pt":
            _save_pt(outputs.eplb, path)
        else:
            state.write_atomic(path, _dump_json(outputs.eplb))
        written.append(str(path))
    return written


def _save_pt(doc: dict, path: Path) -> None:
    try:
        import torch
    except ImportError:
        raise ServingError("MissingDependency", f"writing {path} needs torch; write .json instead") from None
    tensors = {k: torch.tensor(v, dtype=torch.int64) for k, v in doc.items()}
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(tensors, str(tmp))
    os.replace(tmp, path)


def _behind(stamp: contract.Stamp, data_hash: str, applied: state.Applied | None) -> str:
    """Why the volume is behind what this pod already ran or was rolled out for ("" when it is not)."""
    if applied is not None:
        verdict = state.decide(applied, stamp, data_hash)
        if verdict in (state.Verdict.OLDER, state.Verdict.CONFLICT):
            return (
                f"this pod already applied placement generation {applied.generation} and the volume shows"
                f" generation {stamp.generation}"
                + (" of a deleted incarnation of the MoEDeployment" if stamp.uid in applied.retired else "")
                + " (a re-run init container never goes back)"
            )
    return ""


def run_init(
    mount: str,
    settings: engine_fit.EngineSettings,
    sglang_out: str | None = None,
    eplb_out: str | None = None,
    state_dir: str | None = None,
    expect_generation: int | tuple[int, str | None] | None = None,
    wait_seconds: float = 180.0,
    on_newer: Callable[..., object] | None = None,
    poll: float = 2.0,
    engine_gpus: Callable[[], list[tuple[str, int]]] | None = None,
) -> state.Applied:
    """Read the mounted ConfigMap, check it, write the engine files and record what was applied.

    Args:
        expect_generation: the generation this pod was rolled out for (its template annotation, passed
            through the Downward API: ``N`` or ``(N, uid)``), so every pod of a multi-node group starts
            with the same placement. A volume still behind it is waited for (kubelet syncs volumes with a
            lag); a volume already past it (or of another incarnation of the MoEDeployment) means the pod
            belongs to an outdated rollout: ``on_newer(generation, uid)`` is called (to roll the workload
            forward) and the init container fails.
        state_dir: the state shared with the sidecar; when it already records an applied placement (the
            pod's init container re-runs), a volume older than that is waited for too, never applied.
        wait_seconds: how long to wait for the volume to reach ``expect_generation``.
        engine_gpus: returns ``(node, gpu index)`` per engine rank, to follow GPUs (see ``prepare``).
    """
    expect_uid: str | None = None
    if isinstance(expect_generation, tuple):
        expect_generation, expect_uid = expect_generation
    applied_before = state.load(state_dir) if state_dir else None
    deadline = time.monotonic() + wait_seconds
    while True:
        snap = snapshot.read_snapshot(mount)
        stamp = contract.stamp_from_data(snap.data)
        gen = stamp.generation
        behind = _behind(stamp, contract.content_hash(snap.data), applied_before)
        other_object = bool(expect_uid and stamp.uid and stamp.uid != expect_uid)
        if behind:
            if time.monotonic() > deadline:
                raise ServingError("StaleVolume", f"{behind}; still so after {wait_seconds:.0f}s")
            log.info("%s; waiting for the volume", behind)
            time.sleep(poll)
            continue
        if expect_generation is None or (gen == expect_generation and not other_object):
            break
        if gen is None:
            raise ServingError(
                "PlacementMismatch",
                f"this pod expects placement generation {expect_generation} but the mounted placement"
                " carries none (the operator writes it in placement-meta.json)",
            )
        if gen > expect_generation or other_object:
            if on_newer is not None:
                on_newer(gen, stamp.uid)
            raise ServingError(
                "PlacementMismatch",
                f"this pod was rolled out for placement generation {expect_generation} but the ConfigMap"
                f" already holds {gen}"
                + (" of a re-created MoEDeployment" if other_object else "")
                + "; starting with it could mix placements across ranks, so the"
                " workload is rolled to the newer generation instead",
            )
        if time.monotonic() > deadline:
            raise ServingError(
                "StaleVolume",
                f"the mounted placement is still generation {gen} after {wait_seconds:.0f}s, this pod"
                f" expects {expect_generation} (kubelet has not synced the ConfigMap volume)",
            )
        log.info("volume shows generation %s, waiting for %s", gen, expect_generation)
        time.sleep(poll)
    gpus = engine_gpus() if engine_gpus is not None else None
    outputs = prepare(snap.data, settings, sglang=bool(sglang_out), eplb=bool(eplb_out), engine_gpus=gpus)
    written = write_outputs(outputs, sglang_out, eplb_out)
    applied = state.successor(applied_before, stamp, contract.content_hash(snap.data), snap.version)
    if state_dir:
        state.save(state_dir, applied)
    log.info(
        "placement generation %s (hash %s) written to %s",
        "unknown" if gen is None else gen,
        "verified" if stamp.verified else "not declared",
        ", ".join(written),
    )
    return applied
