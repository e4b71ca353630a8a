"""Starting, checking and stopping the control plane's processes (the OS side of `up` and `down`).

Each component runs in its own session (so it outlives the ``vibe cluster up`` that started it, and a
terminal's Ctrl-C does not reach it), with stdin closed and stdout+stderr appended to its log file.
A PID alone is not proof of life: PIDs get reused, and a child the caller never waited for lingers as a
zombie. ``alive`` therefore checks that the PID still runs the recorded executable and is not a zombie.

Also the two OS helpers every starter of local processes shares (the demo, the tests, the benchmarks):
``free_port`` and ``file_lock``. Standard library only, so a GPU benchmark may import it too.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

LOCALHOST = "127.0.0.1"


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now (the kernel picks them)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOCALHOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    """One TCP port free on 127.0.0.1 right now (for a process about to listen on it)."""
    return free_ports(1)[0]


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created, with its directory, if missing) for the block:
    serialises processes that share a cluster's state (``up``/``down``, test sessions)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def port_in_use(port: int) -> bool:
    """Whether something listens on 127.0.0.1:``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((LOCALHOST, port)) == 0


@dataclass(frozen=True)
class Proc:
    """A started component: what ``down`` needs to find and stop it again."""

    name: str
    pid: int
    exe: str
    log: str

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "pid": self.pid, "exe": self.exe, "log": self.log}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Proc:
        return cls(str(data["name"]), int(str(data["pid"])), str(data["exe"]), str(data["log"]))


def spawn(name: str, argv: list[str], log: Path, cwd: Path) -> Proc:
    """Start ``argv`` detached, logging to ``log``; returns at once."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
    return Proc(name, proc.pid, argv[0], str(log))


def _reap(pid: int) -> None:
    """Collect ``pid`` if it is our own exited child (otherwise it would stay a zombie)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def alive(pid: int, exe: str | None = None) -> bool:
    """Whether ``pid`` runs (not a zombie) and, when ``exe`` is given, still runs that executable."""
    _reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return exe is None  # someone else's process now: not ours
    stat = Path(f"/proc/{pid}/stat")
    if not stat.exists():  # no procfs (macOS): signal 0 is all we can check
        return True
    try:
        state = stat.read_text().rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):
            return False
        if exe is not None:
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode()
            if not argv0:
                # Mid-exec: Popen returns once the close-on-exec pipe closes, which the kernel does
                # before it maps the new image's arguments, so cmdline can read empty for a moment
                # (seen under load). The executable link is set before that point.
                return os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)") == exe
            return argv0 == exe
    except (OSError, IndexError):
        return False
    return True


def stop(procs: Iterable[Proc], timeout: float = 15.0) -> list[Proc]:
    """SIGTERM every live process (its whole session), SIGKILL what is left after ``timeout``.

    Returns the processes that were running. Stops them all at once rather than in turn: each
    component exits within a second or two of SIGTERM, and waiting for them one by one adds up.
    """
    running = [p for p in procs if alive(p.pid, p.exe)]
    for p in running:
        _signal(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(alive(p.pid, p.exe) for p in running) and time.monotonic() < deadline:
        time.sleep(0.05)
    for p in running:
        if alive(p.pid, p.exe):
            _signal(p.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while any(alive(p.pid, p.exe) for p in running) and time.monotonic() < deadline:
        time.sleep(0.05)
    return running


def _signal(pid: int, sig: signal.Signals) -> None:
    # Each component leads its own session and process group (start_new_session), so signal the group:
    # that also reaches anything it forked.
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
