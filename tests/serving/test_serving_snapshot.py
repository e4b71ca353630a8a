"""The mounted-ConfigMap reader never mixes two versions, however kubelet's swap interleaves with it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from serving_helpers import KubeletVolume, placement_data

from vibe.serving import snapshot
from vibe.serving.errors import ServingError


def versioned(n: int) -> dict[str, str]:
    return {k: json.dumps({"v": n, "key": k}) for k in ("a.json", "b.json", "c.json")}


def versions_in(data: dict[str, str]) -> set[int]:
    return {json.loads(v)["v"] for v in data.values()}


def test_reads_a_kubelet_volume(volume: KubeletVolume) -> None:
    version = volume.write(versioned(1))
    snap = snapshot.read_snapshot(volume.root)
    assert snap.version == version
    assert snap.data == versioned(1)  # ..data and ..<timestamp> are not keys


def test_reads_a_plain_directory(tmp_path: Path) -> None:
    for k, v in versioned(3).items():
        (tmp_path / k).write_text(v)
    snap = snapshot.read_snapshot(tmp_path)
    assert snap.version == "" and snap.data == versioned(3)


def test_missing_mount_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ServingError) as e:
        snapshot.read_snapshot(tmp_path / "nope")
    assert e.value.reason == "UnreadableVolume" and "not mounted" in str(e.value)


def test_swap_in_the_middle_of_a_read_is_retried(volume: KubeletVolume, monkeypatch) -> None:
    """Kubelet swaps (and deletes the old version) after the reader read one key: the read restarts."""
    volume.write(versioned(1))
    real = snapshot._read_key
    swapped = []

    def read_key(*a, **kw) -> bytes:
        blob = real(*a, **kw)
        if not swapped:
            swapped.append(volume.write(versioned(2)))  # removes the directory being read
        return blob

    monkeypatch.setattr(snapshot, "_read_key", read_key)
    snap = snapshot.read_snapshot(volume.root, pause=0)
    assert snap.version == swapped[0]
    assert versions_in(snap.data) == {2}


def test_swap_after_the_read_but_before_the_check_is_retried(volume: KubeletVolume, monkeypatch) -> None:
    """The old directory survives (kubelet has not cleaned it yet) but ..data moved: still retried."""
    volume.write(versioned(1))
    real_read_dir = snapshot._read_dir
    calls = []

    def read_dir(directory: Path, root: Path) -> dict[str, str]:
        data = real_read_dir(directory, root)
        if not calls:
            volume.write(versioned(2), remove_old=False)
        calls.append(directory.name)
        return data

    monkeypatch.setattr(snapshot, "_read_dir", read_dir)
    snap = snapshot.read_snapshot(volume.root, pause=0)
    assert len(calls) == 2 and versions_in(snap.data) == {2}


def test_never_mixes_versions_under_concurrent_swaps(volume: KubeletVolume) -> None:
    volume.write(versioned(0))
    stop = threading.Event()

    def writer() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            volume.write(versioned(n))

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    seen = set()
    try:
        for _ in range(300):
            snap = snapshot.read_snapshot(volume.root, attempts=1000, pause=0)
            vs = versions_in(snap.data)
            assert len(vs) == 1, f"mixed versions {vs}"
            seen |= vs
    finally:
        stop.set()
        t.join()
    assert len(seen) > 1  # the test really raced with the writer


def test_data_link_that_is_not_a_link(tmp_path: Path) -> None:
    (tmp_path / "..data").mkdir()
    with pytest.raises(ServingError, match="not a symlink"):
        snapshot.read_snapshot(tmp_path)


def test_gives_up_when_always_changing(volume: KubeletVolume, monkeypatch) -> None:
    volume.write(versioned(1))
    flip = iter(range(10**6))
    monkeypatch.setattr(snapshot, "current_version", lambda root: f"..v{next(flip)}")
    monkeypatch.setattr(snapshot, "_read_dir", lambda d, root: {})
    with pytest.raises(ServingError, match="kept changing"):
        snapshot.read_snapshot(volume.root, attempts=3, pause=0)
    assert os.path.islink(volume.root / "..data")


def _init_cli(volume_root: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    """``vibe serving init`` as the init container runs it: its own process, with a deadline."""
    args = [sys.executable, "-m", "vibe", "serving", "init", "--placement-dir", str(volume_root),
            "--sglang-out", str(tmp_path / "o.json"), "--state-dir", str(tmp_path / "state"),
            "--ep-size", "4", "--redundant-experts", "4", "--num-experts", "8", "--num-layers", "4",
            "--first-moe-layer", "1", "--wait-seconds", "0"]  # fmt: skip
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "outside", "huge"])
def test_init_refuses_keys_that_are_not_small_regular_files(
    volume: KubeletVolume, tmp_path: Path, kind: str
) -> None:
    """Issue 20, weak spot in ``vibe serving init``: a key that is a FIFO hung the init container, one
    linked to ``/dev/zero`` ended in a MemoryError traceback, and a 100 MB key was read whole before the
    hash check. Each is now one line, ``UnreadableVolume``, exit 1, within a second."""
    version = volume.write(placement_data(generation=1))
    key = volume.root / version / "extra.json"
    if kind == "fifo":
        os.mkfifo(key)
    elif kind == "dev-zero":
        os.symlink("/dev/zero", key)
    elif kind == "outside":
        secret = tmp_path / "secret"
        secret.write_text("not for the engine")
        os.symlink(secret, key)
    else:
        with open(key, "wb") as f:  # sparse: 100 MB that costs no disk
            f.truncate(100 * 1024 * 1024)
    result = _init_cli(volume.root, tmp_path)  # a hang is a TimeoutExpired
    assert result.returncode == 1, result.stderr
    assert "UnreadableVolume" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "o.json").exists()
