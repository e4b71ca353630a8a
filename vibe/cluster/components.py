"""The command line of each process of the local control plane: one builder per component.

Role: what each of kine, kube-apiserver, kube-controller-manager, kube-scheduler and kwok is started
with, and why each unusual flag is there. ``controlplane.Cluster`` starts them in this order, waits for
each, and records every command line in its state file (a dead component is restarted with the very
same one). The builders only compute argument lists and the two configuration files; they start nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from vibe.cluster import binaries as bins
from vibe.cluster import pki as pkimod
from vibe.cluster.processes import LOCALHOST

#: The order the components start in (and are revived in).
COMPONENTS = ("kine", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
POD_CIDR = "10.244.0.0/16"
# Clients of the API server are the only load on it here; their default client-side limits (20 qps)
# would make a 1,000-node benchmark measure the rate limiter.
CLIENT_QPS, CLIENT_BURST = 1000, 2000
# kine's own default SQLite parameters (WAL, immediate transactions), spelled out with an explicit path.
KINE_SQLITE_OPTIONS = (
    "?_journal_mode=WAL&_busy_timeout=30000&_synchronous=NORMAL"
    "&_txlock=immediate&_stmt_cache_size=20&cache=shared"
)


@dataclass(frozen=True)
class Ports:
    kine: int
    apiserver: int
    controller_manager: int
    scheduler: int

    def as_dict(self) -> dict[str, int]:
        """By component name, as the state file records them."""
        return {
            "kine": self.kine,
            "kube-apiserver": self.apiserver,
            "kube-controller-manager": self.controller_manager,
            "kube-scheduler": self.scheduler,
        }


@dataclass(frozen=True)
class Layout:
    """What the command lines refer to: the state directory, the certificates, the admin kubeconfig,
    the binaries and the ports."""

    dir: Path
    pki: pkimod.Pki
    kubeconfig: Path
    binaries: bins.Binaries
    ports: Ports

    @property
    def server(self) -> str:
        return f"https://{LOCALHOST}:{self.ports.apiserver}"

    @property
    def serving(self) -> list[str]:
        return [f"--tls-cert-file={self.pki.serving_cert}", f"--tls-private-key-file={self.pki.serving_key}"]

    @property
    def delegated(self) -> list[str]:
        kv = self.kubeconfig
        return [f"--authentication-kubeconfig={kv}", f"--authorization-kubeconfig={kv}"]


def kine(lay: Layout) -> list[str]:
    """kine: the etcd API over SQLite in ``<dir>/db`` (created here)."""
    (lay.dir / "db").mkdir(exist_ok=True)
    return [
        str(lay.binaries["kine"]),
        f"--endpoint=sqlite://{lay.dir / 'db' / 'state.db'}{KINE_SQLITE_OPTIONS}",
        f"--listen-address={LOCALHOST}:{lay.ports.kine}",
        "--metrics-bind-address=0",  # 0: no metrics server
    ]


def apiserver(lay: Layout) -> list[str]:
    p = lay.pki
    return [
        str(lay.binaries["kube-apiserver"]),
        f"--etcd-servers=http://{LOCALHOST}:{lay.ports.kine}",
        f"--bind-address={LOCALHOST}",
        f"--advertise-address={LOCALHOST}",
        f"--secure-port={lay.ports.apiserver}",
        *lay.serving,
        f"--client-ca-file={p.ca_cert}",
        # Front-proxy settings every real cluster has; without them the controller manager and
        # the scheduler log an error about a missing request-header CA every few seconds.
        f"--requestheader-client-ca-file={p.front_proxy_ca}",
        f"--requestheader-allowed-names={pkimod.FRONT_PROXY_CLIENT}",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={p.front_proxy_cert}",
        f"--proxy-client-key-file={p.front_proxy_key}",
        f"--service-account-key-file={p.sa_pub}",
        f"--service-account-signing-key-file={p.sa_key}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-cluster-ip-range={pkimod.SERVICE_CIDR}",
        "--authorization-mode=RBAC",
        # Fake nodes are created Ready (vibe.cluster.nodes); without this plugin they are not
        # first tainted not-ready for the controller manager to untaint one by one, which took
        # a minute for a thousand nodes on two cores. A node that stops renewing its Lease is
        # still tainted by the controller manager, as in any cluster.
        "--disable-admission-plugins=TaintNodesByCondition",
        "--allow-privileged=true",
        # The `kubernetes` Service would get 127.0.0.1 as its endpoint, which validation refuses;
        # nothing runs inside this cluster to use it anyway.
        "--endpoint-reconciler-type=none",
        # A test and benchmark cluster: no fairness queues between its few clients.
        "--enable-priority-and-fairness=false",
        "--max-requests-inflight=0",
        "--max-mutating-requests-inflight=0",
        "--profiling=false",
        f"--cert-dir={lay.dir / 'pki'}",
    ]


def controller_manager(lay: Layout) -> list[str]:
    p = lay.pki
    return [
        str(lay.binaries["kube-controller-manager"]),
        f"--kubeconfig={lay.kubeconfig}",
        *lay.delegated,
        *lay.serving,
        f"--bind-address={LOCALHOST}",
        f"--secure-port={lay.ports.controller_manager}",
        "--leader-elect=false",
        f"--root-ca-file={p.ca_cert}",
        f"--service-account-private-key-file={p.sa_key}",
        f"--cluster-signing-cert-file={p.ca_cert}",
        f"--cluster-signing-key-file={p.ca_key}",
        "--use-service-account-credentials=false",
        f"--kube-api-qps={CLIENT_QPS}",
        f"--kube-api-burst={CLIENT_BURST}",
        "--profiling=false",
    ]


def scheduler(lay: Layout) -> list[str]:
    """kube-scheduler, with its configuration file ``<dir>/kube-scheduler.yaml`` (written here)."""
    config = lay.dir / "kube-scheduler.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kubescheduler.config.k8s.io/v1",
                "kind": "KubeSchedulerConfiguration",
                "clientConnection": {
                    "kubeconfig": str(lay.kubeconfig),
                    "qps": CLIENT_QPS,
                    "burst": CLIENT_BURST,
                },
                "leaderElection": {"leaderElect": False},
            }
        )
    )
    return [
        str(lay.binaries["kube-scheduler"]),
        f"--config={config}",
        *lay.delegated,
        *lay.serving,
        f"--bind-address={LOCALHOST}",
        f"--secure-port={lay.ports.scheduler}",
        "--profiling=false",
    ]


def kwok(lay: Layout) -> list[str]:
    """kwok, with the pod and node stages ``<dir>/kwok-stages.yaml`` (written here): it plays the
    kubelet of the fake nodes annotated ``kwok.x-k8s.io/node=fake`` only."""
    stages = lay.dir / "kwok-stages.yaml"
    stages.write_text(resources.files("vibe.cluster").joinpath("data/kwok-stages.yaml").read_text())
    return [
        str(lay.binaries["kwok"]),
        f"--kubeconfig={lay.kubeconfig}",
        f"--config={stages}",
        "--manage-all-nodes=false",
        "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
        f"--cidr={POD_CIDR}",
        "--node-lease-duration-seconds=40",
    ]
