"""`vibe cluster up|down|status`: the local control plane from a shell.

stdout carries only what a shell should evaluate (``export KUBECONFIG=...`` and ``export PATH=...`` for
the kubectl and helm built for it), so
``eval "$(vibe cluster up)"`` works; progress, tables and errors go to stderr.

A second `up` while the cluster runs is not an error: it says so on stderr, adds any missing
``--nodes``, prints the export line and exits 0, so scripts can call `up` unconditionally.
"""

from __future__ import annotations

import shlex
import time
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from vibe.clikit import fail
from vibe.cluster.paths import DEFAULT_CLUSTER

app = typer.Typer(
    help="The local control plane (kine, kube-apiserver, controller manager, scheduler, kwok).",
    no_args_is_help=True,
    rich_markup_mode=None,  # help texts show [layers][experts] shapes literally
)
# soft_wrap: never break a path or a command line that someone will copy.
err = Console(stderr=True, highlight=False, soft_wrap=True)

COMMAND = "vibe cluster"
# --name only: -n means --namespace on every vibe command (docs/cli.md).
NameOpt = Annotated[str, typer.Option("--name", help="Cluster name (one state directory per name).")]


@app.command()
def up(
    nodes: Annotated[
        int, typer.Option("--nodes", min=0, help="Fake GPU nodes to create (gpu-node-0 ...).")
    ] = 0,
    gpus_per_node: Annotated[
        int, typer.Option("--gpus-per-node", min=0, help="nvidia.com/gpu per fake node.")
    ] = 8,
    name: NameOpt = DEFAULT_CLUSTER,
    build: Annotated[
        bool, typer.Option("--build/--no-build", help="Build missing binaries (hack/build-cluster.sh).")
    ] = True,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the control plane to become ready.")
    ] = 120.0,
) -> None:
    """Start the local control plane (building its binaries if needed); print the shell exports."""
    from vibe.cluster.binaries import BinariesMissing
    from vibe.cluster.controlplane import Cluster, ClusterError

    cluster = Cluster(name)
    t0 = time.monotonic()
    with err.status(f"bringing up cluster {name!r} ...") as spinner:

        def progress(msg: str) -> None:
            if msg.startswith("build-cluster:"):
                err.print(f"[dim]{msg}[/dim]")
            else:
                spinner.update(msg)

        try:
            started = cluster.up(
                nodes=nodes, gpus_per_node=gpus_per_node, build=build, progress=progress, timeout=timeout
            )
        except (ClusterError, BinariesMissing) as exc:
            spinner.stop()
            fail(type(exc).__name__, str(exc), command=COMMAND)
    if started:
        err.print(
            f"cluster [bold]{name}[/bold] is up in {time.monotonic() - t0:.1f}s; state in {cluster.dir}"
        )
    else:
        err.print(f"cluster [bold]{name}[/bold] is already running; state in {cluster.dir}")
    typer.echo(_export_lines(cluster.status(check_ready=False).export_line))


def _export_lines(export_kubeconfig: str) -> str:
    """What `eval "$(vibe cluster up|status)"` needs: KUBECONFIG, and PATH to the kubectl and helm built
    for this cluster (when they are built)."""
    from vibe.cluster.binaries import locate

    found = locate()
    dirs = [str(found[b].parent) for b in ("kubectl", "helm") if found[b].exists()]
    path = f'\nexport PATH={shlex.quote(":".join(dirs))}:"$PATH"' if dirs else ""
    return export_kubeconfig + path


@app.command()
def down(name: NameOpt = DEFAULT_CLUSTER) -> None:
    """Stop every process of the cluster and remove its state (certificates, database, logs)."""
    from vibe.cluster.controlplane import Cluster

    t0 = time.monotonic()
    if Cluster(name).down():
        err.print(f"cluster [bold]{name}[/bold] is down ({time.monotonic() - t0:.1f}s)")
    else:
        err.print(f"cluster [bold]{name}[/bold] was not running")


@app.command()
def status(name: NameOpt = DEFAULT_CLUSTER) -> None:
    """Show the cluster's processes; print the exports and exit 0 only when it is ready."""
    from vibe.cluster.controlplane import Cluster

    st = Cluster(name).status()
    if not st.exists:
        fail("NotRunning", f"cluster {name} is not running (`vibe cluster up` starts it)", command=COMMAND)
    table = Table(
        title=f"cluster {name}: {'[green]ready' if st.ready else '[red]not ready'}[/]", title_justify="left"
    )
    for col in ("component", "pid", "port", "alive"):
        table.add_column(col)
    for comp, ok in st.processes.items():
        port = st.ports.get(comp)
        table.add_row(comp, str(st.pids.get(comp, "")), str(port or ""), "[green]yes" if ok else "[red]no")
    err.print(table)
    err.print(f"server {st.server}  versions {', '.join(f'{k} {v}' for k, v in sorted(st.versions.items()))}")
    err.print(f"state and logs in {st.state_dir}")
    if not st.ready:
        fail(
            "NotReady",
            "some component is down: `vibe cluster up` cleans the stale state and starts afresh",
            command=COMMAND,
        )
    typer.echo(_export_lines(st.export_line))
