"""vibe.serving (see module docstrings)."""
