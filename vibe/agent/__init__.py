"""vibe.agent (see module docstrings)."""
