"""What the serving side expects of the ``<name>-placement`` ConfigMap: keys, annotations, hash, generation.

The operator writes the ConfigMap whole, in one update (ARCHITECTURE.md, "Invariants"; docs/serving.md).
Serving pods see it two ways:

* through the API (``vibe serving watch --source api``): the object carries the annotations
  ``vibe.dev/content-hash`` and ``vibe.dev/placement-generation``;
* through a volume (``--source file``, and always in the init container): kubelet projects only
  ``data``, never the annotations. So the generation and the hash must also travel *inside* the data.
  The operator adds the small key ``placement-meta.json`` for that::

      {"contentHash": "<content_hash of every other key>", "placementGeneration": 7}

  Without that key, a ``placementGeneration`` field at the top of ``placement.json`` still gives the
  generation (but no hash).

``content_hash`` is the one definition of "sha256 of the data" both sides use: sha256 over the canonical
JSON of the ``data`` map (keys sorted, no spaces), hex. Comparisons accept an optional ``sha256:`` prefix.
This module is pure (no Kubernetes client) so the operator may import it too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

from vibe import api
from vibe.serving.errors import ServingError

#: ConfigMap keys and annotations (their one spelling is in ``vibe.api``), re-exported for the serving side:
#: one key per requested output format, the meta key that carries generation and hash into volumes
#: (annotations are not projected), and the pod-template annotation the rollout-restart policy sets.
KEY_PLACEMENT = api.KEY_PLACEMENT
KEY_SGLANG = api.KEY_SGLANG
KEY_EPLB = api.KEY_EPLB
KEY_META = api.KEY_META
ANNOTATION_HASH = api.ANNOTATION_CONTENT_HASH
ANNOTATION_GENERATION = api.ANNOTATION_PLACEMENT_GENERATION
TEMPLATE_ANNOTATION = api.TEMPLATE_ANNOTATION


def content_hash(data: Mapping[str, str]) -> str:
    """sha256 hex of a ConfigMap ``data`` map: canonical JSON (sorted keys, ``,``/``:`` separators)."""
    canonical = json.dumps(dict(data), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def same_hash(a: str, b: str) -> bool:
    """Compare two hashes, ignoring an optional ``sha256:`` prefix and case."""

    def norm(h: str) -> str:
        h = h.strip().lower()
        return h[len("sha256:") :] if h.startswith("sha256:") else h

    return norm(a) == norm(b)


@dataclass(frozen=True)
class Stamp:
    """Which placement a set of data is, and whether its integrity was checked.

    Attributes:
        generation: the placement generation, or None when nothing in the data or annotations says.
        content_hash: the hash the writer declared (None when it declared none).
        verified: True when a declared hash was recomputed and matched.
    """

    generation: int | None
    content_hash: str | None
    verified: bool


def _parse_generation(value: object, where: str) -> int | None:
    if value is None:
        return None
    try:
        gen = int(str(value).strip())
    except ValueError:
        raise ServingError(
            "UnreadableVolume", f"{where}: placement generation {value!r} is not an integer"
        ) from None
    if gen < 0:
        raise ServingError("UnreadableVolume", f"{where}: placement generation {gen} is negative")
    return gen


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
        gen = _parse_generation(meta.get("placementGeneration"), KEY_META)
        declared = meta.get("contentHash")
        if declared is None:
            return Stamp(gen, None, False)
        rest = {k: v for k, v in data.items() if k != KEY_META}
        actual = content_hash(rest)
        if not same_hash(str(declared), actual):
            raise ServingError(
                "HashMismatch",
                f"{KEY_META} declares content hash {declared} but the other keys hash to {actual}"
                f" (generation {gen}); refusing a half-written or mixed placement",
            )
        return Stamp(gen, str(declared), True)
    gen = None
    if KEY_PLACEMENT in data:
        try:
            doc = json.loads(data[KEY_PLACEMENT])
        except json.JSONDecodeError as e:
            raise ServingError("UnreadableVolume", f"{KEY_PLACEMENT} is not JSON: {e}") from None
        if isinstance(doc, dict):
            gen = _parse_generation(doc.get("placementGeneration"), KEY_PLACEMENT)
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
    gen = _parse_generation(annotations.get(ANNOTATION_GENERATION), f"annotation {ANNOTATION_GENERATION}")
    if gen is None:
        gen = inner.generation
    elif inner.generation is not None and inner.generation != gen:
        raise ServingError(
            "HashMismatch",
            f"annotation says generation {gen} but the data says {inner.generation};"
            " refusing a mixed placement",
        )
    declared = annotations.get(ANNOTATION_HASH)
    if declared is None:
        return Stamp(gen, inner.content_hash, inner.verified)
    # The operator hashes the data it wrote; accept the hash with or without the meta key in it, so the
    # annotation may be computed before or after the meta key is added.
    candidates = {content_hash(data), content_hash({k: v for k, v in data.items() if k != KEY_META})}
    if not any(same_hash(declared, c) for c in candidates):
        raise ServingError(
            "HashMismatch",
            f"annotation {ANNOTATION_HASH}={declared} does not match the data (generation {gen})",
        )
    return Stamp(gen, declared, True)
