"""The init container's job: mounted ``<name>-placement`` ConfigMap in, the engine's own files out.

Runs before the engine starts (``vibe serving init``), so the engine reads a placement that was checked
against its own launch settings, from a path it can be pointed at with a flag:

1. read every key from one kubelet snapshot (``snapshot.read_snapshot``);
2. check the declared content hash, if the operator declared one (``stamp.stamp_from_data``);
3. fit each requested format to the engine as launched (its record's ``fit`` in ``vibe.engines``): any
   mismatch stops here, with the init container's exit code and one log line, instead of inside the
   engine's model loader;
4. write the record's files atomically and record the applied generation for the sidecar (``state``).

``prepare`` is pure (data in, documents out) so the sidecar runs the very same checks before it asks
anyone to restart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from vibe import contract
from vibe.engines import ENGINES, EngineError, EngineSettings, canonical, get
from vibe.engines._common import check_gpu_count
from vibe.serving import rankmap, snapshot, stamp, state
from vibe.serving.errors import ServingError, engine_errors, from_engine
from vibe.serving.stamp import Stamp

log = logging.getLogger(__name__)


def _load_key(data: Mapping[str, str], name: str) -> Any:
    engine = get(name)
    if engine.key not in data:
        raise ServingError(
            "MissingPlacement",
            f"the placement ConfigMap has no {engine.key} (keys: {', '.join(sorted(data)) or 'none'});"
            f" add '{engine.name}' to the MoEDeployment's spec.output.formats",
        )
    try:
        return engine.parse(data[engine.key])
    except ValueError as e:
        raise ServingError("UnreadableVolume", f"{engine.key} is not readable: {e}") from None


def engines_with_files() -> list[str]:
    """The formats ``vibe serving init`` can write a file for (those an engine reads)."""
    return [e.name for e in ENGINES.values() if e.fit is not None and e.files is not None]


def prepare(
    data: Mapping[str, str],
    settings: EngineSettings,
    formats: Iterable[str],
    engine_gpus: list[tuple[str, int]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Fit the requested formats' documents from ConfigMap ``data``; raise on any mismatch.

    Args:
        formats: format names (``vibe.engines.ENGINES``; deprecated aliases accepted).
        engine_gpus: ``(node, gpu index)`` per engine rank (``rankmap.engine_gpus``); when given, each
            GPU's slots move to the engine rank that has that GPU (``rankmap``), instead of trusting
            that the engine numbers its ranks the way the placement does.

    Returns:
        format name -> the document fitted to the engine.
    """
    names = []
    for name in formats:
        try:
            engine = get(name)
        except EngineError as e:
            raise from_engine(e) from None
        if engine.fit is None:
            raise ServingError("InvalidArgument", f"no engine reads format {engine.name!r}: nothing to write")
        names.append(engine.name)
    if not names:
        raise ServingError(
            "InvalidArgument",
            "ask for at least one engine file (--sglang-out, --trtllm-out, ..., or --engine-file NAME=PATH,"
            f" NAME one of {', '.join(engines_with_files())})",
        )
    placed = None
    if canonical.KEY in data:
        with engine_errors():
            check_gpu_count(_load_key(data, canonical.NAME), settings)
    if engine_gpus is not None:
        placed = rankmap.placement_gpus(_load_key(data, canonical.NAME))
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        engine = ENGINES[name]
        assert engine.fit is not None
        with engine_errors():
            doc = engine.fit(_load_key(data, name), settings)
        if placed is not None and engine_gpus is not None:
            assert engine.width is not None and engine.permute is not None
            slots = engine.width(doc) // settings.ep_size
            doc = engine.permute(doc, rankmap.slot_permutation(placed, engine_gpus, slots))
        out[name] = doc
    return out


def write_outputs(
    documents: Mapping[str, dict[str, Any]], paths: Mapping[str, str | Path], settings: EngineSettings
) -> list[str]:
    """Write each fitted document's files (its record's ``files``) atomically; return the paths written."""
    written = []
    for name, target in paths.items():
        engine = get(name)
        if engine.name not in documents:
            continue
        assert engine.files is not None
        with engine_errors():
            blobs = engine.files(documents[engine.name], Path(target), settings)
        for path, blob in blobs.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            state.write_atomic(path, blob)
            written.append(str(path))
    return written


def _behind(found: Stamp, data_hash: str, applied: state.Applied | None) -> str:
    """Why the volume is behind what this pod already ran or was rolled out for ("" when it is not)."""
    if applied is not None:
        verdict = state.decide(applied, found, data_hash)
        if verdict in (state.Verdict.OLDER, state.Verdict.CONFLICT):
            return (
                f"this pod already applied placement generation {applied.generation} and the volume shows"
                f" generation {found.generation}"
                + (" of a deleted incarnation of the MoEDeployment" if found.uid in applied.retired else "")
                + " (a re-run init container never goes back)"
            )
    return ""


def run_init(
    mount: str,
    settings: EngineSettings,
    outputs: Mapping[str, str | Path],
    state_dir: str | None = None,
    expect_generation: int | tuple[int, str | None] | None = None,
    wait_seconds: float = 180.0,
    on_newer: Callable[..., object] | None = None,
    poll: float = 2.0,
    engine_gpus: Callable[[], list[tuple[str, int]]] | None = None,
) -> state.Applied:
    """Read the mounted ConfigMap, check it, write the engine files and record what was applied.

    Args:
        outputs: format name -> the path of the engine's file (``--engine-file NAME=PATH``).
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
    snap, found = _wait_for_volume(
        mount, expect_generation, expect_uid, applied_before, wait_seconds, on_newer, poll
    )
    gen = found.generation
    gpus = engine_gpus() if engine_gpus is not None else None
    documents = prepare(snap.data, settings, outputs, engine_gpus=gpus)
    written = write_outputs(documents, outputs, settings)
    applied = state.successor(applied_before, found, contract.content_hash(snap.data), snap.version)
    if state_dir:
        state.save(state_dir, applied)
    log.info(
        "placement generation %s (hash %s) written to %s",
        "unknown" if gen is None else gen,
        "verified" if found.verified else "not declared",
        ", ".join(written),
    )
    return applied


def read_volume(
    mount: str, expect_generation: int | None = None, wait_seconds: float = 0.0, poll: float = 2.0
) -> tuple[snapshot.Snapshot, stamp.Stamp]:
    """The mounted placement as ``run_init`` checks it (one snapshot, its declared hash, the generation
    expected), for a reader that runs the placement itself instead of writing an engine file."""
    return _wait_for_volume(mount, expect_generation, None, None, wait_seconds, None, poll)


def _wait_for_volume(
    mount: str,
    expect_generation: int | None,
    expect_uid: str | None,
    applied_before: state.Applied | None,
    wait_seconds: float,
    on_newer: Callable[..., object] | None,
    poll: float,
) -> tuple[snapshot.Snapshot, stamp.Stamp]:
    """The mounted placement once it is the one this pod may start with (see ``run_init``): waits while
    the volume is behind what was applied or expected, refuses one that is ahead (``on_newer`` first) or
    carries no generation when one is expected."""
    deadline = time.monotonic() + wait_seconds
    while True:
        snap = snapshot.read_snapshot(mount)
        found = stamp.stamp_from_data(snap.data)
        gen = found.generation
        behind = _behind(found, contract.content_hash(snap.data), applied_before)
        other_object = bool(expect_uid and found.uid and found.uid != expect_uid)
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
                on_newer(gen, found.uid)
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
    return snap, found
