"""``python -m vibe.operator [flags]``: the same as ``vibe operator [flags]``."""

import typer

from vibe.operator.cli import run

if __name__ == "__main__":
    typer.run(run)
