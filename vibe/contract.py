"""The ``<name>-placement`` ConfigMap contract: its name, meta key, hash, generation and annotations.

Role: the one home of what the operator (the writer, ``vibe.operator.output``) and the serving pods (the
readers, ``vibe.serving.stamp``) must agree on about the placement ConfigMap, apart from the per-format
data keys, which each engine's record in ``vibe.engines`` owns. Pure (json, hashlib): every layer may
import it, and neither side imports the other's module for it.

* ``content_hash`` is "sha256 of the data": hex sha256 over the canonical JSON of the ``data`` map (keys
  sorted, no spaces, UTF-8). The operator hashes the data *without* the meta key (``core_data``).
* kubelet projects only ``data`` into a volume, never annotations, so generation and hash also travel
  inside the data, in the small key ``placement-meta.json`` (``meta_text``)::

      {"contentHash": "<content_hash of every other key>", "placementGeneration": 7}

* the same two values are copied to the annotations ``vibe.dev/content-hash`` and
  ``vibe.dev/placement-generation`` for people and tools; the ``restart`` update policy writes the
  generation annotation onto the serving workload's pod template too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

from vibe.api import PREFIX

#: The data key that carries generation and hash into volumes.
KEY_META = "placement-meta.json"
#: Annotations of the placement ConfigMap (copies of the meta key's values), and of a serving workload's
#: pod template (the generation it was rolled out for).
ANNOTATION_CONTENT_HASH = PREFIX + "content-hash"
ANNOTATION_PLACEMENT_GENERATION = PREFIX + "placement-generation"


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


def meta_text(digest: str, generation: int) -> str:
    """The meta key's value the operator writes (the bytes are part of the contract: keep them stable)."""
    return json.dumps({"contentHash": digest, "placementGeneration": generation}, sort_keys=True)
