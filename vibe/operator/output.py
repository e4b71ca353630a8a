"""The placement ConfigMap ``<name>-placement``: rendered from a result, read back as the one in service.

Role: the operator's only product. Rendering is deterministic (the engine's serialisers sort keys and
carry no timestamps), so the same inputs give the same bytes; one key per requested format, each
written by its record in ``vibe.engines``. ``vibe.dev/content-hash`` is the hash of those bytes as
``vibe.contract`` defines it (the contract the serving pods read by), and ``placement-meta.json``
carries the hash and generation into volumes (kubelet projects data, not annotations).

Everything the operator must remember between reconciles lives here, written in the same update as the
data, so a restart (or another replica) resumes from the cluster, never from memory:

* ``placement-meta.json`` (a data key): the content hash and the placement generation, which increments
  only when the data (without the meta key) changes. The generation is read from here, and only when
  the hash it declares is the data's: the ``vibe.dev/placement-generation`` and ``-content-hash``
  annotations are copies for people and tools, and a hand edit of them is repaired, never trusted;
* ``vibe.dev/placement-key``, ``-gpus``, ``-curves``, ``-loads``: fingerprints of the spec fields and
  inputs the placement was computed from (a mismatch is what "drift" means);
* ``vibe.dev/placed-at``: when the data last changed (the drift cooldown counts from it);
* ``vibe.dev/summary``: the predicted figures status shows (JSON).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vibe import api
from vibe.contract import (
    ANNOTATION_CONTENT_HASH,
    ANNOTATION_PLACEMENT_GENERATION,
    KEY_META,
    content_hash,
    core_data,
    meta_text,
    parse_generation,
    parse_uid,
)
from vibe.engines import ENGINES
from vibe.operator.clock import parse_time
from vibe.operator.spec import fingerprint
from vibe.placement.cost import Placement
from vibe.placement.errors import PlacementError

#: The labels the operator puts on every placement ConfigMap it writes (besides the MoEDeployment's).
MANAGED_BY = {api.LABEL_MANAGED_BY: api.MANAGED_BY_OPERATOR}

#: A ConfigMap holds at most 1 MiB; leave room for metadata.
MAX_DATA_BYTES = 1_000_000


@dataclass(frozen=True)
class InputKeys:
    """Fingerprints of what a placement was computed from."""

    placement: str
    gpus: str
    curves: str
    loads: str

    @property
    def all(self) -> str:
        return fingerprint([self.placement, self.gpus, self.curves, self.loads])


@dataclass
class InService:
    """The placement ConfigMap as found in the cluster."""

    name: str
    resource_version: str | None
    data: dict[str, str]
    annotations: dict[str, str]
    owner_uids: tuple[str, ...]
    generation: int
    content_hash: str
    keys: InputKeys
    placed_at: dt.datetime | None
    summary: dict[str, Any] = field(default_factory=dict)
    uid: str | None = None  # the MoEDeployment UID its meta key names (None: written before UIDs were)
    placement: Placement | None = None  # None: unreadable, or written for another slot count or model
    unreadable: str = ""  # why the placement could not be read back, if it could not
    intact: bool = False  # its data matches its content hash: a placement this operator wrote, unedited

    def owned_by(self, uid: str) -> bool:
        return uid in self.owner_uids

    @property
    def annotations_edited(self) -> bool:
        """Intact data whose generation or hash annotation says something else (edited by hand)."""
        return self.intact and (
            self.annotations.get(ANNOTATION_PLACEMENT_GENERATION) != str(self.generation)
            or self.annotations.get(ANNOTATION_CONTENT_HASH) != self.content_hash
        )


def render(result: Any, fleet: Any, formats: tuple[str, ...], *, baseline: Any = None) -> dict[str, str]:
    """The ConfigMap data for a placement result, one key per requested format (no meta key yet)."""
    data = {ENGINES[fmt].key: _text(ENGINES[fmt].write(result, fleet, baseline)) for fmt in formats}
    return dict(sorted(data.items()))


def finish(
    core: Mapping[str, str],
    *,
    generation: int,
    keys: InputKeys,
    placed_at: str,
    summary: Mapping[str, Any],
    uid: str | None = None,
) -> tuple[dict[str, str], dict[str, str]]:
    """(data with the meta key, annotations) for a ConfigMap about to be written; ``uid`` is the
    MoEDeployment's, the identity its generations count in (serving pods order by uid, then generation)."""
    digest = content_hash(core)
    data = dict(sorted({**core, KEY_META: meta_text(digest, generation, uid)}.items()))
    annotations = {
        ANNOTATION_PLACEMENT_GENERATION: str(generation),
        ANNOTATION_CONTENT_HASH: digest,
        api.ANNOTATION_PLACEMENT_KEY: keys.placement,
        api.ANNOTATION_INPUTS_GPUS: keys.gpus,
        api.ANNOTATION_INPUTS_CURVES: keys.curves,
        api.ANNOTATION_INPUTS_LOADS: keys.loads,
        api.ANNOTATION_PLACED_AT: placed_at,
        api.ANNOTATION_SUMMARY: json.dumps(summary, sort_keys=True, separators=(",", ":")),
    }
    return data, annotations


def data_size(data: Mapping[str, str]) -> int:
    return sum(len(k) + len(v.encode()) for k, v in data.items())


def read_back(
    obj: Mapping[str, Any] | None, *, layers: int, experts: int, slots_per_gpu: int
) -> InService | None:
    """The ConfigMap object (a plain dict as the API returns it) as the placement in service."""
    if obj is None:
        return None
    meta = obj.get("metadata") or {}
    ann = dict(meta.get("annotations") or {})
    data = dict(obj.get("data") or {})
    generation, declared, uid = _meta_of(data)
    try:
        summary = json.loads(ann.get(api.ANNOTATION_SUMMARY) or "{}")
    except (ValueError, RecursionError):  # not JSON, a 5000-digit number, nested too deep: hand-edited
        summary = {}
    found = InService(
        name=str(meta.get("name") or ""),
        resource_version=meta.get("resourceVersion"),
        data=data,
        annotations=ann,
        owner_uids=tuple(str(o.get("uid")) for o in meta.get("ownerReferences") or () if o.get("uid")),
        generation=generation,
        content_hash=declared,
        keys=InputKeys(
            ann.get(api.ANNOTATION_PLACEMENT_KEY, ""),
            ann.get(api.ANNOTATION_INPUTS_GPUS, ""),
            ann.get(api.ANNOTATION_INPUTS_CURVES, ""),
            ann.get(api.ANNOTATION_INPUTS_LOADS, ""),
        ),
        placed_at=parse_time(ann.get(api.ANNOTATION_PLACED_AT)),
        summary=summary if isinstance(summary, dict) else {},
        uid=uid,
    )
    if not declared or content_hash(core_data(data)) != declared:
        found.unreadable = f"its data does not match the content hash in {KEY_META} (edited by hand?)"
        return found
    found.intact = True
    try:
        found.placement = placement_of(data, experts=experts, slots_per_gpu=slots_per_gpu)
    except (PlacementError, ValueError, KeyError, TypeError, RecursionError) as e:
        found.unreadable = (
            f"cannot read the placement back: {'nested too deep' if isinstance(e, RecursionError) else e}"
        )
        return found
    if found.placement is not None and found.placement.num_layers != layers:
        found.placement = None
        found.unreadable = "its placement has another number of layers"
    return found


def as_written(obj: Mapping[str, Any]) -> bool:
    """Whether a placement ConfigMap is as this operator writes them: its data hashes to what its meta
    key declares, and the generation and hash annotations agree with it. Cheap (one hash, no parse):
    the watch on placement ConfigMaps uses it to tell a hand edit from the operator's own writes."""
    data = dict(obj.get("data") or {})
    generation, declared, _ = _meta_of(data)
    ann = (obj.get("metadata") or {}).get("annotations") or {}
    return (
        bool(declared)
        and content_hash(core_data(data)) == declared
        and ann.get(ANNOTATION_CONTENT_HASH) == declared
        and ann.get(ANNOTATION_PLACEMENT_GENERATION) == str(generation)
    )


def _meta_of(data: Mapping[str, str]) -> tuple[int, str, str | None]:
    """(placement generation, content hash, uid) declared by the data's meta key; (0, "", None) if it is
    unreadable, or its generation is not an integer within ``MAX_PLACEMENT_GENERATION`` (a generation
    edited past the bound is never trusted: the next one would not fit status's int64)."""
    try:
        meta = json.loads(data.get(KEY_META) or "{}")
        generation = parse_generation(meta.get("placementGeneration", 0), KEY_META) or 0
        uid = parse_uid(meta.get("uid"), KEY_META)
        declared = str(meta.get("contentHash") or "")
    except (TypeError, ValueError, RecursionError, AttributeError):
        return 0, "", None
    return generation, declared, uid


def placement_of(data: Mapping[str, str], *, experts: int, slots_per_gpu: int) -> Placement | None:
    """The placement from the first format the data holds, in ``vibe.engines.ENGINES`` order."""
    for engine in ENGINES.values():
        if engine.key in data:
            return engine.read(
                engine.parse(data[engine.key]), slots_per_gpu=slots_per_gpu, num_experts=experts
            )
    return None


def _text(blob: bytes | str) -> str:
    return blob.decode() if isinstance(blob, bytes) else blob
