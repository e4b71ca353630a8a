"""``vibe crds apply``: install or upgrade vibe's CRDs on a cluster (server-side apply), then wait.

Role: the upgrade path Helm lacks (it installs a chart's ``crds/`` once and never upgrades them). Run it
by hand before ``helm upgrade``, or let the chart's pre-upgrade hook Job run it with the operator image
(``crds.upgrade.enabled``). Prints one line per CRD: created, updated or unchanged.
"""

from __future__ import annotations

from typing import Annotated

import typer

from vibe.clikit import ContextOpt, KubeconfigOpt, failures

COMMAND = "vibe crds apply"

app = typer.Typer(
    help="vibe's CustomResourceDefinitions: install or upgrade them on a cluster.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def crds() -> None:
    """vibe's CustomResourceDefinitions: install or upgrade them on a cluster."""


@app.command("apply")
def apply(
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Ask the API server what would change (server-side dry run)."),
    ] = False,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait until every CRD is Established and served.")
    ] = 60.0,
    kubeconfig: KubeconfigOpt = None,
    context: ContextOpt = None,
) -> None:
    """Server-side apply the CRDs this vibe ships, wait until they are served, print what changed."""
    from vibe.crds.apply import CrdError, apply_crds
    from vibe.kubeclient import CredentialsError, api_client

    with failures(COMMAND, CrdError):
        try:
            client = api_client(str(kubeconfig) if kubeconfig else None, context=context)
        except CredentialsError as e:
            raise CrdError("NoCredentials", str(e)) from None
        with client:
            changes = apply_crds(client, dry_run=dry_run, timeout=timeout)
    suffix = " (dry run)" if dry_run else ""
    for change in changes:
        typer.echo(f"customresourcedefinition/{change.name} {change.action}{suffix}")
