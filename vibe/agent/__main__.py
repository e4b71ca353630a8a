"""``python -m vibe.agent``: the agent's commands without the rest of the ``vibe`` CLI (GPU images)."""

from vibe.agent.cli import app

app(prog_name="vibe agent")
