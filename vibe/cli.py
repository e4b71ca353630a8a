"""The ``vibe`` command: one Typer app that mounts each component's own commands.

Each subpackage owns its commands in its ``cli`` module and keeps heavy imports (torch, kopf, the
Kubernetes client) inside the command bodies, so ``vibe --help`` stays fast.
"""

from __future__ import annotations

import typer

from vibe.agent.cli import app as agent_app
from vibe.cluster.cli import app as cluster_app
from vibe.demo.run import demo
from vibe.operator.cli import run as operator_run
from vibe.placement.cli import plan
from vibe.serving.cli import app as serving_app
from vibe.simulate.cli import simulate

app = typer.Typer(
    name="vibe",
    help="Place MoE experts on GPUs by measured speed (ViBE) — operator, agent, planner and local cluster.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts show [layers][experts] shapes literally
)
app.command("plan")(plan)
app.command("simulate")(simulate)
app.add_typer(cluster_app, name="cluster")
app.add_typer(agent_app, name="agent")
app.command("operator")(operator_run)
app.add_typer(serving_app, name="serving")
app.command("demo")(demo)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
