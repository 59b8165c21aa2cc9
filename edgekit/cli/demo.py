"""CLI for `edgekit demo` (not written yet)."""

COMMANDS = []
