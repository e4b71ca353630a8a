"""The ``vibe`` command: one Typer app that mounts each component's own commands, lazily.

Each subpackage owns its commands in its ``cli`` module. The root registers them by name only and
imports a component's module when that command runs (or its help is asked for), so ``vibe operator``
imports neither the local cluster (``cryptography``), nor the demo, nor the agent's torch code, and
``vibe --help`` stays fast: its one-line summaries are written here.
"""

from __future__ import annotations

import importlib
from typing import Annotated

import typer
import typer.core
import typer.main

from vibe import __version__
from vibe.clikit import EXIT_CODES_HELP

# Typer vendors click; its command, context and formatter types are these (not a separate `click`).
click = typer.core._click

#: name -> (module, attribute: a Typer app or a command function, summary for `vibe --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "plan": ("vibe.plan", "plan", "Place experts from files: loads + fleet -> a placement."),
    "simulate": (
        "vibe.simulate.cli",
        "simulate",
        "Serving-level TTFT, TPOT, SLO attainment and goodput of each policy's placement.",
    ),
    "operator": ("vibe.operator.cli", "run", "Run the operator (Kopf): MoEDeployments in, placements out."),
    "agent": ("vibe.agent.cli", "app", "The per-node GPU agent: run it, benchmark GPUs, read telemetry."),
    "serving": (
        "vibe.serving.cli",
        "app",
        "What serving pods run: engine files, the sidecar, loads back in.",
    ),
    "crds": ("vibe.crds.cli", "app", "Install or upgrade vibe's CRDs on a cluster (server-side apply)."),
    "cluster": ("vibe.cluster.cli", "app", "The local control plane for the demo and the tests."),
    "demo": ("vibe.demo.run", "demo", "The whole loop on the local control plane, narrated."),
}


def load_command(name: str) -> click.Command:
    """The click command of ``vibe <name>``, importing its component only now."""
    module, attr, _ = COMMANDS[name]
    obj = getattr(importlib.import_module(module), attr)
    if isinstance(obj, typer.Typer):
        obj._add_completion = False  # completion is the root's (`vibe --install-completion`)
        cmd = typer.main.get_command(obj)
    else:
        single = typer.Typer(pretty_exceptions_enable=False, rich_markup_mode=None)
        single.command(name)(obj)
        cmd = typer.main.get_command(single)
    cmd.name = name
    return cmd


class LazyGroup(typer.core.TyperGroup):
    """A click group whose subcommands are imported on first use (see ``COMMANDS``)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*COMMANDS, *(c for c in super().list_commands(ctx) if c not in COMMANDS)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS:
            return load_command(cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, summary) for name, (_, _, summary) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


app = typer.Typer(
    name="vibe",
    cls=LazyGroup,
    help="Place MoE experts on GPUs by measured speed (ViBE) — operator, agent, planner and local cluster.",
    epilog=EXIT_CODES_HELP + " docs/cli.md has the conventions every command follows.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts show [layers][experts] shapes literally
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vibe {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print vibe's version and exit."),
    ] = False,
) -> None:
    """Place MoE experts on GPUs by measured speed (ViBE) — operator, agent, planner and local cluster."""


def main() -> None:
    app()


if __name__ == "__main__":
    main()
