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
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path

from vibe.serving.errors import ServingError
from vibe.serving.stamp import Stamp

STATE_FILE = "applied.json"


@dataclass(frozen=True)
class Applied:
    """The placement this pod's engine runs with.

    Attributes:
        generation: its placement generation (None if it had none).
        data_hash: ``content_hash`` of the whole snapshot it came from (always known).
        version: the kubelet version directory or API resourceVersion it was read from (for logs).
    """

    generation: int | None
    data_hash: str
    version: str = ""


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
    if stamp.generation > applied.generation:
        return Verdict.APPLY
    if stamp.generation == applied.generation:
        return Verdict.CONFLICT
    return Verdict.OLDER


def load(state_dir: str | os.PathLike[str]) -> Applied | None:
    """The applied state, or None when nothing was recorded yet."""
    path = Path(state_dir) / STATE_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as e:
        raise ServingError("UnreadableVolume", f"state file {path} is unreadable: {e}") from None
    gen = raw.get("generation")
    return Applied(None if gen is None else int(gen), str(raw["data_hash"]), str(raw.get("version", "")))


def save(state_dir: str | os.PathLike[str], applied: Applied) -> None:
    """Record ``applied`` atomically (write a temp file, fsync, rename)."""
    directory = Path(state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    write_atomic(directory / STATE_FILE, json.dumps(asdict(applied), sort_keys=True) + "\n")


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so a concurrent reader sees the old or the new file, never half."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
