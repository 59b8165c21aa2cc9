"""CLI for `edgekit gate` (not written yet)."""

COMMANDS = []
