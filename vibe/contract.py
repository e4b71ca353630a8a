"""The ``<name>-placement`` ConfigMap contract: its name, meta key, hash, generation and annotations.

Role: the one home of what the operator (the writer, ``vibe.operator.output``) and the serving pods (the
readers, ``vibe.serving.stamp``) must agree on about the placement ConfigMap, apart from the per-format
data keys, which each engine's record in ``vibe.engines`` owns. Pure (json, hashlib): every layer may
import it, and neither side imports the other's module for it.

* ``content_hash`` is "sha256 of the data": hex sha256 over the canonical JSON of the ``data`` map (keys
  sorted, no spaces, UTF-8). The operator hashes the data *without* the meta key (``core_data``).
* kubelet projects only ``data`` into a volume, never annotations, so generation and hash also travel
  inside the data, in the small key ``placement-meta.json`` (``meta_text``)::

      {"contentHash": "<content_hash of every other key>", "placementGeneration": 7,
       "uid": "<the MoEDeployment's metadata.uid>"}

* a generation counts within one MoEDeployment *object*: deleting and re-creating it starts again at 1,
  so the meta key also names the object's ``uid`` and serving pods order placements by (uid,
  generation). A generation is a JSON integer (never a string, a float or a bool) from 0 to
  ``MAX_GENERATION`` (``parse_generation``), so ``generation + 1`` always fits an int64 status field;

* the same two values are copied to the annotations ``vibe.dev/content-hash`` and
  ``vibe.dev/placement-generation`` for people and tools; the ``restart`` update policy writes the
  generation annotation onto the serving workload's pod template too, as ``N/<uid>``
  (``template_value``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping

from vibe.api import MAX_PLACEMENT_GENERATION, PREFIX

#: The data key that carries generation and hash into volumes.
KEY_META = "placement-meta.json"
#: Annotations of the placement ConfigMap (copies of the meta key's values), and of a serving workload's
#: pod template (the generation it was rolled out for).
ANNOTATION_CONTENT_HASH = PREFIX + "content-hash"
ANNOTATION_PLACEMENT_GENERATION = PREFIX + "placement-generation"
#: The largest generation either side writes or trusts (2^53 - 1, exact in every JSON reader).
MAX_GENERATION = MAX_PLACEMENT_GENERATION
_UID = re.compile(r"^[0-9A-Za-z-]{1,64}$")
_DIGITS = re.compile(r"^[0-9]{1,16}$")


def config_map_name(deployment: str) -> str:
    """The name of the ConfigMap the operator writes a MoEDeployment's placement into."""
    return f"{deployment}-placement"


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


def core_data(data: Mapping[str, str]) -> dict[str, str]:
    """The data without the meta key (what the content hash and the generation are about)."""
    return {k: v for k, v in data.items() if k != KEY_META}


def meta_text(digest: str, generation: int, uid: str | None = None) -> str:
    """The meta key's value the operator writes (the bytes are part of the contract: keep them stable)."""
    meta: dict[str, object] = {"contentHash": digest, "placementGeneration": generation}
    if uid:
        meta["uid"] = uid
    return json.dumps(meta, sort_keys=True)


def parse_generation(value: object, where: str, *, text: bool = False) -> int | None:
    """A placement generation: a JSON integer (or, with ``text``, a string of digits: an annotation) from
    0 to ``MAX_GENERATION``; None for None.

    Raises:
        ValueError: a string in JSON, a float, a bool, a negative number, or more than the bound.
    """
    if value is None:
        return None
    if text and isinstance(value, str) and _DIGITS.match(value):
        gen = int(value)
    elif not text and isinstance(value, int) and not isinstance(value, bool):
        gen = value
    else:
        raise ValueError(
            f"{where}: placement generation {str(value)[:40]!r} is not an integer from 0 to {MAX_GENERATION}"
        )
    if not 0 <= gen <= MAX_GENERATION:
        raise ValueError(f"{where}: placement generation {str(gen)[:40]} is outside 0..{MAX_GENERATION}")
    return gen


def parse_uid(value: object, where: str) -> str | None:
    """The MoEDeployment UID a generation counts in (None when the writer gave none).

    Raises:
        ValueError: not a UID-shaped string.
    """
    if value is None:
        return None
    if not isinstance(value, str) or not _UID.match(value):
        raise ValueError(f"{where}: uid {str(value)[:80]!r} is not a UID")
    return value


def template_value(generation: int, uid: str | None) -> str:
    """The pod-template annotation a rollout for ``generation`` (of the object ``uid``) carries:
    ``"7"``, or ``"7/<uid>"`` when the operator wrote the UID."""
    return f"{generation}/{uid}" if uid else str(generation)


def parse_template_value(value: str | None, where: str) -> tuple[int, str | None] | None:
    """``(generation, uid)`` from a pod-template annotation (``template_value``); None when empty.

    Raises:
        ValueError: not ``N`` or ``N/UID`` with N within the generation bound.
    """
    if value is None or not value.strip():
        return None
    gen_text, _, uid = value.strip().partition("/")
    gen = parse_generation(gen_text, where, text=True)
    assert gen is not None
    return gen, parse_uid(uid, where) if uid else None
