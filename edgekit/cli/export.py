"""CLI for `edgekit export` (not written yet)."""

COMMANDS = []
