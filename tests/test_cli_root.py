"""The root ``vibe`` command: lazy subcommands, ``--version``, completion."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from vibe import __version__
from vibe.cli import COMMANDS, app


def test_operator_imports_neither_the_cluster_nor_the_demo() -> None:
    """`vibe operator` runs in the operator image: no local-cluster code, no cryptography, no torch."""
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from vibe.cli import app\n"
        "r = CliRunner().invoke(app, ['operator', '--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(sorted(m for m in ('vibe.cluster', 'vibe.demo', 'cryptography', 'torch', 'vibe.agent')"
        " if m in sys.modules))\n"
    )
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert got.stdout.strip() == "[]"


def test_help_lists_every_command_without_importing_them() -> None:
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from vibe.cli import app\n"
        "r = CliRunner().invoke(app, ['--help'])\n"
        "print(r.output)\n"
        "mods = ('vibe.cluster.cli', 'vibe.demo.run', 'vibe.operator.cli')\n"
        "print(sorted(m for m in mods if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert all(name in out for name in COMMANDS)
    assert out.strip().endswith("[]")


def test_version_and_completion() -> None:
    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"vibe {__version__}"
    r = CliRunner().invoke(app, ["--help"])
    assert "--install-completion" in r.output
    # every command loads and has its own help
    for name in COMMANDS:
        r = CliRunner().invoke(app, [name, "--help"])
        assert r.exit_code == 0, (name, r.output)
