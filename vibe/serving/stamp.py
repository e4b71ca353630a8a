"""Which placement a ConfigMap's data is: its generation, and whether its declared hash was checked.

The serving side's reading of the ``<name>-placement`` contract (``vibe.contract``: meta key, hash,
generation, annotations). Serving pods see the ConfigMap two ways:

* through the API (``vibe serving watch --source api``): the object carries the annotations
  ``vibe.dev/content-hash`` and ``vibe.dev/placement-generation``;
* through a volume (``--source file``, and always in the init container): kubelet projects only
  ``data``, never the annotations, so generation, hash and the MoEDeployment's uid come from the key
  ``placement-meta.json``. Without that key, a ``placementGeneration`` field at the top of
  ``placement.json`` still gives the generation (but no hash).

A generation or uid that is not what ``vibe.contract`` allows (``"7"``, ``1e23``, 2^63) is refused as
``UnreadableVolume``.

A declared hash that does not match the data is refused (``HashMismatch``): a half-written or mixed
placement never gets through. Pure (no Kubernetes client).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from vibe import contract
from vibe.contract import (
    ANNOTATION_CONTENT_HASH,
    ANNOTATION_PLACEMENT_GENERATION,
    KEY_META,
    content_hash,
    core_data,
    same_hash,
)
from vibe.engines import canonical
from vibe.serving.errors import ServingError


@dataclass(frozen=True)
class Stamp:
    """Which placement a set of data is, and whether its integrity was checked.

    Attributes:
        generation: the placement generation, or None when nothing in the data or annotations says.
        content_hash: the hash the writer declared (None when it declared none).
        verified: True when a declared hash was recomputed and matched.
        uid: the UID of the MoEDeployment the generation counts in (None from an operator that wrote none).
    """

    generation: int | None
    content_hash: str | None
    verified: bool
    uid: str | None = None


def parse_generation(value: object, where: str, *, text: bool = False) -> int | None:
    """``vibe.contract.parse_generation``, refusing as ``ServingError(UnreadableVolume)``."""
    try:
        return contract.parse_generation(value, where, text=text)
    except ValueError as e:
        raise ServingError("UnreadableVolume", str(e)) from None


def parse_uid(value: object, where: str) -> str | None:
    """``vibe.contract.parse_uid``, refusing as ``ServingError(UnreadableVolume)``."""
    try:
        return contract.parse_uid(value, where)
    except ValueError as e:
        raise ServingError("UnreadableVolume", str(e)) from None


def stamp_from_data(data: Mapping[str, str]) -> Stamp:
    """Generation and hash from the data alone (what a volume shows), verifying the hash if declared.

    Raises:
        ServingError(HashMismatch): ``placement-meta.json`` declares a hash the other keys do not have.
    """
    if KEY_META in data:
        try:
            meta = json.loads(data[KEY_META])
        except json.JSONDecodeError as e:
            raise ServingError("UnreadableVolume", f"{KEY_META} is not JSON: {e}") from None
        if not isinstance(meta, dict):
            raise ServingError("UnreadableVolume", f"{KEY_META} must be a JSON object")
        gen = parse_generation(meta.get("placementGeneration"), KEY_META)
        uid = parse_uid(meta.get("uid"), KEY_META)
        declared = meta.get("contentHash")
        if declared is None:
            return Stamp(gen, None, False, uid)
        actual = content_hash(core_data(data))
        if not same_hash(str(declared), actual):
            raise ServingError(
                "HashMismatch",
                f"{KEY_META} declares content hash {declared} but the other keys hash to {actual}"
                f" (generation {gen}); refusing a half-written or mixed placement",
            )
        return Stamp(gen, str(declared), True, uid)
    gen = None
    if canonical.KEY in data:
        try:
            doc = json.loads(data[canonical.KEY])
        except json.JSONDecodeError as e:
            raise ServingError("UnreadableVolume", f"{canonical.KEY} is not JSON: {e}") from None
        if isinstance(doc, dict):
            gen = parse_generation(doc.get("placementGeneration"), canonical.KEY)
    return Stamp(gen, None, False)


def stamp_from_object(data: Mapping[str, str], annotations: Mapping[str, str] | None) -> Stamp:
    """Generation and hash of a ConfigMap read through the API, verifying the annotation's hash.

    The annotations win over what the data says; the in-data stamp is still checked (a meta key that
    disagrees with its own data is refused either way).

    Raises:
        ServingError(HashMismatch): the ``vibe.dev/content-hash`` annotation does not match the data.
    """
    inner = stamp_from_data(data)
    annotations = annotations or {}
    gen = parse_generation(
        annotations.get(ANNOTATION_PLACEMENT_GENERATION),
        f"annotation {ANNOTATION_PLACEMENT_GENERATION}",
        text=True,
    )
    if gen is None:
        gen = inner.generation
    elif inner.generation is not None and inner.generation != gen:
        raise ServingError(
            "HashMismatch",
            f"annotation says generation {gen} but the data says {inner.generation};"
            " refusing a mixed placement",
        )
    declared = annotations.get(ANNOTATION_CONTENT_HASH)
    if declared is None:
        return Stamp(gen, inner.content_hash, inner.verified, inner.uid)
    # The operator hashes the data it wrote; accept the hash with or without the meta key in it, so the
    # annotation may be computed before or after the meta key is added.
    candidates = {content_hash(data), content_hash(core_data(data))}
    if not any(same_hash(declared, c) for c in candidates):
        raise ServingError(
            "HashMismatch",
            f"annotation {ANNOTATION_CONTENT_HASH}={declared} does not match the data (generation {gen})",
        )
    return Stamp(gen, declared, True, inner.uid)
