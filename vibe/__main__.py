"""``python -m vibe``: the same as the ``vibe`` command."""

from vibe.cli import main

main()
