"""The local control plane: kine, kube-apiserver, kube-controller-manager, kube-scheduler and kwok.

`Cluster(name).up()` brings one named cluster up from nothing in a few seconds, `down()` stops every
process it started and removes its state, `status()` reads what is there. Everything binds to 127.0.0.1
on ports the kernel hands out, so several clusters (the demo's ``vibe`` and the tests' ``vibe-test``) can
run side by side.

The state directory holds everything a cluster owns (see `vibe.cluster.paths`); ``state.json`` in it
lists the processes (PID and executable) and ports, and is rewritten after each process starts, so a
failed or interrupted `up` still leaves enough behind for `down`, or the next `up`, to clean up. A file
lock per cluster name serialises `up` and `down`, so two of them never interleave.

Storage is kine on SQLite rather than etcd: one small pure-Go process, no data-dir tuning, and fast
enough for thousands of fake nodes. Nodes are kwok's: only nodes annotated ``kwok.x-k8s.io/node: fake``
(see `vibe.cluster.nodes`) are managed, and the Stages in ``data/kwok-stages.yaml`` make them Ready and
their pods Running.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shlex
import shutil
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from vibe.cluster import binaries as bins
from vibe.cluster import components as comps
from vibe.cluster import pki as pkimod
from vibe.cluster.nodes import create_gpu_nodes, node_name, node_names
from vibe.cluster.paths import DEFAULT_CLUSTER, check_name, clusters_root, state_dir
from vibe.cluster.processes import LOCALHOST, Proc, alive, file_lock, free_ports, port_in_use, spawn, stop

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

Progress = Callable[[str], None]
STATE_FILE = "state.json"


class ClusterError(RuntimeError):
    """The control plane could not be brought up (the message says which component and where its log is)."""


@dataclass
class Status:
    """What `Cluster.status` found."""

    name: str
    state_dir: Path
    kubeconfig: Path
    exists: bool = False  # a state directory is there
    running: bool = False  # every recorded process is alive
    ready: bool = False  # running, and the API server answers /readyz
    server: str | None = None
    processes: dict[str, bool] = field(default_factory=dict)  # component -> alive
    pids: dict[str, int] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    started_at: float | None = None

    @property
    def export_line(self) -> str:
        return f"export KUBECONFIG={shlex.quote(str(self.kubeconfig))}"


class Cluster:
    """One named local control plane. Cheap to construct; methods do the work."""

    def __init__(self, name: str = DEFAULT_CLUSTER) -> None:
        self.name = check_name(name)
        self.dir = state_dir(name)

    # -- files --------------------------------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def log_dir(self) -> Path:
        return self.dir / "logs"

    def _state_path(self) -> Path:
        return self.dir / STATE_FILE

    def _load_state(self) -> dict[str, Any] | None:
        try:
            return json.loads(self._state_path().read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def _save_state(self, state: dict[str, Any]) -> None:
        tmp = self._state_path().with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
        tmp.replace(self._state_path())

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return file_lock(clusters_root() / f".{self.name}.lock")

    # -- status -------------------------------------------------------------------------------------

    def status(self, check_ready: bool = True) -> Status:
        """What runs now. ``ready`` needs every process alive and the API server's /readyz to answer ok."""
        st = Status(self.name, self.dir, self.kubeconfig, exists=self.dir.exists())
        state = self._load_state()
        if not state:
            return st
        procs = [Proc.from_json(p) for p in state.get("processes", [])]
        st.processes = {p.name: alive(p.pid, p.exe) for p in procs}
        st.pids = {p.name: p.pid for p in procs}
        st.ports = dict(state.get("ports", {}))
        st.versions = dict(state.get("versions", {}))
        st.server = state.get("server")
        st.started_at = state.get("started_at")
        expected = set(state.get("components", []))
        st.running = bool(procs) and all(st.processes.values()) and expected <= set(st.processes)
        if st.running and check_ready and state.get("complete"):
            st.ready = self._readyz(timeout=2.0)
        return st

    def _ssl_context(self) -> ssl.SSLContext:
        p = pkimod.Pki(self.dir / "pki")
        ctx = ssl.create_default_context(cafile=str(p.ca_cert))
        ctx.load_cert_chain(str(p.admin_cert), str(p.admin_key))
        return ctx

    def _get(self, url: str, timeout: float) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, context=self._ssl_context(), timeout=timeout) as resp:
                return resp.status, resp.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
            return 0, str(exc)

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._readyz():
                return True
            time.sleep(0.5)
        return False

    def _readyz(self, timeout: float = 2.0) -> bool:
        state = self._load_state() or {}
        server = state.get("server")
        return bool(server) and self._get(f"{server}/readyz", timeout)[0] == 200

    # -- up -----------------------------------------------------------------------------------------

    def up(
        self,
        nodes: int = 0,
        gpus_per_node: int = 8,
        *,
        build: bool = True,
        progress: Progress | None = None,
        timeout: float = 120.0,
    ) -> bool:
        """Bring the cluster up (building missing binaries when ``build``) with ``nodes`` fake GPU nodes.

        Returns True when it started (or restarted part of) the cluster, False when it was already running
        and ready (then only missing nodes ``gpu-node-<i>`` are added). A cluster that was up and lost
        processes keeps its database: the dead components are restarted on their old ports and files
        (``_revive``), or `ClusterError` says why they cannot be and that the data is kept. Only a start
        that never finished is removed (saying so). Raises `ClusterError` (after stopping what it started)
        when a component fails.
        """
        say = progress or (lambda _msg: None)
        with self._locked():
            st = self.status()
            if st.running and not st.ready and (self._load_state() or {}).get("complete"):
                # Every process lives: give a busy API server time to answer before calling it stale.
                st.ready = self._wait_ready(30.0)
            if st.ready:
                say(f"cluster {self.name!r} is already running ({st.server})")
                if nodes:
                    self._ensure_nodes(nodes, gpus_per_node, say)
                return False
            state = self._load_state() or {}
            if st.exists and state.get("complete"):
                # A cluster that was up holds data (its database): never wipe it here. Restart what died,
                # or say why not and leave everything in place for `vibe cluster down`.
                self._revive(state, st, say, timeout)
                if nodes:
                    self._ensure_nodes(nodes, gpus_per_node, say)
                return True
            if st.exists:
                dead = [n for n, ok in st.processes.items() if not ok]
                why = f"dead: {', '.join(dead)}" if dead else "never finished starting"
                say(f"removing the half-started cluster {self.name!r} ({why}; it never became ready)")
                self._teardown()
            binaries = bins.ensure(build_missing=build, on_line=say, components=bins.RUNTIME)
            t0 = time.monotonic()
            try:
                self._start(binaries, say, timeout)
            except BaseException as exc:
                state = self._load_state() or {}
                self._stop_all(state)
                state["failed"] = repr(exc)
                if self.dir.exists():
                    self._save_state(state)
                if isinstance(exc, ClusterError | TimeoutError | RuntimeError | OSError):
                    raise ClusterError(
                        f"{exc}\n(logs: {self.log_dir}; `vibe cluster down` cleans up)"
                    ) from exc
                raise
            say(f"control plane ready in {time.monotonic() - t0:.1f}s")
            if nodes:
                self._ensure_nodes(nodes, gpus_per_node, say)
            return True

    def _start(self, binaries: bins.Binaries, say: Progress, timeout: float) -> None:
        """Start the components in order (``components`` builds each command line), each after the one
        it needs is ready; record every process in the state file as it starts."""
        deadline = time.monotonic() + timeout
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        self.log_dir.mkdir(exist_ok=True)
        say("generating certificates")
        p = pkimod.generate(self.dir / "pki", self.name)
        lay = comps.Layout(self.dir, p, self.kubeconfig, binaries, comps.Ports(*free_ports(4)))
        server = lay.server
        self._write_kubeconfig(p, server)
        state: dict[str, Any] = {
            "name": self.name,
            "server": server,
            "kubeconfig": str(self.kubeconfig),
            "ports": lay.ports.as_dict(),
            "components": list(comps.COMPONENTS),
            "processes": [],
            "versions": binaries.versions,
            "started_at": time.time(),
            "complete": False,
        }
        self._save_state(state)

        def launch(name: str, argv: list[str]) -> Proc:
            proc = spawn(name, argv, self.log_dir / f"{name}.log", cwd=self.dir)
            state["processes"].append({**proc.to_json(), "argv": argv})
            self._save_state(state)
            return proc

        def healthy(url: str) -> Callable[[], bool]:
            return lambda: self._get(url, 2.0)[0] == 200

        say("starting kine (SQLite)")
        kine = launch("kine", comps.kine(lay))
        self._wait(lambda: port_in_use(lay.ports.kine), kine, deadline, "kine listening")

        say("starting kube-apiserver")
        apiserver = launch("kube-apiserver", comps.apiserver(lay))
        say("waiting for kube-apiserver /readyz")
        self._wait(healthy(f"{server}/readyz"), apiserver, deadline, "kube-apiserver /readyz")

        say("starting kube-controller-manager, kube-scheduler and kwok")
        kcm = launch("kube-controller-manager", comps.controller_manager(lay))
        sched = launch("kube-scheduler", comps.scheduler(lay))
        kwok = launch("kwok", comps.kwok(lay))
        say("waiting for the controller manager and the scheduler")
        kcm_url = f"https://{LOCALHOST}:{lay.ports.controller_manager}/healthz"
        self._wait(healthy(kcm_url), kcm, deadline, "kube-controller-manager /healthz")
        sched_url = f"https://{LOCALHOST}:{lay.ports.scheduler}/healthz"
        self._wait(healthy(sched_url), sched, deadline, "kube-scheduler /healthz")
        # Pods are refused until their namespace's `default` ServiceAccount exists; the controller manager
        # makes it. Waiting for it here means the cluster is usable the moment `up` returns.
        self._wait(
            healthy(f"{server}/api/v1/namespaces/default/serviceaccounts/default"),
            kcm,
            deadline,
            "the default ServiceAccount (kube-controller-manager)",
        )
        if not alive(kwok.pid, kwok.exe):
            raise ClusterError(f"kwok exited at start: {self._tail(kwok)}")
        state["complete"] = True
        self._save_state(state)

    def _revive(self, state: dict[str, Any], st: Status, say: Progress, timeout: float) -> None:
        """Restart the dead components of a cluster that was up, with their recorded command lines (same
        ports, certificates and database), in start order; raise `ClusterError` when that cannot work."""
        entries = {e["name"]: e for e in state.get("processes", [])}
        dead = [n for n in state.get("components", []) if not st.processes.get(n, False)]
        keep = f"its data is kept in {self.dir}; `vibe cluster down` removes the cluster and its data"
        if not dead:
            raise ClusterError(
                f"cluster {self.name!r}: every process runs but the API server at {st.server} does not answer"
                f" /readyz (logs: {self.log_dir}); {keep}"
            )
        missing = [n for n in dead if not entries.get(n, {}).get("argv")]
        if missing:
            raise ClusterError(
                f"cluster {self.name!r}: {', '.join(dead)} died and this cluster's state does not record how"
                f" to restart {', '.join(missing)} (started by an older vibe); {keep}"
            )
        ports = state.get("ports", {})

        def busy_ports() -> list[str]:
            return [f"{n} (port {ports[n]})" for n in dead if n in ports and port_in_use(int(ports[n]))]

        settle = time.monotonic() + 5.0  # a process killed a moment ago may still be closing its sockets
        while (busy := busy_ports()) and time.monotonic() < settle:
            time.sleep(0.2)
        if busy:
            raise ClusterError(
                f"cluster {self.name!r}: cannot restart {', '.join(busy)}: another process holds the port;"
                f" {keep}"
            )
        say(f"cluster {self.name!r}: restarting {', '.join(dead)} (the rest runs; data kept)")
        deadline = time.monotonic() + timeout
        server = str(state["server"])
        checks: dict[str, Callable[[], bool]] = {
            "kine": lambda: port_in_use(int(ports["kine"])),
            "kube-apiserver": lambda: self._get(f"{server}/readyz", 2.0)[0] == 200,
            "kube-controller-manager": lambda: (
                self._get(f"https://{LOCALHOST}:{ports['kube-controller-manager']}/healthz", 2.0)[0] == 200
            ),
            "kube-scheduler": lambda: (
                self._get(f"https://{LOCALHOST}:{ports['kube-scheduler']}/healthz", 2.0)[0] == 200
            ),
        }
        try:
            for name in dead:
                argv = [str(a) for a in entries[name]["argv"]]
                proc = spawn(name, argv, self.log_dir / f"{name}.log", cwd=self.dir)
                state["processes"] = [e for e in state["processes"] if e["name"] != name]
                state["processes"].append({**proc.to_json(), "argv": argv})
                self._save_state(state)
                check = checks.get(name)
                if check is not None:
                    self._wait(check, proc, deadline, f"{name} after a restart")
            if not self._wait_ready(max(1.0, deadline - time.monotonic())):
                raise ClusterError(f"the API server at {server} does not answer /readyz")
        except (ClusterError, TimeoutError, OSError) as exc:
            raise ClusterError(
                f"cluster {self.name!r}: restarting {', '.join(dead)} failed: {exc}\n(logs: {self.log_dir};"
                f" {keep})"
            ) from exc
        say(f"cluster {self.name!r} is running again ({server})")

    def _wait(self, check: Callable[[], bool], proc: Proc, deadline: float, what: str) -> None:
        while True:
            if check():
                return
            if not alive(proc.pid, proc.exe):
                raise ClusterError(f"{proc.name} exited while waiting for {what}:\n{self._tail(proc)}")
            if time.monotonic() > deadline:
                raise ClusterError(f"timed out waiting for {what}:\n{self._tail(proc)}")
            time.sleep(0.1)

    @staticmethod
    def _tail(proc: Proc, lines: int = 15) -> str:
        try:
            text = Path(proc.log).read_text(errors="replace").splitlines()
        except OSError:
            return f"(no log at {proc.log})"
        return "\n".join(f"  {line}" for line in text[-lines:]) + f"\n  (full log: {proc.log})"

    def _write_kubeconfig(self, p: pkimod.Pki, server: str) -> None:
        def b64(path: Path) -> str:
            return base64.b64encode(path.read_bytes()).decode()

        user = f"{self.name}-admin"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": self.name,
                    "cluster": {"server": server, "certificate-authority-data": b64(p.ca_cert)},
                }
            ],
            "users": [
                {
                    "name": user,
                    "user": {
                        "client-certificate-data": b64(p.admin_cert),
                        "client-key-data": b64(p.admin_key),
                    },
                }
            ],
            "contexts": [{"name": self.name, "context": {"cluster": self.name, "user": user}}],
            "current-context": self.name,
        }
        self.kubeconfig.write_text(yaml.safe_dump(config, sort_keys=False))
        self.kubeconfig.chmod(0o600)

    def _ensure_nodes(self, n: int, gpus_per_node: int, say: Progress) -> None:
        """Create whichever of ``gpu-node-0`` .. ``gpu-node-<n-1>`` do not exist yet."""
        with self.api_client() as api:
            existing = node_names(api)
            missing = [i for i in range(n) if node_name("gpu-node", i) not in existing]
            if not missing:
                return
            say(f"creating {len(missing)} fake GPU node(s) with {gpus_per_node} GPUs each")
            runs: list[list[int]] = []
            for i in missing:
                if runs and runs[-1][-1] == i - 1:
                    runs[-1].append(i)
                else:
                    runs.append([i])
            for run in runs:
                create_gpu_nodes(len(run), gpus_per_node, api=api, start=run[0])

    # -- down ---------------------------------------------------------------------------------------

    def down(self) -> bool:
        """Stop every process of this cluster and remove its state. Returns whether anything was there."""
        with self._locked():
            return self._teardown()

    def _teardown(self) -> bool:
        state = self._load_state() or {}
        existed = self.dir.exists()
        self._stop_all(state)
        shutil.rmtree(self.dir, ignore_errors=True)
        return existed

    @staticmethod
    def _stop_all(state: dict[str, Any]) -> None:
        # Storage last: on SIGTERM the API server still writes (its identity lease, ...) and, with kine
        # already gone, would retry for many seconds before it gave up. In this order `down` takes ~2s.
        procs = [Proc.from_json(p) for p in state.get("processes", [])]
        stop(p for p in procs if p.name != "kine")
        stop(p for p in procs if p.name == "kine")

    # -- clients ------------------------------------------------------------------------------------

    def api_client(self) -> ApiClient:
        """A `kubernetes.client.ApiClient` for this cluster's admin (close it, or use it in a `with`)."""
        from kubernetes import config

        if not self.kubeconfig.exists():
            raise ClusterError(
                f"cluster {self.name!r} is not up (no {self.kubeconfig}); run `vibe cluster up`"
            )
        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def env(self) -> dict[str, str]:
        """``os.environ`` plus KUBECONFIG for this cluster (for subprocesses: kubectl, helm, the operator)."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
