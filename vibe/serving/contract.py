"""What the serving side expects of the ``<name>-placement`` ConfigMap: keys, annotations, hash, generation.

The operator writes the ConfigMap whole, in one update (ARCHITECTURE.md, "Invariants"; docs/serving.md).
Serving pods see it two ways:

* through the API (``vibe serving watch --source api``): the object carries the annotations
  ``vibe.dev/content-hash`` and ``vibe.dev/placement-generation``;
* through a volume (``--source file``, and always in the init container): kubelet projects only
  ``data``, never the annotations. So the generation and the hash must also travel *inside* the data.
  The operator adds the small key ``placement-meta.json`` for that::

      {"contentHash": "<content_hash of every other key>", "placementGeneration": 7,
       "uid": "<the MoEDeployment's metadata.uid>"}

  Without that key, a ``placementGeneration`` field at the top of ``placement.json`` still gives the
  generation (but no hash).

A generation counts within one MoEDeployment *object*: deleting and re-creating it starts again at 1. So
the operator also writes the object's ``uid``, and the serving side orders placements by (uid,
generation): a placement of a new uid supersedes whatever generation the old object had reached
(``state.decide``). A generation is a JSON integer (never a string, a float or a bool) from 0 to
``vibe.api.MAX_PLACEMENT_GENERATION``; anything else is refused as unreadable.

``content_hash`` is the one definition of "sha256 of the data" both sides use: sha256 over the canonical
JSON of the ``data`` map (keys sorted, no spaces), hex. Comparisons accept an optional ``sha256:`` prefix.
This module is pure (no Kubernetes client) so the operator may import it too.
"""

from __future__ import annotations

import hashlib
import json
import re
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
MAX_GENERATION = api.MAX_PLACEMENT_GENERATION
#: A MoEDeployment's metadata.uid as the operator writes it into the meta key (an RFC 4122 UUID in practice).
_UID = re.compile(r"^[0-9A-Za-z-]{1,64}$")
_DIGITS = re.compile(r"^[0-9]{1,16}$")


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
        uid: the UID of the MoEDeployment the generation counts in (None from an operator that wrote none).
    """

    generation: int | None
    content_hash: str | None
    verified: bool
    uid: str | None = None


def parse_generation(value: object, where: str) -> int | None:
    """A placement generation from JSON (an int) or an annotation (a string of digits), bounded.

    Raises:
        ServingError(UnreadableVolume): a string in JSON, a float, a bool, a negative number, or more
        than ``MAX_GENERATION`` (what an int64 status field and every JSON reader hold exactly).
    """
    if value is None:
        return None
    if isinstance(value, str) and _DIGITS.match(value) and where.startswith("annotation"):
        gen = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        gen = value
    else:
        raise ServingError(
            "UnreadableVolume",
            f"{where}: placement generation {str(value)[:40]!r} is not an integer from 0 to {MAX_GENERATION}",
        )
    if not 0 <= gen <= MAX_GENERATION:
        raise ServingError(
            "UnreadableVolume",
            f"{where}: placement generation {str(gen)[:40]} is outside 0..{MAX_GENERATION}",
        )
    return gen


def parse_uid(value: object, where: str) -> str | None:
    """The MoEDeployment UID a generation counts in (None when the writer gave none)."""
    if value is None:
        return None
    if not isinstance(value, str) or not _UID.match(value):
        raise ServingError("UnreadableVolume", f"{where}: uid {str(value)[:80]!r} is not a UID")
    return value


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
        rest = {k: v for k, v in data.items() if k != KEY_META}
        actual = content_hash(rest)
        if not same_hash(str(declared), actual):
            raise ServingError(
                "HashMismatch",
                f"{KEY_META} declares content hash {declared} but the other keys hash to {actual}"
                f" (generation {gen}); refusing a half-written or mixed placement",
            )
        return Stamp(gen, str(declared), True, uid)
    gen = None
    if KEY_PLACEMENT in data:
        try:
            doc = json.loads(data[KEY_PLACEMENT])
        except json.JSONDecodeError as e:
            raise ServingError("UnreadableVolume", f"{KEY_PLACEMENT} is not JSON: {e}") from None
        if isinstance(doc, dict):
            gen = parse_generation(doc.get("placementGeneration"), KEY_PLACEMENT)
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
    gen = parse_generation(annotations.get(ANNOTATION_GENERATION), f"annotation {ANNOTATION_GENERATION}")
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
        return Stamp(gen, inner.content_hash, inner.verified, inner.uid)
    # The operator hashes the data it wrote; accept the hash with or without the meta key in it, so the
    # annotation may be computed before or after the meta key is added.
    candidates = {content_hash(data), content_hash({k: v for k, v in data.items() if k != KEY_META})}
    if not any(same_hash(declared, c) for c in candidates):
        raise ServingError(
            "HashMismatch",
            f"annotation {ANNOTATION_HASH}={declared} does not match the data (generation {gen})",
        )
    return Stamp(gen, declared, True, inner.uid)


def template_value(generation: int, uid: str | None) -> str:
    """The pod-template annotation a rollout for ``generation`` (of the object ``uid``) carries:
    ``"7"``, or ``"7/<uid>"`` when the operator wrote the UID."""
    return f"{generation}/{uid}" if uid else str(generation)


def parse_template_value(value: str | None, where: str) -> tuple[int, str | None] | None:
    """``(generation, uid)`` from a pod-template annotation (``template_value``), or None when empty.

    Raises:
        ServingError(UnreadableVolume): not ``N`` or ``N/UID`` with N within the generation bound.
    """
    if value is None or not value.strip():
        return None
    gen_text, _, uid = value.strip().partition("/")
    gen = parse_generation(gen_text, f"annotation {where}")
    assert gen is not None
    return gen, parse_uid(uid, where) if uid else None
