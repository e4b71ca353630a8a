"""Every ``vibe`` command follows docs/cli.md: walk the whole command tree and check each option.

The conventions (``docs/cli.md``, "Options"):

* ``-o/--output FILE`` is the file the command's result is written to (stdout, or nowhere, without it);
  ``-o`` means nothing else. A directory is ``--out-dir DIR``; a second artifact ``--<what>-out FILE``.
* ``-n/--namespace`` is always a Kubernetes namespace; ``-n`` means nothing else.
* ``--kubeconfig PATH`` and ``--context NAME`` come together, on every command that talks to the API
  server.
* Files and directories are ``Path`` options (files not directories and the other way round); options
  with a fixed set of values are choices (a ``Literal`` or an ``Enum``), shown in ``--help``; no Python
  type leaks into help (not ``--device <list[str]>``: a repeatable option shows what one value is).
"""

from __future__ import annotations

import enum
import re
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from vibe.cli import COMMANDS, app, click, load_command

#: Commands that talk to the API server: each takes --kubeconfig and --context.
TALKS_TO_API = {
    "vibe operator",
    "vibe agent run",
    "vibe serving init",
    "vibe serving watch",
    "vibe serving export-loads",
    "vibe crds apply",
}

#: Options whose values are a fixed set: each a Literal or an Enum (so --help lists the values).
CHOICES = {
    "--policy",
    "--format",
    "--log-format",
    "--mode",
    "--gpu",
    "--replace-cost",
    "--source",
    "--documents",
    "--http-document",
}

#: Options naming a file (Path, not a directory) or a directory (Path, not a file), beyond the patterns.
FILES = {"--kubeconfig", "--loads", "--fleet", "--current", "--model-config", "--dump", "--token-file"}
DIRS = {"--simulate-dir"}


def commands() -> Iterator[tuple[str, click.Command]]:
    """Every leaf command of ``vibe``, as ``("vibe agent run", command)``."""

    def walk(path: str, cmd: click.Command) -> Iterator[tuple[str, click.Command]]:
        if hasattr(cmd, "commands"):  # a group
            for name, sub in cmd.commands.items():
                yield from walk(f"{path} {name}", sub)
        else:
            yield path, cmd

    for name in COMMANDS:
        yield from walk(f"vibe {name}", load_command(name))


ALL = dict(commands())


def options(cmd: click.Command) -> list[Any]:
    """The command's own options (not the completion options Typer adds to a single command)."""
    return [p for p in cmd.params if not p.name.endswith("_completion") and p.opts[0].startswith("-")]


def names(opt: Any) -> set[str]:
    return set(opt.opts) | set(opt.secondary_opts)


def value_type(opt: Any) -> Any:
    """The type of one value: ``Path`` for ``Path | None`` and for ``list[Path]``."""
    t = opt.type_descriptor.annotation
    while typing.get_origin(t) in (list, typing.Union) or type(t).__name__ == "UnionType":
        t = next(a for a in typing.get_args(t) if a is not type(None))
    return t


def is_choice(t: Any) -> bool:
    return typing.get_origin(t) is typing.Literal or (isinstance(t, type) and issubclass(t, enum.Enum))


def test_the_walk_finds_every_command() -> None:
    some = {"vibe plan", "vibe operator", "vibe agent run", "vibe agent bench", "vibe serving init"}
    assert some <= set(ALL)
    assert len(ALL) >= 12


@pytest.mark.parametrize("path", sorted(ALL))
def test_options_follow_the_conventions(path: str) -> None:
    cmd = ALL[path]
    problems: list[str] = []
    for opt in options(cmd):
        spelled = names(opt)
        long = max(opt.opts, key=len)
        if "-o" in spelled and long != "--output":
            problems.append(f"-o means --output, not {long}")
        if "-n" in spelled and long != "--namespace":
            problems.append(f"-n means --namespace, not {long}")
        if long in ("--output", "--namespace") and not ({"-o", "-n"} & spelled):
            problems.append(f"{long} has no short form")
        if long in ("--out", "--json") and not opt.is_flag:
            problems.append(f"{long} FILE is spelled -o/--output")
        is_file = long == "--output" or long.endswith("-out") or long in FILES
        is_dir = long.endswith("-dir") or long in DIRS
        info = opt.type_descriptor.parameter_info
        if is_file or is_dir:
            if value_type(opt) is not Path:
                problems.append(f"{long} is a path, not {value_type(opt)}")
            elif is_file and info.dir_okay:
                problems.append(f"{long} names a file: dir_okay=False")
            elif is_dir and info.file_okay:
                problems.append(f"{long} names a directory: file_okay=False")
        if long in CHOICES and not is_choice(value_type(opt)):
            problems.append(f"{long} has a fixed set of values: a Literal or an Enum, not {value_type(opt)}")
    spelled_all = set().union(*(names(o) for o in options(cmd)))
    api = {"--kubeconfig", "--context"} & spelled_all
    if path in TALKS_TO_API and api != {"--kubeconfig", "--context"}:
        problems.append("talks to the API server: --kubeconfig and --context")
    if path not in TALKS_TO_API and api:
        problems.append(f"{sorted(api)} on a command not in TALKS_TO_API (add it there)")
    assert not problems, f"{path}: " + "; ".join(problems)


@pytest.mark.parametrize("path", sorted(ALL))
def test_help_shows_no_python_types(path: str) -> None:
    argv = path.split()[1:]
    r = CliRunner().invoke(app, [*argv, "--help"], terminal_width=200)
    assert r.exit_code == 0, r.output
    for leak in ("list[", "dict[", "<none>", "Optional"):
        if leak in r.output:
            pytest.fail(f"{path} --help shows {leak!r}:\n{r.output}")


def test_options_are_annotated() -> None:
    """``Annotated[type, typer.Option(...)]`` everywhere: no option as a parameter's default value."""
    root = Path(__file__).resolve().parents[1] / "vibe"
    old = [
        f"{path.relative_to(root.parent)}:{n}"
        for path in sorted(root.rglob("*.py"))
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"=\s*typer\.(Option|Argument)\(", line)
    ]
    assert not old, old
