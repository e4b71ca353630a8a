"""`vibe cluster up|status|down` on clusters of their own (not the session's): a second `up` says the
cluster runs, `down` leaves no process, port or file behind, and `up` restarts what died in a cluster
that was up, keeping its data, or refuses with a message (never wiping it)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from vibe.cluster import Cluster, ClusterError
from vibe.cluster.processes import alive, port_in_use
from vibe.cluster.waiting import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def vibe_cluster(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vibe.cli", "cluster", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def scratch_cluster(cluster_binaries: object, request: pytest.FixtureRequest):
    name = f"vibe-test-{request.node.name.removeprefix('test_').replace('_', '-')}"[:40].rstrip("-")
    c = Cluster(name)
    c.down()  # whatever a crashed earlier run left
    yield c
    c.down()


def test_up_twice_status_then_down_leaves_nothing(scratch_cluster: Cluster) -> None:
    name = scratch_cluster.name
    first = vibe_cluster("up", "--name", name, "--no-build")
    assert first.returncode == 0, first.stderr
    # stdout is exactly what `eval "$(vibe cluster up)"` needs; everything else went to stderr.
    from vibe.cluster.binaries import locate

    tools = f"{locate()['kubectl'].parent}:{locate()['helm'].parent}"
    assert first.stdout == (f'export KUBECONFIG={scratch_cluster.kubeconfig}\nexport PATH={tools}:"$PATH"\n')
    # ... and a shell that evaluates it finds the cluster's own kubectl talking to it.
    shell = 'eval "$1"; kubectl get --raw /readyz'
    ready = subprocess.run(["bash", "-c", shell, "-", first.stdout], capture_output=True, text=True)
    assert ready.stdout == "ok", ready.stderr
    st = scratch_cluster.status()
    assert st.ready, st
    assert set(st.processes) == {
        "kine",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kwok",
    }
    pids = st.pids
    ports = st.ports
    assert all(port_in_use(p) for p in ports.values())

    second = vibe_cluster("up", "--name", name)
    assert second.returncode == 0, second.stderr
    assert "already running" in second.stderr
    assert second.stdout == first.stdout
    assert scratch_cluster.status().pids == pids  # nothing restarted

    status = vibe_cluster("status", "--name", name)
    assert status.returncode == 0, status.stderr
    assert status.stdout == first.stdout
    assert "kube-apiserver" in status.stderr

    down = vibe_cluster("down", "--name", name)
    assert down.returncode == 0, down.stderr
    assert not [n for n, pid in pids.items() if alive(pid)], f"still running after down: {pids}"
    assert not [p for p in ports.values() if port_in_use(p)], f"ports still open after down: {ports}"
    assert not scratch_cluster.dir.exists()

    after = vibe_cluster("status", "--name", name)
    assert after.returncode == 1
    assert after.stdout == ""
    assert "not running" in after.stderr


def _put_config_map(c: Cluster, name: str) -> None:
    from kubernetes import client

    api = c.api_client()
    try:
        client.CoreV1Api(api).create_namespaced_config_map("default", {"metadata": {"name": name}})
    finally:
        api.close()


def _has_config_map(c: Cluster, name: str) -> bool:
    from kubernetes import client

    api = c.api_client()
    try:
        return any(
            cm.metadata.name == name
            for cm in client.CoreV1Api(api).list_namespaced_config_map("default").items
        )
    finally:
        api.close()


def test_up_restarts_dead_components_and_keeps_the_data(scratch_cluster: Cluster) -> None:
    """Issue 15 #12: `up` after a component of a running cluster died wiped the database silently."""
    assert scratch_cluster.up() is True
    _put_config_map(scratch_cluster, "survives")
    old = scratch_cluster.status()
    os.kill(old.pids["kube-apiserver"], signal.SIGKILL)
    st = wait_for(
        lambda: (s := scratch_cluster.status()).processes["kube-apiserver"] is False and s, timeout=10
    )
    assert st.exists and not st.running and not st.ready
    assert st.processes["kube-apiserver"] is False

    messages: list[str] = []
    assert scratch_cluster.up(progress=messages.append) is True
    assert any("restarting kube-apiserver" in m and "data kept" in m for m in messages), messages
    new = scratch_cluster.status()
    assert new.ready
    assert new.pids["kube-apiserver"] != old.pids["kube-apiserver"]
    assert {n: p for n, p in new.pids.items() if n != "kube-apiserver"} == {
        n: p for n, p in old.pids.items() if n != "kube-apiserver"
    }
    assert _has_config_map(scratch_cluster, "survives")

    # The storage and the API server gone together (the database file stays): both come back with it.
    again = scratch_cluster.status()
    for name in ("kube-apiserver", "kine"):
        os.kill(again.pids[name], signal.SIGKILL)
    # Both gone before `up`: `running` turns false with the first, and an `up` that saw the API server
    # still alive restarted kine alone and waited for a /readyz that never came (seen under load).
    wait_for(
        lambda: not any(scratch_cluster.status().processes[n] for n in ("kube-apiserver", "kine")),
        timeout=10,
        what="kine and the API server gone",
    )
    assert scratch_cluster.up(progress=messages.append) is True
    assert scratch_cluster.status().ready
    assert _has_config_map(scratch_cluster, "survives")


def test_up_refuses_to_wipe_a_cluster_it_cannot_restart(scratch_cluster: Cluster) -> None:
    assert scratch_cluster.up() is True
    _put_config_map(scratch_cluster, "survives")
    st = scratch_cluster.status()
    port = st.ports["kube-controller-manager"]
    os.kill(st.pids["kube-controller-manager"], signal.SIGKILL)
    wait_for(lambda: not port_in_use(port), timeout=10, what="the controller manager's port to close")
    with socket.socket() as squatter:  # another process took the port meanwhile
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(ClusterError) as e:
            scratch_cluster.up()
    msg = str(e.value)
    assert "kube-controller-manager" in msg and "holds the port" in msg and "data is kept" in msg
    assert (scratch_cluster.dir / "db" / "state.db").exists()
    assert scratch_cluster.up() is True  # the port is free again: restarted, data there
    assert scratch_cluster.status().ready and _has_config_map(scratch_cluster, "survives")


def test_a_shared_test_cluster_stops_when_its_last_session_leaves(scratch_cluster: Cluster) -> None:
    from cluster_plugin import shared_cluster

    from vibe.cluster.paths import clusters_root

    name = scratch_cluster.name
    other_session = subprocess.Popen(["sleep", "120"])
    try:
        with shared_cluster(name) as c:
            assert c.status().ready
            exe = Path(f"/proc/{other_session.pid}/cmdline").read_bytes().split(b"\0")[0].decode()
            (clusters_root() / f".{name}.users" / str(other_session.pid)).write_text(exe)
        assert c.status().ready, "stopped while another session still used it"
    finally:
        other_session.kill()
        other_session.wait()
    with shared_cluster(name) as c:  # joins the running cluster ...
        pass
    assert not c.status().exists, "the last session out (of a cluster tests started) stops it"

    # A cluster someone started by hand stays up.
    assert scratch_cluster.up() is True
    with shared_cluster(name):
        pass
    assert scratch_cluster.status().ready
