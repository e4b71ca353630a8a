"""Read a mounted ConfigMap as one consistent snapshot, the way kubelet swaps it.

kubelet projects a ConfigMap volume as::

    /etc/vibe/placement/
      ..2026_11_23_12_00_00.123456789/   <- one directory per version, files written before the swap
        placement.json
        sglang-expert-location.json
      ..data -> ..2026_11_23_12_00_00.123456789    <- swapped with one atomic rename
      placement.json -> ..data/placement.json       <- stable per-key links

A reader that opens ``placement.json`` and then ``sglang-expert-location.json`` through the stable links
can straddle a swap and get keys from two versions. So ``read_snapshot`` resolves ``..data`` once, reads
every key from *that* directory, and resolves ``..data`` again: if it moved (or the old directory vanished
mid-read), it retries. A plain directory (no ``..data``: a test, a hostPath, ``kubectl cp``) is read twice
and accepted when both reads agree. ``subPath`` mounts never update; mount the whole volume.

Every key must be a regular file inside the mount, at most ``MAX_KEY_BYTES`` (and all keys together
``MAX_TOTAL_BYTES``): a key that is a FIFO, a device (``/dev/zero``), a link out of the mount or a file
larger than any ConfigMap can be is refused as ``UnreadableVolume`` without reading it whole (a FIFO is
opened non-blocking, and never read).
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from vibe.serving.errors import ServingError

DATA_LINK = "..data"
#: A ConfigMap holds at most 1 MiB of data (etcd's request limit); a key larger than that was not
#: projected from one.
MAX_KEY_BYTES = 1024 * 1024
MAX_TOTAL_BYTES = 2 * 1024 * 1024


@dataclass(frozen=True)
class Snapshot:
    """Every key of one version of a mounted ConfigMap.

    Attributes:
        data: key -> file content (text), like a ConfigMap's ``data``.
        version: the ``..data`` target (kubelet's version directory), or ``""`` for a plain directory.
    """

    data: dict[str, str]
    version: str


def current_version(mount: Path) -> str | None:
    """The ``..data`` target of a kubelet volume, or None for a plain directory."""
    try:
        return os.readlink(mount / DATA_LINK)
    except FileNotFoundError:
        return None
    except OSError as e:  # EINVAL: ..data exists but is not a link
        raise ServingError("UnreadableVolume", f"{mount / DATA_LINK} is not a symlink: {e}") from None


def _read_key(path: Path, root: Path, budget: int) -> bytes:
    """The bytes of one key: a regular file under ``root``, at most ``min(MAX_KEY_BYTES, budget)``."""
    real = Path(os.path.realpath(path))
    if real != root and root not in real.parents:
        raise ServingError("UnreadableVolume", f"{path} points outside the placement volume ({real})")
    limit = min(MAX_KEY_BYTES, budget)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ServingError("UnreadableVolume", f"{path} is not a regular file; refusing to read it")
        if info.st_size > limit:
            raise ServingError(
                "UnreadableVolume", f"{path} is {info.st_size} bytes, more than a ConfigMap key can be"
            )
        with os.fdopen(fd, "rb", closefd=False) as f:
            blob = f.read(limit + 1)
    finally:
        os.close(fd)
    if len(blob) > limit:
        raise ServingError("UnreadableVolume", f"{path} grew past {limit} bytes while it was read")
    return blob


def _read_dir(directory: Path, root: Path) -> dict[str, str]:
    data: dict[str, str] = {}
    budget = MAX_TOTAL_BYTES
    for entry in sorted(os.listdir(directory)):
        if entry.startswith(".."):  # kubelet's bookkeeping (..data, ..<timestamp>, ..data_tmp)
            continue
        path = directory / entry
        if path.is_dir():
            continue
        blob = _read_key(path, root, budget)
        budget -= len(blob)
        data[entry] = blob.decode("utf-8")
    return data


def read_snapshot(mount: str | os.PathLike[str], attempts: int = 20, pause: float = 0.05) -> Snapshot:
    """All keys of the mounted ConfigMap from one version.

    Args:
        mount: the volume's mount path.
        attempts: how many times to retry when a swap happens mid-read.
        pause: seconds between retries.

    Raises:
        ServingError(UnreadableVolume): the mount does not exist, or kept changing for every attempt.
    """
    root = Path(os.path.realpath(mount))
    if not root.is_dir():
        raise ServingError("UnreadableVolume", f"placement volume {root} is not mounted (no such directory)")
    for _ in range(attempts):
        before = current_version(root)
        try:
            if before is None:
                first = _read_dir(root, root)
                if _read_dir(root, root) == first and current_version(root) is None:
                    return Snapshot(first, "")
            else:
                data = _read_dir(root / before, root)
                if current_version(root) == before:
                    return Snapshot(data, before)
        except (FileNotFoundError, NotADirectoryError):
            pass  # the old version directory was removed under us: retry on the new one
        except UnicodeDecodeError as e:
            raise ServingError("UnreadableVolume", f"{root}: a key is not UTF-8 text: {e}") from None
        except OSError as e:  # permissions, a link loop, ...: the volume's problem, said in one line
            raise ServingError("UnreadableVolume", f"{root}: {e}") from None
        time.sleep(pause)
    raise ServingError("UnreadableVolume", f"{root} kept changing during {attempts} reads; giving up for now")
