"""What every ``vibe`` command shares: exit codes, the one-line failure, logging, and common options.

Role: one CLI style across the components' ``cli`` modules (``docs/cli.md`` is the user's side of it):

* **Exit codes** -- ``EXIT_OK`` 0; ``EXIT_FAILED`` 1: the command could not do its job, for a reason
  it names (bad input files, a placement that does not fit, the API server refused, no credentials);
  ``EXIT_USAGE`` 2: the command line itself is wrong (Click's own usage errors, and flags that exclude
  each other); ``EXIT_INTERNAL`` 3: a bug (an exception nobody expected; ``VIBE_DEBUG=1`` shows its
  traceback).
* **One failure line** -- ``fail(reason, message, command=...)`` prints ``vibe <command>: <Reason>:
  <message>`` on stderr (the reason is a CamelCase word, like a status condition's), also into the
  container's termination log when there is one (what ``kubectl describe pod`` shows), and exits.
  ``failures(command, ...)`` turns the component's own error type (anything with ``reason`` and
  ``message``) and unexpected exceptions into that line.
* **Logging** -- ``setup_logging(verbose, log_format)``: text lines for people, or one JSON object per
  line for a log pipeline (the operator's and the agent's ``--log-format json``).
* **Options** -- ``KubeconfigOpt``, ``ContextOpt``, ``NamespaceOpt``, ``LogFormatOpt``, ``VerboseOpt``: the
  same spelling and help on every command that talks to the API server; ``-n`` always means
  ``--namespace``, ``-v`` ``--verbose``.

Imports only the standard library and Typer, so every layer's CLI may use it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, NoReturn

import typer

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3

#: The exit codes as ``vibe --help`` lists them.
EXIT_CODES_HELP = (
    "Exit codes: 0 ok; 1 failed for a reason the one-line message names (vibe <command>: <Reason>: "
    "<message>); 2 usage error; 3 internal error (VIBE_DEBUG=1 shows the traceback)."
)

#: Kubernetes shows this file's content as the container's termination message.
TERMINATION_LOG = "/dev/termination-log"


def fail(reason: str, message: str, *, command: str, code: int = EXIT_FAILED) -> NoReturn:
    """Print ``<command>: <reason>: <message>`` on stderr (and the termination log) and exit ``code``.

    Args:
        reason: CamelCase word saying what is wrong (``PlacementMismatch``, ``NoCredentials``, ...).
        message: one line a person can act on (whitespace is collapsed to keep it one line).
        command: the command as a person typed it, e.g. ``vibe serving``.
        code: ``EXIT_FAILED`` unless the command line itself is wrong (``EXIT_USAGE``) or it is a bug.
    """
    line = f"{command}: {reason}: {' '.join(str(message).split())}"
    typer.echo(line, err=True)
    with contextlib.suppress(OSError):
        if os.path.exists(TERMINATION_LOG) and os.access(TERMINATION_LOG, os.W_OK):
            Path(TERMINATION_LOG).write_text(line + "\n", encoding="utf-8")
    raise typer.Exit(code)


@contextlib.contextmanager
def failures(command: str, *expected: type[Exception], reason: str = "InvalidInput") -> Iterator[None]:
    """Run a command body: its ``expected`` errors and any unexpected exception end as one ``fail`` line,
    never a traceback (unless ``VIBE_DEBUG`` is set). An expected error's ``reason`` attribute names the
    reason (else ``reason``), its ``message`` attribute (else ``str(e)``) the message."""
    try:
        yield
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except Exception as e:
        if isinstance(e, typer.BadParameter) or type(e).__module__.startswith("click"):
            raise  # Click's usage errors print themselves and exit 2
        if expected and isinstance(e, expected):
            fail(str(getattr(e, "reason", reason)), str(getattr(e, "message", e)), command=command)
        if os.environ.get("VIBE_DEBUG"):
            raise
        fail("InternalError", f"{type(e).__name__}: {e}", command=command, code=EXIT_INTERNAL)


# ---- logging


class LogFormat(str, enum.Enum):
    """How log lines look: ``text`` for people, ``json`` (one object per line) for a log pipeline."""

    text = "text"
    json = "json"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (RFC 3339, UTC), level, logger, message (and exc_info)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup_logging(verbose: bool = False, log_format: LogFormat | str = LogFormat.text) -> None:
    """Configure the root logger once for a command: INFO (DEBUG with ``verbose``) to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    fmt = LogFormat(log_format)
    handler.setFormatter(JsonFormatter() if fmt is LogFormat.json else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


# ---- options shared by every command that talks to the API server

KubeconfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--kubeconfig",
        dir_okay=False,
        help="Kubeconfig file (default: in-cluster service account, then $KUBECONFIG or ~/.kube/config).",
    ),
]
ContextOpt = Annotated[
    str | None, typer.Option("--context", help="Kubeconfig context to use (default: its current context).")
]
LogFormatOpt = Annotated[
    LogFormat, typer.Option("--log-format", help="Log lines as text, or as one JSON object per line.")
]
#: ``-v/--verbose`` on every long-running command (``setup_logging``'s ``verbose``).
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")]


def namespace_option(help: str, envvar: str | None = None) -> typer.models.OptionInfo:
    """``-n/--namespace`` with a command's own help (and an environment variable, in pods)."""
    return typer.Option("--namespace", "-n", help=help, envvar=envvar)
