"""CLI for `edgekit bench` (not written yet)."""

COMMANDS = []
