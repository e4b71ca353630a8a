"""What this pod has applied, kept in a file, and the never-older rule that guards every update.

The init container writes the state after it wrote the engine's file; the sidecar reads it at start and
rewrites it after each successful apply. The file lives in an ``emptyDir`` shared by both containers, so
it survives container restarts but not the pod: a recreated pod starts again from its init container,
which is exactly when the engine reads its placement anew.

``decide`` is the whole policy for "should this snapshot be applied?":

* a higher generation than the applied one: apply;
* the same generation with the same bytes: nothing to do;
* the same generation with *different* bytes, or a lower generation: never apply (a stale cache, a
  rollback by hand, or two writers); report it;
* no generation anywhere (the operator wrote neither ``placement-meta.json`` nor the annotations): the
  order cannot be known, so never apply automatically; report it.

Generations count within one MoEDeployment object (its UID, in ``placement-meta.json``): a placement of a
UID this pod has not applied before is a re-created object and supersedes any generation of the old one;
the UIDs this pod moved away from are remembered (``retired``), so a lagging volume that still shows the
old object's placement is older, not new. The init container and the sidecar both decide with ``decide``
against this file, so a re-run init container never goes back to a placement the sidecar moved past.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path

from vibe.serving.errors import ServingError
from vibe.serving.stamp import Stamp, parse_generation, parse_uid

STATE_FILE = "applied.json"
#: How many UIDs a pod remembers having moved away from (re-creations of its MoEDeployment).
RETIRED_KEPT = 8
#: The state file is a few hundred bytes; anything much larger is not one this code wrote.
MAX_STATE_BYTES = 64 * 1024


@dataclass(frozen=True)
class Applied:
    """The placement this pod's engine runs with.

    Attributes:
        generation: its placement generation (None if it had none).
        data_hash: ``content_hash`` of the whole snapshot it came from (always known).
        version: the kubelet version directory or API resourceVersion it was read from (for logs).
        uid: the MoEDeployment UID its generation counts in (None: the operator wrote none).
        retired: UIDs of earlier incarnations of the MoEDeployment this pod moved away from.
    """

    generation: int | None
    data_hash: str
    version: str = ""
    uid: str | None = None
    retired: tuple[str, ...] = ()


class Verdict(str, Enum):
    APPLY = "apply"
    SAME = "same"
    OLDER = "older"
    CONFLICT = "conflict"  # same generation, different bytes
    UNORDERED = "unordered"  # no generation to order by


def decide(applied: Applied | None, stamp: Stamp, data_hash: str) -> Verdict:
    """Whether a snapshot with ``stamp`` and ``data_hash`` may replace what is applied."""
    if applied is not None and applied.data_hash == data_hash:
        return Verdict.SAME
    if stamp.generation is None:
        return Verdict.UNORDERED
    if applied is None or applied.generation is None:
        return Verdict.APPLY
    if stamp.uid is not None and stamp.uid in applied.retired:
        return Verdict.OLDER  # a placement of an object this pod already moved away from
    if stamp.uid is not None and applied.uid is not None and stamp.uid != applied.uid:
        return Verdict.APPLY  # the MoEDeployment was re-created: its generations start again
    if stamp.generation > applied.generation:
        return Verdict.APPLY
    if stamp.generation == applied.generation:
        if (stamp.uid is None) != (applied.uid is None):
            return Verdict.SAME  # the same placement, re-stamped with its UID (an operator upgrade)
        return Verdict.CONFLICT
    return Verdict.OLDER


def successor(applied: Applied | None, stamp: Stamp, data_hash: str, version: str) -> Applied:
    """The state after applying ``stamp``'s placement over ``applied`` (UIDs moved away from are kept)."""
    retired = applied.retired if applied is not None else ()
    uid = stamp.uid if stamp.uid is not None else (applied.uid if applied is not None else None)
    if applied is not None and applied.uid is not None and applied.uid != uid and applied.uid not in retired:
        retired = (*retired, applied.uid)[-RETIRED_KEPT:]
    return Applied(stamp.generation, data_hash, version, uid, retired)


def load(state_dir: str | os.PathLike[str]) -> Applied | None:
    """The applied state, or None when nothing was recorded yet."""
    path = Path(state_dir) / STATE_FILE
    try:
        with open(path, "rb") as f:
            blob = f.read(MAX_STATE_BYTES + 1)
        if len(blob) > MAX_STATE_BYTES:
            raise ServingError("UnreadableVolume", f"state file {path} is over {MAX_STATE_BYTES} bytes")
        raw = json.loads(blob)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as e:
        raise ServingError("UnreadableVolume", f"state file {path} is unreadable: {e}") from None
    where = f"state file {path}"
    if not isinstance(raw, dict) or not isinstance(raw.get("data_hash"), str):
        raise ServingError("UnreadableVolume", f"{where} is not an object with a data_hash")
    retired = raw.get("retired") or []
    if not isinstance(retired, list):
        raise ServingError("UnreadableVolume", f"{where}: retired is not a list")
    return Applied(
        parse_generation(raw.get("generation"), where),
        raw["data_hash"],
        str(raw.get("version", ""))[:256],
        parse_uid(raw.get("uid"), where),
        tuple(u for u in (parse_uid(r, where) for r in retired[-RETIRED_KEPT:]) if u),
    )


def save(state_dir: str | os.PathLike[str], applied: Applied) -> None:
    """Record ``applied`` atomically (write a temp file, fsync, rename)."""
    directory = Path(state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    write_atomic(directory / STATE_FILE, json.dumps(asdict(applied), sort_keys=True) + "\n")


def write_atomic(path: Path, content: str | bytes) -> None:
    """Replace ``path`` with ``content`` (text as UTF-8) so a concurrent reader sees the old or the new
    file, never half."""
    blob = content.encode("utf-8") if isinstance(content, str) else content
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
