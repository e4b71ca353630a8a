"""``vibe operator``: run the operator (Kopf) with vibe's flags.

Role: the entry point of the operator's container and of the tests, which run it as a subprocess
(``python -m vibe.operator``) so that killing and restarting it is real. Heavy imports (Kopf, the
handlers) happen inside the command, so ``vibe --help`` stays fast.

Several replicas: start each with ``--peering NAME``. Kopf peering then lets exactly one replica work
(the one with the highest ``--priority``; a random one per replica by default) and the others stand by;
the ConfigMap writes are optimistic (resourceVersion) on top, so even a brief overlap cannot produce a
duplicate placement generation. ``--standalone`` (the default without ``--peering``) skips peering.
"""

from __future__ import annotations

import os
import random
from typing import TYPE_CHECKING, Annotated

import typer

from vibe.clikit import ContextOpt, KubeconfigOpt, LogFormat, LogFormatOpt, VerboseOpt, fail

if TYPE_CHECKING:
    import kubernetes.client

    from vibe.operator.settings import OperatorSettings

COMMAND = "vibe operator"


def run(
    namespace: Annotated[
        list[str] | None,
        typer.Option(
            "--namespace",
            "-n",
            metavar="NAMESPACE",
            help="Watch MoEDeployments in this namespace (repeatable; default: all).",
        ),
    ] = None,
    profile_namespace: Annotated[
        str, typer.Option(help="Namespace of the GPUProfiles (the agent's); always watched.")
    ] = "vibe-system",
    profile_ttl: Annotated[
        float, typer.Option(help="Seconds without a GPUProfile heartbeat before it counts as stale.")
    ] = 300.0,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port (0: off).")] = 8080,
    metrics_addr: Annotated[
        str,
        typer.Option(help="Address the metrics server binds (127.0.0.1: reachable only inside the pod)."),
    ] = "0.0.0.0",
    liveness: Annotated[
        str | None, typer.Option(help="Liveness endpoint, e.g. http://0.0.0.0:8081/healthz (Kopf's probe).")
    ] = None,
    peering: Annotated[
        str | None, typer.Option(help="Kopf peering object name: run several replicas, one active.")
    ] = None,
    standalone: Annotated[bool, typer.Option(help="No peering (a single replica).")] = False,
    priority: Annotated[
        int | None, typer.Option(help="Peering priority (highest works); default: random per replica.")
    ] = None,
    solve_budget: Annotated[
        float, typer.Option(help="Placement search budget per solve, in (deterministic) seconds.")
    ] = 1.0,
    resync: Annotated[float, typer.Option(help="Reconcile every deployment at least this often (s).")] = 60.0,
    gpu_resource: Annotated[
        str,
        typer.Option(
            help="Node capacity resource counting a node's GPUs; a GPUProfile listing more is not used "
            '("": no check).'
        ),
    ] = "nvidia.com/gpu",
    gpu_settle: Annotated[
        float,
        typer.Option(help="Seconds a change of a node's GPU list must hold before placements follow it."),
    ] = 30.0,
    compute_processes: Annotated[
        int | None,
        typer.Option(
            help="Placement worker processes (0: threads); default min(4, CPUs within the CPU limit)."
        ),
    ] = None,
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="Watch every namespace (the default without -n).")
    ] = False,
    verbose: VerboseOpt = False,
    debug: Annotated[bool, typer.Option("--debug", help="Debug logging (Kopf's too).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Warnings and errors only.")] = False,
    log_format: LogFormatOpt = LogFormat.text,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
) -> None:
    """Run the vibe operator: place MoE experts for every MoEDeployment, re-place on drift."""
    import asyncio

    import kopf

    from vibe.operator import settings as settings_mod
    from vibe.operator.kube import Kube

    namespaces = _namespaces(all_namespaces, namespace, profile_namespace)
    cfg = settings_mod.CURRENT = settings_mod.OperatorSettings(
        profile_namespace=profile_namespace,
        profile_ttl_s=profile_ttl,
        metrics_port=metrics_port,
        metrics_addr=metrics_addr,
        solve_budget_s=solve_budget,
        resync_s=resync,
        gpu_resource=gpu_resource,
        gpu_settle_s=gpu_settle,
        **({"compute_processes": compute_processes} if compute_processes is not None else {}),
        kubeconfig=str(kubeconfig) if kubeconfig is not None else None,
        context=context,
    )
    api = _preflight(cfg, namespaces)
    import vibe.operator.handlers  # noqa: F401  (registers the handlers)

    _configure_logging(verbose=verbose, debug=debug, quiet=quiet, log_format=log_format)
    if peering and not standalone:
        asyncio.run(Kube(api).ensure_peering(peering, namespaces))
        if priority is None:
            priority = random.randint(1, 2**30)
    api.close()
    kopf.run(
        clusterwide=not namespaces,
        namespaces=namespaces,
        standalone=standalone or not peering,
        peering_name=peering if peering and not standalone else None,
        priority=priority or 0,
        liveness_endpoint=liveness,
        # The pod's name (the chart sets POD_NAME) as the peering identity: a container restarted in
        # the same pod replaces its own entry instead of waiting for its dead self's keep-alive to lapse.
        identity=os.environ.get("POD_NAME") or None,  # type: ignore[arg-type]  # kopf's NewType of str
    )


def _namespaces(all_namespaces: bool, namespace: list[str] | None, profile_namespace: str) -> list[str]:
    """The namespaces Kopf watches ([]: every namespace): ``--namespace``'s, plus the GPUProfiles'."""
    if all_namespaces and namespace:
        raise typer.BadParameter("--all-namespaces and --namespace exclude each other")
    namespaces = sorted(set(namespace or ()))
    if namespaces and profile_namespace not in namespaces:
        namespaces.append(profile_namespace)  # Kopf applies --namespace to every namespaced resource
    return namespaces


def _configure_logging(*, verbose: bool, debug: bool, quiet: bool, log_format: LogFormat) -> None:
    """Kopf's logging, as the flags ask; without -v/--debug its per-object handler lines are dropped."""
    import logging

    import kopf

    kopf.configure(
        verbose=verbose,
        debug=debug,
        quiet=quiet,
        log_format=kopf.LogFormat.JSON if log_format is LogFormat.json else kopf.LogFormat.FULL,
    )
    if not (verbose or debug):  # one "Handler ... succeeded" line per watch event is noise at scale
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)


def _preflight(cfg: OperatorSettings, namespaces: list[str]) -> kubernetes.client.ApiClient:
    """An API client, once the credentials load and the identity holds every permission the operator
    needs in ``namespaces``; else one ``fail`` line that says which (Kopf would retry with tracebacks)."""
    import asyncio
    import logging

    from vibe.kubeclient import CredentialsError
    from vibe.operator.kube import new_api_client
    from vibe.operator.permissions import missing

    try:  # no credentials: say it once, plainly, and stop (Kopf's login would retry with tracebacks)
        api = new_api_client(cfg.kubeconfig, cfg.context)
    except CredentialsError as e:
        fail("NoCredentials", str(e), command=COMMAND)
    try:  # a missing permission: say which, once, and stop (Kopf would retry, then exit with tracebacks)
        lacking = asyncio.run(missing(api, namespaces))
    except Exception as e:  # the API server unreachable: Kopf waits for it, as before
        logging.getLogger("vibe.operator").warning("cannot check the operator's permissions now: %s", e)
        lacking = []
    if lacking:
        fail(
            "Forbidden",
            f"this identity may not {'; '.join(lacking)} (the chart's RBAC grants these: see "
            "docs/operations.md, RBAC)",
            command=COMMAND,
        )
    return api
